"""Few-shot adaptation benchmark (issue 17, part 3b): methods x shots x findings on real chest X-rays.

Data (``../shared/data``): covid-chestxray (findings COVID-19, pneumonia, no finding: the dataset's ``finding``)
and Kermany (pediatric pneumonia vs normal, and viral vs bacterial among pneumonia: its ``subtype``), split as
the quality suite splits them (60/10/30 by patient with its fixed salt; patients sharing an image in one split),
Kermany cut to a seeded draw of whole patients in train and test (``--kermany-patients``). For each k, ``--draws``
draws of k positive and k negative training patients per finding (one image per patient); every method of
``medclip adapt`` is fitted on the draw and scored by AUROC on the test patients; zero-shot is the 0-shot row.

Prints, per finding, each method x k: AUROC mean±sd over draws and the paired patient-bootstrap 95% CI of
(method - zero-shot) AUROC (test patients resampled, the method averaged over the draws in each resample) with a
verdict; then each set's summary table, fitting time per draw, the machine, its load and the wall time.

Zero-shot uses the knowledge graph's prompt ensembles; viral vs bacterial has no finding prompt there, so its
zero-shot row is the imaging extension's ``pneumonia_subtype`` attribute prompts (viral vs bacterial class), and
CoOp and LoRA, which need a finding prompt, are not run for it.

The checkpoint's own split: when its training record (config.json ``extra.training``) names sources whose
manifests are found (by the SHA-256 it records; beside its config.yaml, in ``runs/data`` or
``--source-manifest``), a found manifest of the same data gives the test patients (its own ``split``), and every
test patient with an image any found training manifest trained on (train / val rows, by original file name: the
quick start's bundled export is covid-chestxray images, traced by ``medclip/sample/ATTRIBUTION.csv``) is left
out; a covid / Kermany source whose manifest is not found is refused (``--allow-covid-trained`` runs anyway).

The model is a medclip checkpoint (default: the quick start's ``runs/quickstart/model``); it is copied into the
work folder so the saved classifiers (covid's) do not touch the original. Part 3a (image-only pretraining, then
the CLIP recipe) is ``benchmarks/image_pretraining.py``.

Usage: python benchmarks/adaptation.py [--quick] [--checkpoint DIR] [--workdir DIR] [--n-boot N]
``--quick``: k = 1, 4, 16, 2 draws, fewer optimiser steps, fewer Kermany patients.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

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


def _manifest(recipe: str, folder: str) -> tuple[Any, Path]:
    """A dataset's manifest as the quality suite splits it (its salt, fractions and seed) and its root."""
    from medclip.data.manifest import manifest_from_records

    q = _quality()
    root = q.shared_data() / folder
    records = q._recipe(recipe).records(root).drop(columns=["split"], errors="ignore")
    df, _ = manifest_from_records(records, root, salt=q.SALT, fractions=q.FRACTIONS, seed=0)
    return df.reset_index(drop=True), root


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def training_sources(checkpoint: Path) -> list[dict[str, Any]]:
    """The training record's sources of ``checkpoint`` (config.json ``extra.training``): ``name`` and, where fit
    could read it, ``manifest_sha256`` (the first 16 hex digits of the manifest's SHA-256; fit records no paths)."""
    from medclip.model import ModelLoadError
    from medclip.model.dual_encoder import read_checkpoint_config

    try:
        record = (read_checkpoint_config(checkpoint).extra or {}).get("training") or {}
    except ModelLoadError:
        return []
    by_name: dict[str, dict[str, Any]] = {}
    for s in record.get("sources") or []:
        by_name.setdefault(str(s.get("name", "")), {"name": str(s.get("name", ""))})
    for d in record.get("data") or []:
        by_name.setdefault(str(d.get("name", "")), {"name": str(d.get("name", ""))}).update(
            {k: v for k, v in d.items() if k == "manifest_sha256"}
        )
    return [v for k, v in by_name.items() if k]


def _candidate_manifests(checkpoint: Path, extra: list[Path]) -> list[Path]:
    """Where a checkpoint's training manifests may lie: the run's config.yaml (beside the checkpoint or one folder
    up: ``data.manifest``, ``data.sources[].manifest``), ``runs/data/*.parquet`` and ``--source-manifest``."""
    import yaml

    out: list[Path] = list(extra)
    for cfg in (checkpoint / "config.yaml", checkpoint.parent / "config.yaml"):
        if not cfg.is_file():
            continue
        try:
            data = (yaml.safe_load(cfg.read_text()) or {}).get("data") or {}
        except yaml.YAMLError:
            continue
        for m in [data.get("manifest"), *[s.get("manifest") for s in data.get("sources") or []]]:
            if m:
                out += [Path(m), REPO / m, cfg.parent / m]
    out += sorted((REPO / "runs" / "data").glob("*.parquet"))
    seen, unique = set(), []
    for p in out:
        key = str(p.resolve()) if p.exists() else str(p)
        if key not in seen and p.is_file():
            seen.add(key)
            unique.append(p)
    return unique


def find_sources(checkpoint: Path, extra: list[Path]) -> dict[str, Path | None]:
    """Each training source of ``checkpoint`` -> the manifest file whose content fingerprint is the one its
    training record names (``None``: not found, or the record has no fingerprint)."""
    from medclip.data.storage import content_fingerprint

    prints: dict[Path, str] = {}
    out: dict[str, Path | None] = {}
    for source in training_sources(checkpoint):
        want = source.get("manifest_sha256")
        out[source["name"]] = None
        if not want:
            continue
        for cand in _candidate_manifests(checkpoint, extra):
            if cand not in prints:
                prints[cand] = content_fingerprint(cand)
            if prints[cand] == want:
                out[source["name"]] = cand
                break
    return out


def _attribution() -> dict[str, str]:
    """Bundled sample file -> the original file's name (the quick start's export is covid-chestxray images
    re-encoded as DICOM; its Kermany subset keeps the original names): ``medclip/sample/**/ATTRIBUTION.csv``."""
    import pandas as pd

    from medclip.sample import SAMPLE_DIR, SAMPLE_KERMANY

    out = {}
    for table in (Path(str(SAMPLE_DIR)) / "ATTRIBUTION.csv", Path(str(SAMPLE_KERMANY)) / "ATTRIBUTION.csv"):
        if table.is_file():
            t = pd.read_csv(table, dtype=str, keep_default_na=False)
            out.update({str(f): Path(str(s)).name for f, s in zip(t["file"], t["source_filename"], strict=True)})
    return out


def _names(paths: Any, attribution: dict[str, str]) -> list[str]:
    return [attribution.get(str(p), Path(str(p)).name) for p in paths]


def seen_files(sources: dict[str, Path | None]) -> dict[str, set[str]]:
    """Original file names each found training manifest trained on (its train and val rows); a source named
    ``sample`` whose manifest is not found counts every bundled export image as seen."""
    import pandas as pd

    attribution = _attribution()
    out: dict[str, set[str]] = {}
    for name, path in sources.items():
        if path is not None:
            df = pd.read_parquet(path, columns=["path", "split"])
            out[name] = set(_names(df.loc[df["split"].isin(("train", "val")), "path"], attribution))
        elif name == "sample":
            out[name] = {v for k, v in attribution.items() if k.startswith("study_")}
    return out


def own_split(frame: Any, sources: dict[str, Path | None], min_cover: float = 0.9) -> tuple[Any, str | None]:
    """``frame``'s split taken from a found training manifest of the same data (its original file names cover
    at least ``min_cover`` of the frame's), rows it lacks left out (split "unused"); else ``frame`` as it is."""
    import pandas as pd

    names = pd.Series(_names(frame["path"], {}), index=frame.index)
    attribution = _attribution()  # read once, not once per source
    for name, path in sources.items():
        if path is None:
            continue
        own = pd.read_parquet(path, columns=["path", "split"])
        own_names = _names(own["path"], attribution)
        if names.isin(set(own_names)).mean() < min_cover:
            continue
        split_of = dict(zip(own_names, own["split"].astype(str), strict=True))
        out = frame.copy()
        out["split"] = names.map(split_of).fillna("unused")
        return out, f"the checkpoint's own split (source {name!r}: {path})"
    return frame, None


def leave_out_seen(frame: Any, seen: set[str], split: str = "test") -> tuple[Any, int, int]:
    """Test patients with any image the model trained on (by original file name) left out of ``split``
    (split "seen"); returns the frame, the images and the patients left out."""
    names = _names(frame["path"], {})
    hit = frame["split"].eq(split).to_numpy() & np.array([n in seen for n in names], dtype=bool)
    patients = set(frame.loc[hit, "patient_id"].astype(str))
    drop = frame["split"].eq(split) & frame["patient_id"].astype(str).isin(patients)
    out = frame.copy()
    out.loc[drop, "split"] = "seen"
    return out, int(drop.sum()), len(patients)


def subsample_patients(frame: Any, split: str, n: int, seed: int) -> Any:
    """``n`` whole patients of ``split`` (a seeded draw over the sorted ids); the others' rows set to "unused"."""
    patients = np.sort(frame.loc[frame["split"] == split, "patient_id"].astype(str).unique())
    if n <= 0 or n >= len(patients):
        return frame
    keep = set(np.random.default_rng(seed).choice(patients, n, replace=False))
    out = frame.copy()
    out.loc[(out["split"] == split) & ~out["patient_id"].astype(str).isin(keep), "split"] = "unused"
    return out


def subtype_zeroshot(checkpoint: Path) -> Any:
    """Viral vs bacterial pneumonia as a binary zero-shot classifier from the kit's own prompts: the imaging
    extension's ``pneumonia_subtype`` attribute classes (``medclip eval --task attributes``), positive = viral,
    negative = bacterial (the two-class softmax's log-odds). The knowledge graph has no finding prompt for it."""
    from medclip.checkpoint import CheckpointDir
    from medclip.eval.attributes import AttributeClassifier
    from medclip.inference.zeroshot import ZeroShotClassifier

    model = CheckpointDir.open(checkpoint).require().load_model()
    attr = AttributeClassifier.from_model(model, "pneumonia_subtype")
    v, b = attr.classes.index("viral_pneumonia"), attr.classes.index("bacterial_pneumonia")
    feats = attr.class_features
    return ZeroShotClassifier(["viral_pneumonia"], feats[v : v + 1], feats[b : b + 1], attr.logit_scale)


def _verdict(est: Any) -> str:
    if est is None or math.isnan(est.low):
        return "CI n/a"
    if est.low > 0:
        return "better (CI > 0)"
    if est.high < 0:
        return "worse (CI < 0)"
    return "CI includes 0"


def finding_tables(results: dict[str, Any], label: str, n_boot: int, notes: dict[str, str] | None = None) -> str:
    """Per finding: each method x k with mean±sd over draws and the paired patient-bootstrap 95% CI of
    (method - zero-shot) AUROC (the method averaged over the draws inside each resample)."""
    from medclip.adapt.runner import paired_difference_ci
    from medclip.eval.metrics import auroc

    scores = results["scores"]
    by_k = {int(k): v for k, v in results["shots"].items()}
    out = []
    for c in results["findings"]:
        j = results["findings"].index(c)
        y = scores["labels"][:, j]
        known = np.isin(y, (0.0, 1.0))
        pats = len(set(scores["patients"][known]))
        zs = results["zeroshot"]["per_finding"][c]
        out.append(
            f"\n{label} {c}: {int(known.sum())} test images of {pats} patients ({int(np.nansum(y[known]))} positive); "
            f"zero-shot (k=0) AUROC {zs:.3f}" + (f"; {notes[c]}" if notes and c in notes else "")
        )
        head = ["method", "k", "AUROC mean±sd", "minus zero-shot [95% CI]", "verdict"]
        rows = []
        for m in results["methods"]:
            for k in sorted(by_k):
                r = by_k[k].get(m) or {}
                v = (r.get("per_finding") or {}).get(c, math.nan)
                if v is None or math.isnan(v):
                    rows.append([m, str(k), "n/a", "", ""])
                    continue
                draws = [d[c] for d in scores["logits"].get(k, {}).get(m, []) if c in d]
                per_draw = [auroc(y[known], d[known]) for d in draws]
                est = paired_difference_ci(scores, k, m, c, n_boot=n_boot)
                ci = (
                    ""
                    if est is None
                    else (
                        f"{est.value:+.3f}"
                        if math.isnan(est.low)
                        else f"{est.value:+.3f} [{est.low:+.3f}, {est.high:+.3f}]"
                    )
                )
                rows.append([m, str(k), f"{np.mean(per_draw):.3f}±{np.std(per_draw):.3f}", ci, _verdict(est)])
        w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        out += ["  ".join(x.ljust(n) for x, n in zip(r, w, strict=True)).rstrip() for r in [head, *rows]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "quickstart" / "model")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "adaptation")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", default=None, help="comma-separated subset of medclip adapt's methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sets",
        type=lambda v: v.split(","),
        default=["covid", "kermany_pneumonia", "kermany_subtype"],
        help="comma-separated: covid, kermany_pneumonia, kermany_subtype (default all, in this order)",
    )
    parser.add_argument("--n-boot", type=int, default=1000, help="patient-bootstrap resamples (default 1000)")
    parser.add_argument(
        "--kermany-patients",
        default=None,
        help="TRAIN,TEST: whole Kermany patients drawn (seeded) from each split (default 250,150; --quick 150,80)",
    )
    parser.add_argument(
        "--source-manifest",
        type=Path,
        action="append",
        default=[],
        help="a manifest the checkpoint trained on, if not beside its config.yaml or in runs/data (matched by the "
        "SHA-256 its training record names)",
    )
    parser.add_argument(
        "--allow-covid-trained",
        action="store_true",
        help="run on a checkpoint trained on covid / Kermany data whose manifest cannot be found (its numbers are "
        "then not a test)",
    )
    args = parser.parse_args(argv)
    if not (args.checkpoint / "model.safetensors").is_file():
        sys.exit(f"{args.checkpoint}: no medclip checkpoint (run `medclip quickstart` or pass --checkpoint)")
    sources = find_sources(args.checkpoint, args.source_manifest)
    lost = sorted(n for n, p in sources.items() if p is None and any(w in n.lower() for w in ("covid", "kermany")))
    if lost and not args.allow_covid_trained:
        sys.exit(
            f"{args.checkpoint}: trained on {lost} (its training record), but no manifest with the SHA-256 the record "
            "names was found (looked beside its config.yaml and in runs/data; pass --source-manifest PATH): without "
            "its split, this benchmark's test patients may be the model's training patients (a small-data model "
            "scored zero-shot AUROC 1.000 here). Use a model that never saw them, or --allow-covid-trained"
        )

    import torch

    from medclip.adapt.methods import METHODS
    from medclip.adapt.runner import format_adapt, run_adapt
    from medclip.data.manifest import write_manifest

    torch.manual_seed(args.seed)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = args.workdir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(args.checkpoint, model_dir, ignore=shutil.ignore_patterns("adapters", "eval", "gallery", "stale"))
    shots, draws = ((1, 4, 16), 2) if args.quick else ((1, 2, 4, 8, 16), 3)
    steps = (
        {"tip_adapter_f": 50, "coop": 60, "lora": 10} if args.quick else {"tip_adapter_f": 50, "coop": 100, "lora": 20}
    )
    n_train, n_test = (
        (int(x) for x in args.kermany_patients.split(","))
        if args.kermany_patients
        else ((150, 80) if args.quick else (250, 150))
    )
    methods = args.methods.split(",") if args.methods else list(METHODS)
    print(f"training sources of {args.checkpoint}: " + (
        ", ".join(f"{n} -> {p if p else 'manifest not found'}" for n, p in sources.items()) or "no training record"
    ))  # fmt: skip
    seen = seen_files(sources)
    if "sample" in seen:
        print(
            f"  the quick start's bundled export is covid-chestxray images (medclip/sample/ATTRIBUTION.csv): "
            f"{len(seen['sample'])} of its original files are in the model's train / val split"
        )
    seen_all = set().union(*seen.values()) if seen else set()

    covid, covid_root = _manifest("covid_chestxray", "covid_cxr")
    kermany, kermany_root = _manifest("kermany_pneumonia", "kermany_pneumonia")
    sets = {}
    for name, frame, root in (("covid", covid, covid_root), ("kermany", kermany, kermany_root)):
        frame, own = own_split(frame, sources)
        if name == "kermany":
            frame = subsample_patients(subsample_patients(frame, "train", n_train, 1), "test", n_test, 2)
            sub = frame["subtype"].astype(str)
            frame["label.viral_pneumonia"] = np.where(sub == "viral", 1.0, np.where(sub == "bacterial", 0.0, np.nan))
        frame, images_out, patients_out = leave_out_seen(frame, seen_all)
        print(
            f"{name}: split = {own or 'the quality suite split (salt, fractions 60/10/30, seed 0)'}; "
            f"{images_out} test image(s) of {patients_out} patient(s) the model trained on left out"
        )
        path = write_manifest(frame.reset_index(drop=True), args.workdir / f"{name}.parquet", root=root)
        sets[name] = (path, own, images_out, patients_out)

    start, load_before = time.perf_counter(), load()
    common = {
        "shots": shots,
        "draws": draws,
        "seed": args.seed,
        "method_options": {m: {"steps": s} for m, s in steps.items()},
        "keep_scores": True,
    }
    no_prompt = [m for m in methods if m in ("coop", "lora")]
    note = (
        "viral (1) vs bacterial (0) among pneumonia; zero-shot = the imaging extension's pneumonia_subtype attribute "
        "prompts (viral vs bacterial class), the knowledge graph has no finding prompt for it"
        + (f", so {' and '.join(no_prompt)} (which need one) are not run" if no_prompt else "")
    )
    specs = {  # set -> (label, manifest, run_adapt options, notes per finding)
        "covid": ("covid-chestxray", "covid", {"methods": methods, "findings": list(FINDINGS), "save": True}, {}),
        "kermany_pneumonia": (
            "Kermany pneumonia vs normal:",
            "kermany",
            {"methods": methods, "findings": ["pneumonia"]},
            {},
        ),
        "kermany_subtype": (
            "Kermany bacterial vs viral:",
            "kermany",
            {"methods": [m for m in methods if m not in no_prompt], "zeroshot": "subtype"},
            {"viral_pneumonia": note},
        ),
    }
    unknown = [x for x in args.sets if x not in specs]
    if unknown:
        sys.exit(f"--sets: unknown {unknown}; choose from {', '.join(specs)}")
    print(
        "\nPer finding: AUROC on test patients, mean±sd over draws; method minus zero-shot with the paired "
        f"patient-bootstrap 95% CI ({args.n_boot} resamples of test patients, the method averaged over draws)",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    boot_wall = 0.0
    for key in args.sets:
        label, data_set, options, notes = specs[key]
        t0 = time.perf_counter()
        options = dict(options)
        if options.get("zeroshot") == "subtype":
            options["zeroshot"] = subtype_zeroshot(model_dir)
        options.setdefault("save", False)
        res = run_adapt(model_dir, sets[data_set][0], output=args.workdir / key, **options, **common)
        runs.append(res)
        t1 = time.perf_counter()
        print(finding_tables(res, label, args.n_boot, notes))
        boot_wall += time.perf_counter() - t1
        print(f"\n--- Summary: {label.rstrip(':')} ---")
        print(format_adapt(res))
        by_k = {int(k): v for k, v in res["shots"].items()}
        print("\nFitting time per draw (s), at each k")
        print("method          " + "  ".join(f"k={k:<5}" for k in sorted(by_k)))
        for m in res["methods"]:
            print(f"{m:<16}" + "  ".join(f"{by_k[k][m]['seconds_per_draw']:<7.1f}" for k in sorted(by_k)))
        data = res["data"]
        print(
            f"shots from {data['train']['patients']} training patients ({data['train']['images']} images), scored "
            f"on {data['test']['patients']} test patients ({data['test']['images']} images); "
            f"{key} took {(time.perf_counter() - t0) / 60:.1f} min, load average now {load()}",
            flush=True,
        )
    wall = time.perf_counter() - start
    print(
        f"\nmodel {args.checkpoint}; features {runs[0]['features'] if runs else 'n/a'}; Kermany: {n_train} train and {n_test} test "
        f"patients drawn (seeded) from their splits\n"
        f"machine: {platform.machine()} {os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}; "
        f"load average before {load_before}, after {load()}; wall time {wall / 60:.1f} min (fitting and scoring "
        f"{(wall - boot_wall) / 60:.1f}, bootstrap {boot_wall / 60:.1f})" + (" (--quick)" if args.quick else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
