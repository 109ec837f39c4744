"""Side-by-side quality: medclip's training recipe vs a plain CLIP baseline (open_clip's ClipLoss and
training step), same towers, same data, same budget, evaluated on held-back patients.

Data: ``../shared/data/covid_cxr`` (chest X-rays with clinical notes), split by patient. The notes are
the only text, so they serve as the report. Labels: the dataset's own ``finding`` column (COVID-19,
pneumonia, no finding) plus findings the knowledge labeler reads in the notes (a finding the notes do
not mention counts as absent: label noise the table cannot remove).

Both models start from the same offline pretrained towers (EfficientNet-Lite0 ImageNet +
all-MiniLM-L6-v2, config "offline-default") and train for the same epochs, batch size, image size,
learning-rate schedule and seed:

(a) medclip: ``medclip.train.fit`` with knowledge-graph report augmentation and the label-aware loss;
(b) baseline: open_clip_train's ``train_one_epoch`` with open_clip's ``ClipLoss`` on raw notes.

Usage: python benchmarks/quality.py [--epochs 8] [--image-size 128] [--batch-size 32] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Findings scored by zero-shot AUROC: the dataset's labels, then labeler findings frequent in the notes.
DATASET_FINDINGS = ("covid19_pneumonia", "pneumonia", "no_finding")
LABELER_FINDINGS = ("lung_opacity", "consolidation", "ground_glass_opacity", "interstitial_pattern",
                    "support_devices", "pleural_effusion")
#: A finding enters the headline mean AUROC only with this many positives and negatives among the test images.
MIN_SUPPORT = 10


def shared_data() -> Path:
    root = Path(os.environ.get("MEDCLIP_SHARED") or REPO.parent / "shared")
    data = root / "data" / "covid_cxr"
    if not (data / "metadata.csv").is_file():
        sys.exit(f"covid_cxr not found at {data} (set MEDCLIP_SHARED to the folder holding data/covid_cxr)")
    return data


def _recipe():
    spec = importlib.util.spec_from_file_location("covid_recipe", REPO / "datasets" / "covid_chestxray" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def build_manifests(data: Path, workdir: Path, seed: int) -> tuple[Path, Path]:
    """(training manifest: train/val rows with notes; evaluation manifest: every row), patient-split 60/10/30."""
    from medclip.data.manifest import manifest_from_records, write_manifest
    from medclip.knowledge import ReportLabeler

    records = _recipe().records(data)  # the clinical notes are the report text
    labeler = ReportLabeler()
    labels = {cid: [] for cid in LABELER_FINDINGS}
    for text in records["report_text"]:
        found = labeler.label({"findings": text}) if text.strip() else None
        for cid in LABELER_FINDINGS:
            if found is None:
                labels[cid].append(np.nan)
            else:
                value = found[cid].value
                labels[cid].append(0.0 if math.isnan(value) else value)  # not mentioned -> absent
    for cid, values in labels.items():
        records[f"label.{cid}"] = values
    df, _ = manifest_from_records(records, data, salt="medclip-quality-benchmark", fractions=(0.6, 0.1, 0.3), seed=seed)
    eval_path = write_manifest(df, workdir / "eval.parquet", root=data)
    train_df = df[(df["split"] != "test") & df["report_text"].fillna("").str.strip().ne("")]
    train_path = write_manifest(train_df, workdir / "train.parquet", root=data)
    return train_path, eval_path


def _loss_option(text: str) -> dict:
    name, _, rest = text.partition(":")
    kwargs = {k: float(v) for k, v in (item.split("=", 1) for item in rest.split(",") if item)}
    return {"name": name, "kwargs": kwargs}


def train_medclip(manifest: Path, out: Path, args: argparse.Namespace, steps: int) -> Path:
    """(a) medclip's recipe through ``medclip.train.fit``."""
    from medclip.train import fit

    config = {
        "seed": args.seed, "output_dir": str(out),
        "data": {"manifest": str(manifest), "val_split": None, "batch_size": args.batch_size, "num_workers": 0,
                 "pin_memory": False, "image_size": args.image_size, "text_augmentation": True,
                 "max_text_tokens": args.max_tokens},
        "model": {"name": "offline-default", "overrides": {"vision": {"image_size": args.image_size}}},
        **({"loss": _loss_option(args.loss)} if args.loss else {}),  # else the training default (label_aware)
        "optim": {"lr": args.lr, "weight_decay": args.weight_decay, "warmup_steps": args.warmup, "schedule": "cosine"},
        "trainer": {"max_steps": steps, "accelerator": "cpu", "devices": 1, "precision": "32-true",
                    "log_every_n_steps": 5, "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0},
        "checkpoint": {"every_n_steps": None, "save_top_k": 0, "save_last": False},
        "loggers": [],
    }
    return fit(config)


class _OpenClipShaped(torch.nn.Module):
    """The DualEncoder with open_clip's call signature: ``model(images, texts)`` -> feature dict;
    ``texts`` stacks token ids and attention masks as (B, 2, L)."""

    def __init__(self, dual: torch.nn.Module) -> None:
        super().__init__()
        self.dual = dual
        self.logit_scale = dual.logit_scale  # open_clip's step clamps it in place

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.dual(images, texts[:, 0], texts[:, 1])
        return {"image_features": out["image_features"], "text_features": out["text_features"],
                "logit_scale": out["logit_scale"]}


def train_baseline(manifest: Path, out: Path, args: argparse.Namespace, steps_per_epoch: int) -> Path:
    """(b) plain CLIP: open_clip_train's ``train_one_epoch`` + ``cosine_lr`` with open_clip's ``ClipLoss``."""
    import lightning as L
    from open_clip.loss import ClipLoss
    from open_clip_train.data import DataInfo
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch
    from torch.utils.data import DataLoader

    from medclip.data.dataset import ManifestDataset
    from medclip.model import create_model

    L.seed_everything(args.seed, workers=True)
    dual = create_model("offline-default", vision={"image_size": args.image_size})
    model = _OpenClipShaped(dual)
    dataset = ManifestDataset(manifest, split="train", image_size=args.image_size, label_names=[])

    def collate(items):
        tok = dual.tokenize([it["text"] for it in items], max_length=args.max_tokens)
        return torch.stack([it["image"] for it in items]), torch.stack([tok["input_ids"], tok["attention_mask"]], dim=1)

    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(args.seed))
    loader.num_batches, loader.num_samples = len(loader), len(loader) * args.batch_size
    # open_clip's main.py: no weight decay on gains, biases, norms and logit_scale
    named = list(model.named_parameters())
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": args.weight_decay}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    total = steps_per_epoch * args.epochs
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, total)
    oc_args = SimpleNamespace(device="cpu", precision="fp32", distill=False, accum_freq=1, skip_scheduler=False,
                              grad_clip_norm=1.0, horovod=False, wandb=False, world_size=1, rank=0, local_rank=0,
                              batch_size=args.batch_size, log_every_n_steps=5, save_logs=False)
    loss = ClipLoss()
    for epoch in range(args.epochs):
        train_one_epoch(model, {"train": DataInfo(loader)}, loss, epoch, optimizer, None, scheduler, None, oc_args)
    return dual.save_pretrained(out / "model")


def paired_bootstrap(values_a, values_b, groups, stat, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Difference stat(a) - stat(b) with a 95% CI, resampling patients (the same resample for both models)."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in uniq]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        d = stat(values_a, idx) - stat(values_b, idx)
        if not math.isnan(d):
            diffs.append(d)
    full = np.arange(len(groups))
    lo, hi = np.quantile(diffs, [0.025, 0.975]) if len(diffs) >= 20 else (math.nan, math.nan)
    return stat(values_a, full) - stat(values_b, full), float(lo), float(hi)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=Path("runs/quality_benchmark"))
    ap.add_argument("--loss", default=None, help="medclip side: a loss other than the training default, as "
                                                   "NAME or NAME:key=value,... (e.g. label_aware:soft_weight=0.25)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    from medclip.eval.metrics import auroc
    from medclip.eval.runner import EvalOptions, Evaluator, _fmt
    from medclip.eval.encoders import load_model

    t0 = time.time()
    data = shared_data()
    args.workdir.mkdir(parents=True, exist_ok=True)
    train_manifest, eval_manifest = build_manifests(data, args.workdir, args.seed)
    from medclip.data.manifest import read_manifest

    train_rows = (read_manifest(train_manifest)["split"] == "train").sum()
    steps_per_epoch = int(train_rows) // args.batch_size
    steps = steps_per_epoch * args.epochs
    ev = read_manifest(eval_manifest)
    print(f"data: {len(ev)} images, {ev['patient_id'].nunique()} patients; train {train_rows} images with notes "
          f"({steps_per_epoch} steps/epoch); test {int((ev['split'] == 'test').sum())} images / "
          f"{ev.loc[ev['split'] == 'test', 'patient_id'].nunique()} patients")
    print(f"budget (both): {args.epochs} epochs = {steps} steps, batch {args.batch_size}, {args.image_size} px, "
          f"lr {args.lr}, seed {args.seed}")

    times, cpu = {}, {}
    t, c = time.time(), time.process_time()
    medclip_dir = train_medclip(train_manifest, args.workdir / "medclip", args, steps)
    times["train medclip"], cpu["train medclip"] = time.time() - t, time.process_time() - c
    t, c = time.time(), time.process_time()
    baseline_dir = train_baseline(train_manifest, args.workdir / "baseline", args, steps_per_epoch)
    times["train baseline"], cpu["train baseline"] = time.time() - t, time.process_time() - c

    findings = [f for f in (*DATASET_FINDINGS, *LABELER_FINDINGS)]
    options = EvalOptions(split="test", val_split=None, findings=findings, text_field="text", n_boot=args.bootstrap,
                          seed=args.seed, batch_size=32)
    results, evaluators = {}, {}
    for name, folder in (("medclip", medclip_dir), ("baseline", baseline_dir)):
        t, c = time.time(), time.process_time()
        evaluator = Evaluator(load_model(folder), eval_manifest, options)
        results[name] = {"zeroshot": evaluator.run_zeroshot(), "retrieval": evaluator.run_retrieval(),
                         "report": evaluator.run_report()}
        evaluators[name] = evaluator
        times[f"eval {name}"], cpu[f"eval {name}"] = time.time() - t, time.process_time() - c

    # ------------------------------------------------------------------ side-by-side table
    za, zb = results["medclip"]["zeroshot"], results["baseline"]["zeroshot"]
    supported = [cid for cid in za["findings"]
                 if MIN_SUPPORT <= za["per_finding"][cid]["positives"] <= za["per_finding"][cid]["n"] - MIN_SUPPORT]
    print("\nZero-shot AUROC on held-back patients (95% CI, patient bootstrap; * = fewer than "
          f"{MIN_SUPPORT} positives or negatives: too few to read)")
    header = f"{'finding':22s} {'n':>4s} {'pos':>4s}  {'medclip':24s} {'baseline (open_clip)':24s} {'diff':>7s}"
    print(header + "\n" + "-" * len(header))
    for cid in za["findings"]:
        a, b = za["per_finding"][cid], zb["per_finding"][cid]
        va, vb = a["auroc"]["value"], b["auroc"]["value"]
        diff = (va - vb) if va is not None and vb is not None else math.nan
        mark = " " if cid in supported else "*"
        print(f"{cid + mark:22s} {a['n']:4d} {a['positives']:4d}  {_fmt(a['auroc']):24s} {_fmt(b['auroc']):24s} {diff:+7.3f}")

    # paired patient-bootstrap differences of mean AUROC and R@10
    test_a, test_b = evaluators["medclip"].split("test"), evaluators["baseline"].split("test")
    labels = test_a.labels(za["findings"])
    prob_a = evaluators["medclip"].zeroshot_classifier().predict_proba(test_a.image_features)
    prob_b = evaluators["baseline"].zeroshot_classifier().predict_proba(test_b.image_features)

    columns = [za["findings"].index(cid) for cid in supported]

    def mean_auroc(prob, idx, columns=columns):
        vals = []
        for j in columns:
            y = labels[idx, j]
            known = ~np.isnan(y)
            vals.append(auroc(y[known], prob[idx, j][known]) if known.any() else math.nan)
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan

    d_auc = paired_bootstrap(prob_a, prob_b, test_a.patients, mean_auroc, args.bootstrap, args.seed)
    all_columns = list(range(labels.shape[1]))
    d_auc_all = paired_bootstrap(prob_a, prob_b, test_a.patients,
                                 lambda p, i: mean_auroc(p, i, all_columns), args.bootstrap, args.seed)

    def i2t_ranks(evaluator):
        from medclip.eval.encoders import embed_texts
        from medclip.eval.retrieval import retrieval_ranks

        split = evaluator.split("test")
        texts, studies, has_text = evaluator._reports(split)
        feats = embed_texts(evaluator.model, texts)
        return retrieval_ranks(split.image_features[torch.from_numpy(has_text)], feats, split.studies[has_text], studies), \
            split.patients[has_text]

    ranks_a, query_patients = i2t_ranks(evaluators["medclip"])
    ranks_b, _ = i2t_ranks(evaluators["baseline"])
    r10 = lambda r, idx: float((r[idx] <= 10).mean())  # noqa: E731
    d_r10 = paired_bootstrap(ranks_a, ranks_b, query_patients, r10, args.bootstrap, args.seed)

    print("\nSummary (held-back patients)")
    header = f"{'metric':34s} {'medclip':>9s} {'baseline':>9s} {'diff [95% CI, paired patient bootstrap]':>42s}"
    print(header + "\n" + "-" * len(header))
    full = np.arange(len(test_a.patients))
    print(f"{f'mean zero-shot AUROC ({len(supported)} findings)':34s} {mean_auroc(prob_a, full):9.3f} "
          f"{mean_auroc(prob_b, full):9.3f} {d_auc[0]:+9.3f} [{d_auc[1]:+.3f}, {d_auc[2]:+.3f}]")
    print(f"{f'mean zero-shot AUROC (all {len(all_columns)})':34s} {za['mean_auroc']:9.3f} {zb['mean_auroc']:9.3f} "
          f"{d_auc_all[0]:+9.3f} [{d_auc_all[1]:+.3f}, {d_auc_all[2]:+.3f}]")
    print(f"{'mean AUROC, multi-class softmax':34s} {za['mean_auroc_multiclass_softmax']:9.3f} "
          f"{zb['mean_auroc_multiclass_softmax']:9.3f} {za['mean_auroc_multiclass_softmax'] - zb['mean_auroc_multiclass_softmax']:+9.3f}")
    print(f"{'zero-shot ECE (pooled)':34s} {za['ece']:9.3f} {zb['ece']:9.3f} {za['ece'] - zb['ece']:+9.3f}")
    print(f"{'prompt-style AUROC spread':34s} {za['prompt_sensitivity']['mean_spread']:9.3f} "
          f"{zb['prompt_sensitivity']['mean_spread']:9.3f}")
    ra, rb = results["medclip"]["retrieval"], results["baseline"]["retrieval"]
    for direction in ("image_to_report", "report_to_image"):
        for key in ("R@1", "R@5", "R@10", "median_rank"):
            extra = f" [{d_r10[1]:+.3f}, {d_r10[2]:+.3f}]" if (direction, key) == ("image_to_report", "R@10") else ""
            print(f"{direction.replace('_to_', '->') + ' ' + key:34s} {ra[direction][key]:9.3f} {rb[direction][key]:9.3f} "
                  f"{ra[direction][key] - rb[direction][key]:+9.3f}{extra}")
    da, db = results["medclip"]["report"], results["baseline"]["report"]
    for key in ("macro_f1", "micro_f1", "bleu4", "rouge_l"):
        print(f"{'drafting ' + key:34s} {da[key]:9.3f} {db[key]:9.3f} {da[key] - db[key]:+9.3f}")
    print(f"{'drafting macro_f1, random report':34s} {da['random_report']['macro_f1']:9.3f} "
          f"{db['random_report']['macro_f1']:9.3f}")
    print(f"\nretrieval gallery: {ra['image_to_report']['gallery_size']} test reports "
          f"(chance R@10 {ra['chance_R@10']:.3f}); drafting corpus: {da['corpus_reports']} training notes")
    print("wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
          + f"; total {(time.time() - t0) / 60:.1f} min (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print("CPU time (this process, all threads): " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in cpu.items())
          + f"; total {time.process_time() / 60:.1f} min")
    verdict_auc = "yes" if d_auc[0] > 0 else "no"
    verdict_r10 = "yes" if d_r10[0] > 0 else "no"
    firm = lambda d: "CI excludes 0" if (d[1] > 0 or d[2] < 0) else "CI includes 0: not a firm conclusion"  # noqa: E731
    print(f"medclip beats baseline on mean zero-shot AUROC ({len(supported)} findings with support): {verdict_auc} ({firm(d_auc)}); "
          f"on image->report R@10: {verdict_r10} ({firm(d_r10)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
