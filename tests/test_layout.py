"""Repository layout guarantees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_datasets_folder_does_not_shadow_hf_datasets():
    assert not (REPO / "datasets" / "__init__.py").exists()
    # run from the repo root, where '' on sys.path makes datasets/ a namespace-package candidate
    code = (
        "import transformers, torch\n"
        "from transformers import BertConfig, BertModel, BertTokenizer\n"
        "import tempfile, os\n"
        "d = tempfile.mkdtemp(); v = os.path.join(d, 'vocab.txt')\n"
        "open(v, 'w').write('\\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'no', 'effusion']))\n"
        "tok = BertTokenizer(vocab_file=v)\n"
        "m = BertModel(BertConfig(vocab_size=7, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))\n"
        "enc = tok(['no effusion'], return_tensors='pt')\n"
        "assert m(**enc).last_hidden_state.shape == (1, 4, 8)\n"
        "import medclip.data.dataset\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_cli_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "medclip.cli", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for cmd in ("index", "label", "cache", "fit", "quickstart"):
        assert cmd in out.stdout
