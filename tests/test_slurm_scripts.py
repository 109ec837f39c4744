"""The SLURM walkthrough's scripts are real: every command in them parses with medclip's own parsers."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from medclip.cli import build_parser
from medclip.train import load_config

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "datasets" / "mimic_cxr" / "slurm"
ENV = {
    "MIMIC": "/data/mimic",
    "WORK": "/scratch/u/mimic",
    "EXPORT": "/data/export",
    "SLURM_CPUS_PER_TASK": "8",
    "SLURM_SUBMIT_DIR": str(REPO),
    "USER": "u",
    "HOME": "/home/u",
}


def _commands(script: Path) -> list[list[str]]:
    """Command lines of a script (continuations joined, variables filled in, comments and #SBATCH dropped)."""
    text = re.sub(r"\\\n\s*", " ", script.read_text())
    out = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"\$\{?(\w+)\}?", lambda m: ENV.get(m.group(1), m.group(0)), line)
        out.append(shlex.split(line))
    return out


def _recipe_parser():
    from medclip.recipes.mimic_cxr import build_parser

    return build_parser()


@pytest.mark.parametrize("script", sorted(SLURM.glob("*.sbatch")), ids=lambda p: p.name)
def test_sbatch_commands_parse(script):
    parser = build_parser()
    commands = [c for c in _commands(script) if c[0] not in ("source", "set", "cd", "export", "mkdir")]
    assert commands, f"{script.name}: no command"
    for argv in commands:
        if argv[0] == "srun":
            argv = argv[1:]
        if argv[0] == "python":
            assert argv[1] == "datasets/mimic_cxr/recipe.py" and (REPO / argv[1]).is_file()
            _recipe_parser().parse_args(argv[2:])
            continue
        assert argv[0] == "medclip", f"{script.name}: unexpected command {argv[0]}"
        args = parser.parse_args(argv[1:])  # SystemExit (a test failure) on any unknown or malformed option
        if args.command == "fit":
            assert (REPO / args.config).is_file()
            config = load_config(REPO / args.config, args.overrides)  # every override is a known key
            assert config["trainer"]["num_nodes"] == 2 and config["data"]["cache_dir"].startswith(ENV["WORK"])
    directives = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert all(re.match(r"#SBATCH --[a-z-]+(=\S+)?(\s+#.*)?$", d) for d in directives), directives


def test_array_scripts_shard_by_the_array_variables():
    """The array tasks take no --shard-index: medclip reads SLURM_ARRAY_TASK_ID/_COUNT/_MIN itself."""
    for name in ("2_cache.sbatch", "0_index_dicom.sbatch"):
        text = (SLURM / name).read_text()
        commands = [" ".join(c) for c in _commands(SLURM / name)]
        assert "#SBATCH --array=0-31" in text and not any("--shard-index" in c for c in commands)


def test_submit_chains_the_steps():
    text = (SLURM / "submit.sh").read_text()
    for step in ("1_manifest", "2_cache", "3_fit", "4_eval"):
        assert f"$S/{step}.sbatch" in text and (SLURM / f"{step}.sbatch").is_file()
    assert text.count("--dependency=afterok") == 3
