"""Image-only pretraining benchmark (issue 17, part 3a): does `medclip pretrain-image` (DINO) on the site's own
radiographs make the image encoder's features better than the ImageNet tower it starts from?

Data (``../shared/data``, or ``$MEDCLIP_SHARED/data``), split 60/10/30 by patient with the quality suite's fixed
salt (``benchmarks/quality.py``: the same manifests): covid-chestxray (adult CXR, 427 images; few) and Kermany
pediatric pneumonia (5.2k images, 2.9k patients; ``--kermany-patients`` subsamples whole patients). Both are
cached once at a reduced resolution for this CPU (``--image-size``, 128 px by default; the output says so) into
one pooled cache of their training, validation and test patients (the folder named by a hash of its rows, so a
change of the split rule gets a new cache, not stale shards). DINO reads the training patients only; the probes
are also scored on the validation patients, printed as a second table: that is where settings are chosen (covid
has ~22 validation patients, so its rows there are very wide), never on the test patients.

(a) ``medclip pretrain-image`` (its Python API, ``medclip.pretrain.pretrain_image``) on the pooled cache's
``train`` split only (training patients of both sets; test patients are never seen), continued from the offline
default tower (EfficientNet-Lite0, ImageNet weights), one run per ``--seeds`` seed. Then a logistic linear probe
(the quality suite's ``_probe_stat``: L2-normalised pooled features before any projection, C by 3-fold CV on the
training patients; deterministic) on the starting encoder and on each pretrained encoder, trained on training
patients, AUROC on test patients: covid COVID-19 and pneumonia (vs the rest, the dataset's ``finding`` as the
quality suite labels it), Kermany pneumonia vs normal and bacterial vs viral. Differences (pretrained - start)
come with paired patient-bootstrap 95% CIs (test patients resampled, both AUROCs on the same resample;
``medclip.eval.metrics.bootstrap_ci``), per seed and for the seed mean.

(b) ``--clip`` (optional): the small-data CLIP recipe (``medclip fit --config small-data``: LiT, the image tower
locked, label-to-text; here on the covid + Kermany training patients only, no MedPix, at ``--image-size`` and
shortened to ``--clip-steps`` steps, no validation) once from the starting tower and once from the seed-0
pretrained tower (``model.overrides.vision.name=<tower>``, ``vision.pretrained=true``), then zero-shot AUROC on
the covid test patients, with the paired CI of the difference: is zero-shot after the recipe not worse?

Usage:
  python benchmarks/image_pretraining.py --quick   # seed 0, 150 steps, 300 Kermany patients: ~5 min quiet (< 10)
  python benchmarks/image_pretraining.py           # seeds 0,1,2, 300 steps, 1000 Kermany patients: ~25 min quiet
  python benchmarks/image_pretraining.py --clip    # + (b), 2 x 150 CLIP steps: ~25 min more (loaded estimate)
Dev / smoke: ``--steps 5 --kermany-patients 60``; ``--kermany-patients 0`` = all 2.9k Kermany patients.

Budget on the 2-core CPU (measured on a shared machine, load average 3-4: the numbers below are the steadiest
stretches seen; while another job held both cores a DINO step took 8-16 s instead, as the two torch threads
waited on each other, so run it on a quiet machine): the pooled cache ~3 ms per image, decoded once
(``<workdir>/<data tag>/cache_128px``, reused between runs); DINO, batch 16 of
2 x 96 px global + 2 x 48 px local crops (CPU sizes; DINO's are 224 / 96 px, 6 local crops, batch 32+): ~50 s to
start, then ~1.45 s per step; features (128 px) + probes ~50 ms per image per encoder. Full: ~2k images
(covid 374 + Kermany 1000 patients' training and test images), 3 x (50 + 300 x 1.45) s = 24 min pretraining +
4 x 1.7 min features: ~32 min loaded, so under 40 quiet. Quick: ~870 images, 4.5 + 1.6 min: ~6.5 min loaded.
``--clip``: per tower ~1.5 min of locked-tower features (decoded from the JPEGs at 128 px) + ~4.3 s per CLIP step
(batch 32, the text tower trains), both measured loaded: 2 x 150 steps ~25 min.
DINO towers and features are reused when a run is repeated with the same settings (the run folders' names say
them: seed, steps, batch, crops, ``--lr``, ``--momentum``, the cache's hash); an interrupted DINO run continues
from its ``last.ckpt``.

What limits this short run (diagnosed on seed 0, chosen on the training patients' 5-fold patient-grouped CV and the
validation patients, not on test; medclip/pretrain/README.md, "Short runs"): in 300 steps at lr 1e-4 the student's
weights move 0.4 % (relative L2) and, with the teacher momentum 0.996 (cosine to 1), the exported teacher is still
~55 % the starting weights; re-estimating only the BatchNorm running statistics on the training images (no
gradient step) changes the probes as much as the DINO run does, in both directions. This is little pretraining (300 x 16 = 4.8k
images, each as 4 crops, of ~1.35k training images per seed): the question answered is whether a CPU-sized DINO
run on a few thousand site images already moves the probes, not what a GPU run of many epochs would do.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: (table row, set, label): a manifest column (0 / 1) or "subtype" (bacterial vs viral among pneumonia).
PROBES = (
    ("covid COVID-19 vs rest", "covid", "label.covid19_pneumonia"),
    ("covid pneumonia vs rest", "covid", "label.pneumonia"),
    ("kermany pneumonia vs normal", "kermany", "label.pneumonia"),
    ("kermany bacterial vs viral", "kermany", "subtype"),
)
#: Zero-shot findings of --clip (covid test patients).
ZERO_SHOT = ("covid19_pneumonia", "pneumonia")


def _quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_benchmark"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


q = _quality()


def shared_data() -> Path:
    """``../shared/data`` (or ``$MEDCLIP_SHARED/data``) with the two sets, else a clear SystemExit."""
    root = Path(os.environ.get("MEDCLIP_SHARED") or REPO.parent / "shared") / "data"
    missing = [n for n in ("covid_cxr", "kermany_pneumonia") if not (root / n).is_dir()]
    if missing:
        sys.exit(f"{missing} not found under {root} (set MEDCLIP_SHARED to the folder holding data/)")
    return root


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------- data
def build_manifests(data: Path, workdir: Path, kermany_patients: int | None) -> dict[str, pd.DataFrame]:
    """covid and Kermany as the quality suite splits them (its salt, fractions and seed), each written as a
    manifest under ``workdir``; Kermany optionally cut to ``kermany_patients`` whole patients (seeded draw)."""
    from medclip.data.manifest import manifest_from_records, read_manifest, write_manifest

    out = {}
    for name, recipe, folder in (
        ("covid", "covid_chestxray", "covid_cxr"),
        ("kermany", "kermany_pneumonia", "kermany_pneumonia"),
    ):
        root = data / folder
        records = q._recipe(recipe).records(root).drop(columns=["split"], errors="ignore")
        df, _ = manifest_from_records(records, root, salt=q.SALT, fractions=q.FRACTIONS, seed=0)
        if name == "kermany" and kermany_patients:
            patients = np.sort(df["patient_id"].astype(str).unique())
            if kermany_patients < len(patients):
                keep = np.random.default_rng(1).choice(patients, kermany_patients, replace=False)
                df = df[df["patient_id"].astype(str).isin(keep)]
        # one image file listed under several patients (covid-chestxray's metadata has a few, some across the
        # train / test split): left out, so that no test image is pretrained or probed on
        shared = df["image_id"].duplicated(keep=False)
        if shared.any():
            print(
                f"  {name}: {int(shared.sum())} rows left out: {df.loc[shared, 'image_id'].nunique()} images listed "
                "under more than one patient"
            )
        df = df[~shared].reset_index(drop=True)  # validation patients: for choosing settings, never pretrained on
        path = write_manifest(df, workdir / f"{name}.parquet", root=root)
        out[name] = read_manifest(path)
    return out


def build_pooled_cache(frames: dict[str, pd.DataFrame], workdir: Path, size: int, workers: int) -> Path:
    """One cache of both sets (splits kept: ``train`` is what DINO reads), reused when already complete."""
    from medclip.data.cache import CacheConfig, build_cache
    from medclip.recipes.base import combine_manifests

    pooled = workdir / "pooled.parquet"
    combine_manifests([workdir / f"{n}.parquet" for n in frames], pooled)
    # the folder is named by its rows (image, split): a cache resumes by shard name, so a manifest whose splits
    # changed (another split rule) gets its own cache instead of reading stale shards
    rows = sorted(f"{i}|{s}" for f in frames.values() for i, s in zip(f["image_id"].astype(str), f["split"]))
    cache = workdir / f"cache_{size}px_{hashlib.sha256(chr(10).join(rows).encode()).hexdigest()[:8]}"
    result = build_cache(pooled, cache, config=CacheConfig(image_size=size), workers=workers, progress=False)
    print(f"  {result.summary()}", flush=True)
    return cache


# ---------------------------------------------------------------------- pretraining
def pretrain(cache: Path, out: Path, seed: int, args: argparse.Namespace) -> tuple[Path, float, bool]:
    """A DINO run (``medclip.pretrain.pretrain_image``) on the cache's train split; (tower, seconds, reused)."""
    import json

    from medclip.pretrain import PretrainImageConfig, pretrain_image

    tower = out / "tower"
    done = tower / "config.json"
    if done.is_file():
        record = json.loads(done.read_text()).get("medclip", {}).get("pretraining", {})
        if record.get("steps") == args.steps:
            return tower, float(record.get("wall_time_s", 0.0)), True
    cfg = PretrainImageConfig(
        cache_dir=str(cache),
        output_dir=str(out),
        split="train",
        seed=seed,
        steps=args.steps,
        batch_size=args.batch_size,
        global_size=args.global_size,
        local_size=args.local_size,
        n_local=args.n_local,
        warmup_steps=max(1, args.steps // 10),
        lr=args.lr,
        momentum=args.momentum,
        precise_bn_images=args.precise_bn_images,
        accelerator="cpu",
        num_workers=0,
        log_every_n_steps=max(1, args.steps // 5),
        every_n_steps=None,
    )
    t = time.time()
    pretrain_image(cfg)
    return tower, time.time() - t, False


def backbone_of(tower: str) -> Any:
    """The tower's backbone as ``pretrain-image`` builds it (``VisionTower.features``' exact computation)."""
    from medclip.pretrain.dino import build_backbone, resolve_tower

    cfg, weights = resolve_tower(tower)
    return build_backbone(cfg, weights).eval()


def features(tower: str, cache: Path, split: str, folder: Path) -> tuple[np.ndarray, list[str]]:
    """Pooled features (before any projection) of every cached image of ``split``, and their image ids; kept
    under ``folder`` per (weights, cache, split)."""
    import torch

    from medclip.data.dataset import CacheMapDataset
    from medclip.inference.encoders import image_batches

    weights = Path(tower) / "model.safetensors"
    ident = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else tower
    key = hashlib.sha256(f"{ident}|{cache.resolve()}|{split}".encode()).hexdigest()[:20]
    path = folder / f"{key}.npz"
    if path.is_file():
        saved = np.load(path, allow_pickle=False)
        return saved["x"], [str(i) for i in saved["ids"]]
    dataset = CacheMapDataset(cache, split, label_names=[])
    ids = dataset.image_ids()
    model = backbone_of(tower)
    with torch.no_grad():
        x = torch.cat([model(b).float() for b in image_batches(dataset, 64)]).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, ids=np.array(ids))
    return x, ids


def _classes(frame: pd.DataFrame, label: str) -> np.ndarray:
    if label == "subtype":
        sub = frame["subtype"].astype(str).to_numpy()
        return np.where(np.isin(sub, ("bacterial", "viral")), sub, "")
    return q._binary_classes(label)(frame)


def probe_stats(
    tower: str, cache: Path, frames: dict[str, pd.DataFrame], folder: Path, splits: tuple[str, ...] = ("test", "val")
) -> dict[str, dict[str, Any]]:
    """Per split of ``splits``: every probe row's ``Stat`` (AUROC on that split's patients, resampleable by patient)
    for one encoder; each split's features computed (or read) once."""
    feats = {s: features(tower, cache, s, folder) for s in ("train", *splits)}
    return {s: probe_stats_of(feats, frames, s) for s in splits}


def probe_stats_of(
    feats: dict[str, tuple[np.ndarray, list[str]]], frames: dict[str, pd.DataFrame], split: str = "test"
) -> dict[str, Any]:
    """:func:`probe_stats` from features already computed: ``{split: (features, image ids)}`` for ``train`` and
    ``split``; the probe is trained on the training patients and scored on ``split``'s."""
    x, rows = {}, {}
    for s in ("train", split):
        x[s], rows[s] = feats[s][0], {i: k for k, i in enumerate(feats[s][1])}
    out = {}
    for row, name, label in PROBES:
        parts = {}
        for s in ("train", split):
            f = frames[name][frames[name]["split"] == s]
            f = f[f["image_id"].astype(str).isin(rows[s])].reset_index(drop=True)  # skipped when undecodable
            y = _classes(f, label)
            ok = ~np.isin(y, q._UNKNOWN)
            idx = np.array([rows[s][i] for i in f["image_id"].astype(str)], dtype=int)
            parts[s] = (x[s][idx][ok], y[ok], f["patient_id"].astype(str).to_numpy()[ok])
        (tx, ty, _), (sx, sy, sg) = parts["train"], parts[split]
        out[row] = q._probe_stat(tx, ty, sx, sy, sg, seed=0)
    return out


def paired_ci(runs_a: list[Any], b: Any, n_boot: int) -> Any:
    """``mean(a over runs) - b`` with a 95% CI by ``medclip.eval.metrics.bootstrap_ci`` resampling test patients
    (every run and ``b`` score the same rows: each resample gives both AUROCs)."""
    from medclip.eval.metrics import bootstrap_ci

    rows = np.arange(len(b.groups), dtype=float)

    def diff(i: np.ndarray, _: np.ndarray) -> float:
        idx = i.astype(int)
        vals = [v for v in (r.fn(idx) for r in runs_a) if not math.isnan(v)]
        return float(np.mean(vals)) - b.fn(idx) if vals else math.nan

    return bootstrap_ci(diff, rows, rows, groups=b.groups, n_boot=n_boot, seed=0)


def single_ci(stat: Any, n_boot: int) -> Any:
    from medclip.eval.metrics import bootstrap_ci

    rows = np.arange(len(stat.groups), dtype=float)
    return bootstrap_ci(lambda i, _: stat.fn(i.astype(int)), rows, rows, groups=stat.groups, n_boot=n_boot, seed=0)


def _verdict(est: Any) -> str:
    if math.isnan(est.low):
        return "CI n/a"
    if est.low > 0:
        return "better (CI > 0)"
    if est.high < 0:
        return "WORSE (CI < 0)"
    return "CI includes 0"


def probe_table(start: dict[str, Any], seeds: dict[int, dict[str, Any]], n_boot: int, split: str = "test") -> str:
    head = (
        f"{f'linear probe AUROC ({split} patients)':34s} {f'n {split} (pat.)':>14s}  {'start [95% CI]':>21s}  "
        f"{'pretrained mean±sd':>18s}  {'pretrained - start, seed mean [95% CI]':>38s}  verdict"
    )
    lines = [head, "-" * len(head)]
    per_seed = []
    for row, _, _ in PROBES:
        s = start[row]
        runs = [seeds[k][row] for k in sorted(seeds)]
        vals = np.array([r.value for r in runs])
        sd = f" ± {vals.std(ddof=1):.3f}" if len(vals) > 1 else ""
        d = paired_ci(runs, s, n_boot)
        c = single_ci(s, n_boot)
        n = f"{len(s.groups)} ({len(np.unique(s.groups))})"
        lines.append(
            f"{row:34s} {n:>14s}  {s.value:.3f} [{c.low:.3f}, {c.high:.3f}]  {vals.mean():>11.3f}{sd:<7s}  "
            f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{'':14s}  {_verdict(d)}"
        )
        for k in sorted(seeds):
            e = paired_ci([seeds[k][row]], s, n_boot)
            per_seed.append(
                f"  {row:32s} seed {k}: {seeds[k][row].value:.3f}, "
                f"difference {e.value:+.3f} [{e.low:+.3f}, {e.high:+.3f}]  {_verdict(e)}"
            )
    return "\n".join(lines + ["per seed (pretrained AUROC; pretrained - start [95% CI]):"] + per_seed)


# ---------------------------------------------------------------------- (b) the CLIP recipe
def clip_recipe(tower: str | None, out: Path, workdir: Path, args: argparse.Namespace) -> Path:
    """``medclip fit --config small-data`` on covid + Kermany training patients, shortened, from ``tower``
    (None: the starting tower); the exported model folder (reused when already there)."""
    from medclip.train import fit
    from medclip.train.config import load_config
    from medclip.train.configs import resolve_config

    model_dir = out / "model"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    cfg = load_config(resolve_config("small-data"))
    data = cfg["data"]
    data["sources"] = [s for s in data["sources"] if s["name"] in ("covid", "kermany")]
    for s in data["sources"]:
        s["manifest"] = str(workdir / f"{s['name']}.parquet")  # test rows are left out by train_split
    data.update(val_split=None, image_size=args.image_size, num_workers=0, feature_cache_dir=str(out / "feature_cache"))
    vision: dict[str, Any] = {"image_size": args.image_size}
    if tower is not None:
        vision.update(name=str(tower), pretrained=True)
    cfg["model"]["overrides"] = {**dict(cfg["model"].get("overrides") or {}), "vision": vision}
    cfg["output_dir"] = str(out)
    cfg["seed"] = 0
    cfg["loggers"] = []
    cfg["optim"]["warmup_steps"] = max(1, min(int(cfg["optim"].get("warmup_steps", 50)), args.clip_steps // 10))
    cfg["trainer"].update(max_steps=args.clip_steps, enable_progress_bar=False, enable_model_summary=False)
    cfg["checkpoint"] = {"every_n_steps": None, "save_top_k": 0, "save_last": False}
    return Path(fit(cfg))


def zero_shot_stats(model_dir: Path, cache: Path, frame: pd.DataFrame) -> dict[str, Any]:
    """Zero-shot AUROC per finding on the covid test patients (images from the cache, the model's prompts)."""
    from medclip.data.dataset import CacheMapDataset
    from medclip.eval.metrics import auroc
    from medclip.inference.encoders import embed_images
    from medclip.inference.zeroshot import ZeroShotClassifier
    from medclip.model import DualEncoder

    model = DualEncoder.from_pretrained(model_dir).eval()
    dataset = CacheMapDataset(cache, "test", label_names=[])
    ids = dataset.image_ids()
    keep = [k for k, i in enumerate(ids) if i in set(frame["image_id"].astype(str))]
    emb = embed_images(model, [dataset[k] for k in keep], batch_size=64)
    rows = frame.set_index(frame["image_id"].astype(str)).loc[[ids[k] for k in keep]]
    prob = ZeroShotClassifier.from_model(model, list(ZERO_SHOT)).predict_proba(emb)
    out = {}
    for j, cid in enumerate(ZERO_SHOT):
        y = pd.to_numeric(rows[f"label.{cid}"], errors="coerce").to_numpy(float)
        known = ~np.isnan(y)
        yy, pp, gg = y[known], prob[known, j], rows["patient_id"].astype(str).to_numpy()[known]
        out[f"covid zero-shot {cid}"] = q.Stat(auroc(yy, pp), gg, lambda i, yy=yy, pp=pp: auroc(yy[i], pp[i]), 0.5)
    return out


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 150 steps, 300 Kermany patients (< 10 min quiet)")
    ap.add_argument("--seeds", default=None, help="pretraining seeds, comma-separated (default 0,1,2; --quick 0)")
    ap.add_argument("--steps", type=int, default=None, help="DINO steps per seed (default 300; --quick 150)")
    ap.add_argument("--batch-size", type=int, default=16, help="DINO batch (default 16: CPU budget)")
    ap.add_argument("--image-size", type=int, default=128, help="cache (probe) size in px (reduced for this CPU)")
    ap.add_argument("--global-size", type=int, default=96, help="DINO global crops in px (README's CPU hint: 128)")
    ap.add_argument("--local-size", type=int, default=48, help="DINO local crops in px")
    ap.add_argument("--n-local", type=int, default=2, help="local crops per image (DINO: 6; CPU budget)")
    ap.add_argument("--lr", type=float, default=1e-4, help="DINO peak learning rate (pretrain-image's default 1e-4)")
    ap.add_argument("--momentum", type=float, default=0.996, help="teacher EMA momentum at the start")
    ap.add_argument(
        "--kermany-patients",
        type=int,
        default=None,
        help="whole Kermany patients drawn, 0 = all 2.9k (default 1000; --quick 300)",
    )
    ap.add_argument(
        "--precise-bn-images",
        type=int,
        default=2048,
        help="BatchNorm statistics of the exported tower re-estimated on this many training images (pretrain-image's "
        "default 2048; 0 keeps DINO's)",
    )
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="processes decoding images for the cache")
    ap.add_argument("--clip", action="store_true", help="(b): the small-data CLIP recipe from both towers")
    ap.add_argument("--clip-steps", type=int, default=150, help="CLIP steps per tower with --clip (recipe: 600)")
    ap.add_argument("--workdir", type=Path, default=REPO / "runs" / "image_pretraining")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
    args.steps = args.steps or (150 if args.quick else 300)
    if args.kermany_patients is None:
        args.kermany_patients = 300 if args.quick else 1000
    if args.quick and args.clip:
        ap.error("--quick runs without --clip")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = shared_data()
    import warnings

    import torch

    from medclip.logging_setup import setup_logging

    setup_logging(0)
    warnings.filterwarnings("ignore", category=FutureWarning)  # scikit-learn's LogisticRegressionCV notices
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0, load_start = time.time(), load()
    times: dict[str, float] = {}
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
        f"load average at start {load_start}"
    )
    tag = f"k{args.kermany_patients or 'all'}_{args.image_size}px"
    work = args.workdir / tag
    work.mkdir(parents=True, exist_ok=True)

    t = time.time()
    frames = build_manifests(data, work, args.kermany_patients)
    for name, f in frames.items():
        print(
            f"  {name:8s} {len(f):5d} images, {f['patient_id'].nunique():4d} patients; "
            + ", ".join(
                f"{s} {int((f['split'] == s).sum())} ({f[f['split'] == s]['patient_id'].nunique()} pat.)"
                for s in ("train", "val", "test")
            )
        )
    cache = build_pooled_cache(frames, work, args.image_size, args.workers)
    times["manifests + pooled cache"] = time.time() - t
    n_train = sum(int((f["split"] == "train").sum()) for f in frames.values())
    print(
        f"images at {args.image_size} px (reduced resolution for this CPU); DINO on the {n_train} training-patient "
        f"images of both sets (test patients never), {args.steps} steps x batch {args.batch_size}, crops 2 x "
        f"{args.global_size} px + {args.n_local} x {args.local_size} px, from offline-default (EfficientNet-Lite0, "
        f"ImageNet); seeds {args.seeds}; BatchNorm statistics of the exported tower "
        + (
            f"re-estimated on up to {args.precise_bn_images} training images"
            if args.precise_bn_images
            else "as DINO left them"
        ),
        flush=True,
    )

    feats = work / "features"
    t = time.time()
    start_stats = probe_stats("offline-default", cache, frames, feats)
    start, start_val = start_stats["test"], start_stats["val"]
    times["start encoder: features + probes"] = time.time() - t
    towers, pretrained, pretrained_val = {}, {}, {}
    for seed in args.seeds:
        out = work / (
            f"dino_s{seed}_n{args.steps}_b{args.batch_size}_g{args.global_size}_l{args.n_local}x{args.local_size}"
            f"_lr{args.lr:g}_m{args.momentum:g}_pbn{args.precise_bn_images}_{cache.name.rsplit('_', 1)[-1]}"
        )
        towers[seed], seconds, reused = pretrain(cache, out, seed, args)
        times[f"pretrain seed {seed}" + (" (reused; its recorded time)" if reused else "")] = seconds
        print(
            f"  seed {seed}: {args.steps} steps in {seconds / 60:.1f} min ({seconds / args.steps:.2f} s/step)"
            + (" (reused)" if reused else ""),
            flush=True,
        )
        t = time.time()
        seed_stats = probe_stats(str(towers[seed]), cache, frames, feats)
        pretrained[seed], pretrained_val[seed] = seed_stats["test"], seed_stats["val"]
        times[f"seed {seed}: features + probes"] = time.time() - t

    print(
        f"\n(a) linear probes on the pooled encoder features (before projection), trained on training patients, "
        f"AUROC on test patients; {len(args.seeds)} pretraining seed(s); CIs: paired patient bootstrap, "
        f"{args.bootstrap} resamples"
    )
    print(probe_table(start, pretrained, args.bootstrap))
    print(
        "\nthe same probes scored on the validation patients (what the settings were chosen on; never pretrained on; "
        "covid has few: wide CIs):"
    )
    print(probe_table(start_val, pretrained_val, args.bootstrap, split="val").split("\nper seed")[0])

    if args.clip:
        seed = args.seeds[0]
        t = time.time()
        arms = {
            "start tower": clip_recipe(None, work / f"clip_start_n{args.clip_steps}", work, args),
            f"pretrained tower (seed {seed})": clip_recipe(
                str(towers[seed]), work / f"clip_{towers[seed].parent.name}_n{args.clip_steps}", work, args
            ),
        }
        times["(b) CLIP recipe x 2"] = time.time() - t
        t = time.time()
        covid_test = frames["covid"][frames["covid"]["split"] == "test"]
        zs = {name: zero_shot_stats(d, cache, covid_test) for name, d in arms.items()}
        times["(b) zero-shot"] = time.time() - t
        a, b = zs[f"pretrained tower (seed {seed})"], zs["start tower"]
        print(
            f"\n(b) small-data CLIP recipe (LiT, label-to-text; covid + Kermany training patients; "
            f"{args.clip_steps} steps, {args.image_size} px), zero-shot AUROC on covid test patients"
        )
        print(
            f"{'finding':34s} {'start tower':>11s}  {'pretrained':>10s}  {'pretrained - start [95% CI]':>28s}  verdict"
        )
        for key in b:
            d = paired_ci([a[key]], b[key], args.bootstrap)
            print(
                f"{key:34s} {b[key].value:11.3f}  {a[key].value:10.3f}  "
                f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{'':8s}  " + _verdict(d)
            )

    print(
        "\nWall time (min): "
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in times.items())
        + f"; total {(time.time() - t0) / 60:.1f}"
        + (" (--quick)" if args.quick else "")
    )
    print(f"load average at start {load_start}, at end {load()} ({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
