"""The ``medclip`` command's own behaviour: hub downloads off by default (and saying so), optional
packages as one-line errors, global options anywhere, ``medclip models``, ``fit --print-config``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import yaml

from medclip import cli
from medclip.model import resources

HUB_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MEDCLIP_ALLOW_DOWNLOADS", "MEDCLIP_OFFLINE_BY_DEFAULT")


@pytest.fixture
def clean_hub_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No hub variables set, as in a user's shell (restored afterwards); the one-time notice not given yet."""
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(resources, "_hub_noticed", False)
    return monkeypatch


def _fit_config(tmp_path: Path, model: str) -> Path:
    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(b"")  # fit builds the model before it reads the data
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"output_dir": str(tmp_path / "run"), "data": {"manifest": str(manifest)}, "model": {"name": model}}
        )
    )
    return cfg


def test_download_policy_is_offline_unless_allowed(clean_hub_env: pytest.MonkeyPatch) -> None:
    import os

    assert cli.apply_download_policy() is True
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    for name in HUB_ENV:
        clean_hub_env.delenv(name, raising=False)
    clean_hub_env.setenv("MEDCLIP_ALLOW_DOWNLOADS", "1")
    assert cli.apply_download_policy() is False
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    clean_hub_env.delenv("MEDCLIP_ALLOW_DOWNLOADS")
    clean_hub_env.setenv("HF_HUB_OFFLINE", "0")
    assert cli.apply_download_policy() is False
    assert os.environ["TRANSFORMERS_OFFLINE"] == "0" and not resources.hf_offline()


def test_hub_id_at_start_up_says_once_that_downloads_are_off(
    clean_hub_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    """Regression (issue 12.8): the CLI forced HF_HUB_OFFLINE=1 silently; a user with network got 'couldn't connect'."""
    caplog.set_level(logging.WARNING)
    rc = cli.main(["fit", "--config", str(_fit_config(tmp_path, "biomedclip-like"))])
    assert rc == 2  # the model is not in this machine's Hugging Face cache
    notices = [r.getMessage() for r in caplog.records if "hub downloads are off" in r.getMessage()]
    assert len(notices) == 1, notices
    assert "MEDCLIP_ALLOW_DOWNLOADS=1" in notices[0] and "BiomedNLP" in notices[0]
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("medclip fit: error:")]
    assert "Traceback" not in err and len(errors) == 1
    assert "MEDCLIP_ALLOW_DOWNLOADS=1" in errors[0]


def test_local_models_get_no_hub_notice(clean_hub_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from medclip.model import create_model

    cli.apply_download_policy()
    caplog.set_level(logging.WARNING)
    create_model("tiny-test", pretrained=False)
    create_model("offline-default", pretrained=False)
    assert not [r for r in caplog.records if "hub downloads are off" in r.getMessage()]


def test_models_lists_every_config_with_towers_and_parameter_counts(capsys: pytest.CaptureFixture) -> None:
    """Issue 12.9: `medclip models` lists the registry with towers and sizes computed from the configs."""
    from medclip.model import create_model, list_models
    from medclip.model.factory import describe_models

    assert cli.main(["models"]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    for name in list_models():
        row = next(line for line in lines if line.startswith(name + " "))
        assert "timm:" in row or "monai3d:" in row or "slices2d:" in row
    info = describe_models()
    for name in ("tiny-test", "offline-default"):  # local towers: the meta-device count is the real one
        model = create_model(name, pretrained=False)
        assert info[name]["params"]["total"] == sum(p.numel() for p in model.parameters())
        assert info[name]["params"]["vision"] == sum(p.numel() for p in model.visual.parameters())
    assert "tf_efficientnet_lite0" in info["offline-default"]["vision"]
    assert cli.main(["models", "--json"]) == 0
    import json

    assert set(json.loads(capsys.readouterr().out)) == set(list_models())


def test_fit_print_config_prints_the_resolved_yaml_and_does_not_train(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 12.9: `medclip fit --print-config` prints defaults + file + overrides and exits."""
    from medclip.train import load_config

    cfg = _fit_config(tmp_path, "tiny-test")
    assert cli.main(["fit", "--config", str(cfg), "--print-config", "trainer.max_steps=7", "optim.lr=3e-4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config(cfg, ["trainer.max_steps=7", "optim.lr=3e-4"])
    assert printed["trainer"]["max_steps"] == 7 and printed["optim"]["lr"] == 3e-4
    assert printed["model"]["name"] == "tiny-test" and "batch_size" in printed["data"]  # defaults filled in
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_quiet_and_verbose_work_after_the_subcommand() -> None:
    """Regression (issue 12.16): `medclip index ... -q` was an argparse error; only `medclip -q index ...` worked."""
    parser = cli.build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in subcommands.items():
        for flag in ("-q", "--quiet", "-v", "--verbose"):
            assert flag in sub._option_string_actions, (name, flag)
    before = parser.parse_args(["-q", "index", "export", "-o", "m.parquet"])
    after = parser.parse_args(["index", "export", "-o", "m.parquet", "-q"])
    neither = parser.parse_args(["index", "export", "-o", "m.parquet"])
    assert before.quiet and after.quiet and not neither.quiet
    assert parser.parse_args(["label", "m.parquet", "-v"]).verbose
    assert parser.parse_args(["-v", "label", "m.parquet"]).verbose
    assert parser.parse_args(["models", "--quiet", "--verbose"]).quiet


@pytest.mark.parametrize(
    "module, argv, extra",
    [
        ("faiss", ["eval", "--checkpoint", "no-such-checkpoint", "--manifest", "m.parquet", "--faiss", "yes"], "index"),
        ("open_clip", ["eval", "--checkpoint", "open_clip:no-such-folder", "--manifest", "m.parquet"], "bench"),
    ],
)
def test_missing_optional_package_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, module: str, argv: list[str], extra: str
) -> None:
    """Regression (issue 12.16): a missing faiss (--faiss yes) or open_clip (open_clip: checkpoints) was a traceback."""
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were not installed
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert f"pip install 'medclip-kit[{extra}]'" in err and err.startswith("medclip eval: error:")


def test_import_optional_names_the_pip_package_and_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import json as json_module

    from medclip.optional import MissingExtraError, import_optional

    assert import_optional("json", "index", "x") is json_module
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingExtraError) as info:
        import_optional("faiss", "index", "--faiss yes")
    assert str(info.value) == "--faiss yes needs the optional package 'faiss-cpu': pip install 'medclip-kit[index]'"
    assert isinstance(info.value, RuntimeError)


def _one_patient_export(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    study = root / "export" / "patient_a" / "study_1"
    study.mkdir(parents=True)
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((32, 32)) * 255).astype(np.uint8)).save(study / f"img{i}.png")
    return root / "export"


def test_one_patient_index_says_the_train_split_is_empty_and_fit_stops_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression (issue 12.16): an index whose train split is empty (one patient) did not say so, and fit
    on it failed inside Lightning after writing a partial run folder."""
    import pandas as pd

    from medclip.data.splits import assign_split

    export, manifest = _one_patient_export(tmp_path), tmp_path / "manifest.parquet"
    assert cli.main(["-q", "index", str(export), "-o", str(manifest)]) == 0
    patient = str(pd.read_parquet(manifest, columns=["patient_id"])["patient_id"].iloc[0])
    seed = next(s for s in range(200) if assign_split(patient, (0.8, 0.1, 0.1), s) != "train")
    capsys.readouterr()
    assert cli.main(["index", str(export), "-o", str(manifest), "--seed", str(seed), "--full", "-q"]) == 0
    out = capsys.readouterr().out
    assert set(pd.read_parquet(manifest, columns=["split"])["split"]) != {"train"}
    warning = next(line for line in out.splitlines() if line.startswith("warning: the train split is empty"))
    assert "--split 1,0,0" in warning

    cfg = tmp_path / "fit.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"output_dir": str(tmp_path / "run"), "data": {"manifest": str(manifest)}, "model": {"name": "tiny-test"}}
        )
    )
    assert cli.main(["fit", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the 'train' split is empty" in err and "--split 1,0,0" in err
    assert not (tmp_path / "run").exists()  # stopped before anything was written
