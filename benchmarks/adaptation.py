"""Few-shot adaptation benchmark (issue 17, part 3b): methods x shots x findings on real chest X-rays.

The covid-chestxray set of ``../shared/data`` (the quality suite's manifest: split 60/10/30 by patient with
its fixed salt; labels = the dataset's ``finding``: COVID-19, pneumonia, no finding). For each k in the shot
counts, ``--draws`` draws of k positive and k negative training patients per finding (one image per
patient); every method of ``medclip adapt`` is fitted on the draw and scored by AUROC on the test
patients (disjoint from the training patients); zero-shot is the 0-shot row. Prints the table (mean over
findings, mean and sd over draws), per-finding AUROC at the largest k, fitting time per draw and method,
the machine and its load.

The model is a medclip checkpoint (default: the quick start's ``runs/quickstart/model``: offline towers,
EfficientNet-Lite0 + MiniLM, trained on the bundled sample); it is copied into the work folder so the saved
classifiers do not touch the original. Part 3a (image-only pretraining, then the CLIP recipe) is
``benchmarks/image_pretraining.py``.

Usage: python benchmarks/adaptation.py [--quick] [--checkpoint DIR] [--workdir DIR]
``--quick``: k = 1, 4, 16, 2 draws, fewer optimiser steps (about 10 minutes here).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
FINDINGS = ("covid19_pneumonia", "pneumonia", "no_finding")


def _quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_benchmark"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def covid_manifest(workdir: Path) -> Path:
    """The quality suite's covid manifest (same salt, fractions and seed), written under ``workdir``."""
    from medclip.data.manifest import manifest_from_records, write_manifest

    q = _quality()
    data = q.shared_data()
    records = q._recipe("covid_chestxray").records(data / "covid_cxr").drop(columns=["split"], errors="ignore")
    df, _ = manifest_from_records(records, data / "covid_cxr", salt=q.SALT, fractions=q.FRACTIONS, seed=0)
    return write_manifest(df.reset_index(drop=True), workdir / "covid.parquet", root=data / "covid_cxr")


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def trained_on_covid(checkpoint: Path) -> list[str]:
    """Training sources of ``checkpoint`` (its config.json training record) whose name says covid: such a model
    was split by another salt and fractions than this benchmark's, so its training patients may be our test ones."""
    from medclip.model import ModelLoadError
    from medclip.model.dual_encoder import read_checkpoint_config

    try:
        record = (read_checkpoint_config(checkpoint).extra or {}).get("training") or {}
    except ModelLoadError:
        return []
    names = [str(s.get("name", "")) for s in record.get("sources") or []]
    names += [str(d.get("name", "")) for d in record.get("data") or []]
    return sorted({n for n in names if "covid" in n.lower()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "quickstart" / "model")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "adaptation")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", default=None, help="comma-separated subset of medclip adapt's methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--allow-covid-trained",
        action="store_true",
        help="run on a checkpoint trained on covid data anyway (its numbers are then not a test)",
    )
    args = parser.parse_args(argv)
    if not (args.checkpoint / "model.safetensors").is_file():
        sys.exit(f"{args.checkpoint}: no medclip checkpoint (run `medclip quickstart` or pass --checkpoint)")
    overlap = trained_on_covid(args.checkpoint)
    if overlap and not args.allow_covid_trained:
        sys.exit(
            f"{args.checkpoint}: trained on {overlap} (its training record): that split is not this benchmark's "
            "(the quality suite's salt and fractions), so this benchmark's test patients may be the model's training "
            "patients (a small-data model scored zero-shot AUROC 1.000 here). Use a model that never saw covid, or "
            "--allow-covid-trained to run anyway"
        )

    import torch

    from medclip.adapt.methods import METHODS
    from medclip.adapt.runner import format_adapt, run_adapt

    torch.manual_seed(args.seed)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = args.workdir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(args.checkpoint, model_dir, ignore=shutil.ignore_patterns("adapters", "eval", "gallery", "stale"))
    manifest = covid_manifest(args.workdir)
    shots, draws = ((1, 4, 16), 2) if args.quick else ((1, 2, 4, 8, 16), 3)
    steps = (
        {"tip_adapter_f": 50, "coop": 60, "lora": 10} if args.quick else {"tip_adapter_f": 50, "coop": 100, "lora": 20}
    )
    methods = args.methods.split(",") if args.methods else list(METHODS)
    start, load_before = time.perf_counter(), load()
    results = run_adapt(
        model_dir,
        manifest,
        shots=shots,
        methods=methods,
        draws=draws,
        seed=args.seed,
        findings=list(FINDINGS),
        save=True,
        output=args.workdir,
        method_options={m: {"steps": s} for m, s in steps.items()},
    )
    wall = time.perf_counter() - start
    print(format_adapt(results))
    by_k = {int(k): v for k, v in results["shots"].items()}
    print("\nFitting time per draw (s), at each k")
    print("method          " + "  ".join(f"k={k:<5}" for k in sorted(by_k)))
    for m in methods:
        print(f"{m:<16}" + "  ".join(f"{by_k[k][m]['seconds_per_draw']:<7.1f}" for k in sorted(by_k)))
    data = results["data"]
    print(
        f"\ncovid-chestxray (quality suite split): shots from {data['train']['patients']} training patients "
        f"({data['train']['images']} images), scored on {data['test']['patients']} test patients "
        f"({data['test']['images']} images); model {args.checkpoint}; features {results['features']}"
    )
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}; "
        f"load average before {load_before}, after {load()}; wall time {wall / 60:.1f} min"
        + (" (--quick)" if args.quick else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
