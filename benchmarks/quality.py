"""Quality suite: does training with medclip teach the towers something plain CLIP does not?

Three real sets from ``../shared/data`` (each split 60/10/30 by patient or case, a fixed salt):

* ``covid``   covid-chestxray-dataset: chest X-rays with clinical notes (the notes are the report text);
              labels = the dataset's ``finding`` plus findings the knowledge labeler reads in the notes;
* ``kermany`` Kermany pediatric chest X-rays: label-only (normal / bacterial / viral pneumonia);
* ``medpix``  MedPix 2.0 CT and MR key images with captions, modality, plane and body region.

Arms (same towers, same data, same budget: steps x batch x image size x lr schedule):

(a) ``medclip``  ``medclip.train.fit`` with the training defaults (``medclip.train.config.DEFAULTS``),
    the three sets mixed in one run through ``data.sources``;
(b) ``clip``     plain CLIP: open_clip_train's ``train_one_epoch`` + ``cosine_lr`` with open_clip's
    ``ClipLoss``, the same towers, the raw texts (label-only rows get the one-line caption a plain CLIP
    user writes, "chest x-ray: pneumonia." / "chest x-ray: normal.");
(c) ``untrained`` the towers before any training.

Measures on held-back patients (test split; the validation split is used only to choose: the ablation
table's validation columns and the recommendation below it, where a row replaces the defaults only when its
validation score beats theirs with a patient-bootstrap CI that excludes 0): covid mean zero-shot AUROC over findings
with support; Kermany zero-shot pneumonia AUROC and bacterial-vs-viral AUROC; MedPix image->caption
R@10 at case level (vs chance), zero-shot modality AUROC, body-region and plane accuracy (vs chance);
linear probes on the image encoder's features before the projection, as CLIP's probes (covid COVID-19, Kermany
pneumonia, MedPix body region). Headline rows
run ``--seeds`` seeds (mean and spread); differences come with paired patient-bootstrap 95% CIs of the
seed-averaged statistic. The ablation table flips one training option at a time (seed 0).

Usage: python benchmarks/quality.py [--quick] [--seeds 3] [--ablations all|none|name,...] [--workdir DIR]
``--quick`` (development): fewer images and steps, one seed, no ablations unless named.
``--step-speed ROUNDS``: after the ablations, the training step's images/s of the defaults and of each ablation
row, timed back to back on the same real batches (rows interleaved, so the ratios hold on a shared machine), beside
each training run's own rate: what a cheaper option (e.g. a partly locked text tower) buys, e.g.
``--arms medclip --seeds 1 --ablations lit_text2,lit_text3,lock_text --step-speed 3``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import itertools
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SALT = "medclip-quality-benchmark"
FRACTIONS = (0.6, 0.1, 0.3)
#: covid findings scored by zero-shot AUROC: the dataset's labels, then labeler findings frequent in the notes.
DATASET_FINDINGS = ("covid19_pneumonia", "pneumonia", "no_finding")
LABELER_FINDINGS = (
    "lung_opacity",
    "consolidation",
    "ground_glass_opacity",
    "interstitial_pattern",
    "support_devices",
    "pleural_effusion",
)
#: A finding enters the covid mean AUROC only with this many positives and negatives among the images.
MIN_SUPPORT = 10
#: Caption a plain CLIP user gives label-only rows (the medclip arm builds its text from the labels instead).
PLAIN_CAPTION = {1.0: "chest x-ray: pneumonia.", 0.0: "chest x-ray: normal."}

#: Ablations: name -> (what it tests, config overrides). Each row trains the defaults with these keys changed;
#: a row equal to the defaults is shown as "= defaults" and not retrained.
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "unlocked": ("LiT off: whole image tower trains", {"model.lock_image": False}),
    "lit": ("LiT: image tower locked", {"model.lock_image": True}),
    "lit_partial": (
        "partial LiT: last block + norms train",
        {"model.lock_image": True, "model.lock_image_unlocked_groups": 1, "model.lock_image_norms_trainable": True},
    ),
    "lock_text": ("text tower locked too", {"model.lock_image": True, "model.lock_text": True}),
    "lit_text2": (
        "LiT + text tower locked except its last 2 layers (the quick start's recipe)",
        {"model.lock_image": True, "model.lock_text": True, "model.lock_text_unlocked_layers": 2},
    ),
    "lit_text3": (
        "LiT + text tower's lower half locked (its last 3 of 6 layers train)",
        {"model.lock_image": True, "model.lock_text": True, "model.lock_text_unlocked_layers": 3},
    ),
    "lit_text6": (
        "LiT + the text tower's embeddings locked, all 6 of its layers train",
        {"model.lock_image": True, "model.lock_text": True, "model.lock_text_unlocked_layers": 6},
    ),
    "augment": ("image augmentation on", {"data.image_augmentation.enabled": True}),
    "no_label_text": (
        "label-to-text off (the label-only Kermany set cannot be used)",
        {"data.label_text.enabled": False},
    ),
    "label_text_mix": ("label text for half the rows with a report", {"data.label_text.mix_prob": 0.5}),
    "no_label_text_mix": ("label text only for rows without a report (mix_prob 0)", {"data.label_text.mix_prob": 0.0}),
    "proj_lr_1x": ("the image projection at the base lr (no 10x)", {"optim.tower_lr": {"visual.proj": 1e-4}}),
    "no_exam_line": (
        "no exam line (modality / plane / region header) before the text",
        {"data.label_text.exam_prob": 0.0},
    ),
    "exam_line_always": ("exam line before every text that has attributes", {"data.label_text.exam_prob": 1.0}),
    "sub_captions": ("DreamLIP sub-caption positives", {"loss.name": "multi_positive", "loss.sub_captions": True}),
    "concept_balance": ("MetaCLIP-style concept caps (25%)", {"data.concept_balance.enabled": True}),
    "text_pretrain": (
        "KAD-style text pre-stage, 100 steps (IU reports + MedPix captions)",
        {"text_pretrain.enabled": True, "text_pretrain.steps": 100},
    ),
    "infonce": ("plain InfoNCE instead of the label-aware loss", {"loss.name": "infonce"}),
    "no_feature_cache": ("feature cache off (same result, slower)", {"data.feature_cache": False}),
}


#: The suite's ablation rows: one per training option of issue 10 (the rest run when named, e.g. ``--ablations all``).
DEFAULT_ABLATIONS = (
    "unlocked",
    "lit_partial",
    "lock_text",
    "augment",
    "no_label_text",
    "no_label_text_mix",
    "no_exam_line",
    "sub_captions",
    "concept_balance",
    "text_pretrain",
)


# ---------------------------------------------------------------------- data
def shared_data() -> Path:
    root = Path(os.environ.get("MEDCLIP_SHARED") or REPO.parent / "shared") / "data"
    missing = [n for n in ("covid_cxr", "kermany_pneumonia", "medpix") if not (root / n).is_dir()]
    if missing:
        sys.exit(f"{missing} not found under {root} (set MEDCLIP_SHARED to the folder holding data/)")
    return root


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "datasets" / name / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@dataclass
class DataSet:
    """One benchmark set: its manifest (every split), the training manifest and how its text is made."""

    name: str
    manifest: Path
    train_manifest: Path
    text: str  # "report" | "labels"
    frame: pd.DataFrame = field(repr=False, default=None)  # type: ignore[assignment]


def _cap_patients(df: pd.DataFrame, split: str, max_images: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_images`` rows of ``split`` (whole patients, drawn with ``seed``); other splits unchanged."""
    part = df[df["split"] == split]
    if not max_images or len(part) <= max_images:
        return df
    rng = np.random.default_rng(seed)
    keep, n = [], 0
    sizes = part.groupby("patient_id").size()
    for p in rng.permutation(sizes.index.to_numpy()):
        if n >= max_images:
            break
        keep.append(p)
        n += int(sizes[p])
    return df[(df["split"] != split) | df["patient_id"].isin(keep)]


def build_sets(data: Path, workdir: Path, caps: dict[str, dict[str, int | None]]) -> dict[str, DataSet]:
    """The three sets as manifests under ``workdir`` (patient-split 60/10/30, fixed salt, capped per split)."""
    from medclip.data.manifest import manifest_from_records, write_manifest
    from medclip.knowledge import ReportLabeler

    out: dict[str, DataSet] = {}
    # covid: notes as reports; labels from `finding` plus the labeler on the notes (unmentioned -> absent)
    records = _recipe("covid_chestxray").records(data / "covid_cxr")
    labeler = ReportLabeler()
    found = [labeler.label({"findings": t}) if t.strip() else None for t in records["report_text"]]
    for cid in LABELER_FINDINGS:
        records[f"label.{cid}"] = [
            np.nan if f is None else (0.0 if math.isnan(f[cid].value) else f[cid].value) for f in found
        ]
    sets = {
        "covid": (records, data / "covid_cxr", "report"),
        "kermany": (
            _recipe("kermany_pneumonia").records(data / "kermany_pneumonia"),
            data / "kermany_pneumonia",
            "labels",
        ),
        "medpix": (_recipe("medpix").records(data / "medpix"), data / "medpix", "report"),
    }
    for name, (rec, root, text) in sets.items():
        rec = rec.drop(columns=["split"], errors="ignore")
        df, _ = manifest_from_records(rec, root, salt=SALT, fractions=FRACTIONS, seed=0)
        for split, cap in caps.get(name, {}).items():
            df = _cap_patients(df, split, cap, seed=1)
        df = df.reset_index(drop=True)
        manifest = write_manifest(df, workdir / f"{name}.parquet", root=root)
        train = df[df["split"] != "test"]
        if text == "report":
            train = train[train["report_text"].fillna("").str.strip().ne("")]
        train_manifest = write_manifest(train, workdir / f"{name}_train.parquet", root=root)
        from medclip.data.manifest import read_manifest

        out[name] = DataSet(name, manifest, train_manifest, text, read_manifest(manifest))
    return out


# ---------------------------------------------------------------------- training
def _set_dotted(config: dict, dotted: str, value: Any) -> None:
    node = config
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def _get_dotted(config: dict, dotted: str, default: Any = None) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def medclip_config(
    sets: dict[str, DataSet], out: Path, args: argparse.Namespace, seed: int, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The defaults (``DEFAULTS``) + the three sets as ``data.sources`` + the shared budget + ``overrides``."""
    weights = {"covid": 1.0, "kermany": 1.0, "medpix": 1.0}
    config: dict[str, Any] = {
        "seed": seed,
        "output_dir": str(out),
        "data": {
            "sources": [
                {"name": n, "manifest": str(s.train_manifest), "weight": weights[n], "text": _text_mode(s)}
                for n, s in sets.items()
            ],
            "val_split": None,
            "batch_size": args.batch_size,
            "num_workers": 0,
            "pin_memory": False,
            "image_size": args.image_size,
            "max_text_tokens": args.max_tokens,
            # one feature cache for every run: runs with the same locked backbone and data reuse it
            "feature_cache_dir": str(args.workdir / "feature_cache"),
        },
        "model": {"name": "offline-default", "overrides": {"vision": {"image_size": args.image_size}}},
        "optim": {"lr": args.lr, "weight_decay": args.weight_decay, "warmup_steps": args.warmup, "schedule": "cosine"},
        "trainer": {
            "max_steps": args.steps,
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "log_every_n_steps": 10,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        },
        "checkpoint": {"every_n_steps": None, "save_top_k": 0, "save_last": False},
        "loggers": [],
    }
    if args.loss:
        name, _, rest = args.loss.partition(":")
        config["loss"] = {
            "name": name,
            "kwargs": {k: float(v) for k, v in (i.split("=", 1) for i in rest.split(",") if i)},
        }
    for key, value in (overrides or {}).items():
        _set_dotted(config, key, value)
    if _get_dotted(config, "data.label_text.enabled") is False:  # label-only sets have no text: not trained on
        config["data"]["sources"] = [s for s in config["data"]["sources"] if s["text"] != "labels"]
    if _get_dotted(config, "text_pretrain.enabled") and not _get_dotted(config, "text_pretrain.corpora"):
        corpora = [str(sets["medpix"].train_manifest)]
        iu = (
            Path(os.environ.get("MEDCLIP_SHARED") or REPO.parent / "shared")
            / "data"
            / "iu_reports"
            / "indiana_reports.csv"
        )
        if iu.is_file():
            corpora.append(str(iu))
        _set_dotted(config, "text_pretrain.corpora", corpora)
    return config


def _text_mode(s: DataSet) -> str:
    """A report set trains in text mode "mixed" (label text with data.label_text.mix_prob), a label-only set on
    its label text."""
    return "mixed" if s.text == "report" else "labels"


BASE: dict[str, Any] = {}  # --base: overrides on top of DEFAULTS for the medclip arm and every ablation


def effective_defaults() -> dict[str, Any]:
    from medclip.train.config import DEFAULTS

    config = copy.deepcopy(DEFAULTS)
    for key, value in BASE.items():
        _set_dotted(config, key, value)
    return config


def differs_from_defaults(overrides: dict[str, Any]) -> bool:
    defaults = effective_defaults()
    return any(_get_dotted(defaults, k, object()) != v for k, v in overrides.items())


#: output folder of a medclip run -> images/s of its training steps (the median of its progress lines)
RUN_RATES: dict[str, float] = {}


class _RateTee(io.TextIOBase):
    """stdout as it is, and the images/s of every training progress line (``step S/N | ... | R images/s``)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.rates, self._buf = stream, [], ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            match = re.search(r"\| ([0-9.]+) images/s", line)
            if match and line.startswith("step "):
                self.rates.append(float(match.group(1)))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())


def train_medclip(
    sets: dict[str, DataSet], out: Path, args: argparse.Namespace, seed: int, overrides: dict[str, Any] | None = None
) -> Path:
    """(a) medclip's recipe through ``medclip.train.fit``; the run's step rate is kept in ``RUN_RATES``."""
    from medclip.train import fit

    tee = _RateTee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        path = Path(fit(medclip_config(sets, out, args, seed, {**BASE, **(overrides or {})})))
    if tee.rates:
        RUN_RATES[str(out)] = float(np.median(tee.rates))
    return path


def step_speed(
    sets: dict[str, DataSet], args: argparse.Namespace, names: list[str], steps: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """images/s of the training step (forward, loss, backward, gradient clipping, training's optimizer step) of the
    defaults and of each named row, back to back on the same real batches: the mixed sources' first ``steps`` + 1
    batches as training builds them (text policy, tokenisation; the locked backbone's cached features, from the suite's
    feature cache). ``rounds`` rounds with the rows interleaved (order rotated each round), so ratios between rows
    hold on a shared machine; the data loader's share is the same for every row and not timed."""
    from medclip.train.config import load_config
    from medclip.train.data import MedClipDataModule, resolve_path
    from medclip.train.features import BackboneFeatures
    from medclip.train.fit import bind_data_to_model, resolve_data_config
    from medclip.train.module import DualEncoderModule, build_optimizer  # training's optimizer (fused AdamW)

    def build(overrides: dict[str, Any]) -> tuple[dict[str, Any], DualEncoderModule]:
        cfg = load_config(medclip_config(sets, args.workdir / "step_speed", args, 0, {**BASE, **overrides}))
        torch.manual_seed(0)
        return cfg, DualEncoderModule(cfg["model"], cfg["loss"], cfg["optim"])

    cfg, module = build({})
    data_cfg = resolve_data_config(cfg)  # as medclip.train.fit prepares a run's data
    bind_data_to_model(data_cfg, module.model)
    datamodule = MedClipDataModule(
        data_cfg,
        module.model.tokenize,
        seed=0,
        feature_extractor=BackboneFeatures(module.model) if module.model.image_backbone_frozen else None,
        feature_dir=Path(resolve_path(data_cfg["feature_cache_dir"])),
    )
    batches = list(itertools.islice(iter(datamodule.train_dataloader()), steps + 1))
    modules = {"defaults": module, **{name: build(ABLATIONS[name][1])[1] for name in names}}
    clip = cfg["trainer"].get("gradient_clip_val")
    optim = cfg["optim"]
    out: dict[str, dict[str, Any]] = {}
    for name, m in modules.items():
        text = m.model.text.encoder
        out[name] = {
            "rates": [],
            "text_trainable": sum(p.numel() for p in text.parameters() if p.requires_grad),
            "text_params": sum(p.numel() for p in text.parameters()),
            "optimizer": build_optimizer(m._param_groups(), optim, str(cfg["trainer"].get("precision") or "")),
        }

    def step(m: DualEncoderModule, optimizer: torch.optim.Optimizer, batch: dict[str, Any]) -> None:
        optimizer.zero_grad(set_to_none=True)
        m._loss(batch)[0].backward()
        if clip:
            torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], float(clip))
        optimizer.step()

    order = list(modules)
    images = sum(int(b["input_ids"].shape[0]) for b in batches[1:])
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            m, optimizer = modules[name], out[name]["optimizer"]
            step(m, optimizer, batches[0])  # warm-up, not timed
            start = time.perf_counter()
            for batch in batches[1:]:
                step(m, optimizer, batch)
            out[name]["rates"].append(images / (time.perf_counter() - start))
    for row in out.values():
        del row["optimizer"]
    return out


def speed_table(speed: dict[str, dict[str, Any]], run_rates: dict[str, float | None]) -> str:
    """Rows = the defaults and the timed ablations: the text tower's trainable share, the back-to-back step
    rate (median over rounds, [min, max]) and its ratio to the defaults', and each training run's own rate."""
    head = (
        f"{'variant':18s} {'text trainable':>17s}  {'step images/s [min, max]':>26s}  {'x defaults':>10s}  "
        f"{'its run images/s':>16s}"
    )
    lines = [head, "-" * len(head)]
    base = float(np.median(speed["defaults"]["rates"]))
    for name, row in speed.items():
        rates = row["rates"]
        med = float(np.median(rates))
        run = run_rates.get(name)
        lines.append(
            f"{name:18s} {row['text_trainable'] / 1e6:5.1f}M of {row['text_params'] / 1e6:4.1f}M  "
            f"{med:8.1f} [{min(rates):6.1f}, {max(rates):6.1f}]  {med / base:10.2f}  "
            + (f"{run:16.1f}" if run else f"{'-':>16s}")
        )
    return "\n".join(lines)


class _OpenClipShaped(torch.nn.Module):
    """The DualEncoder with open_clip's call signature: ``model(images, texts)`` -> feature dict;
    ``texts`` stacks token ids and attention masks as (B, 2, L)."""

    def __init__(self, dual: torch.nn.Module) -> None:
        super().__init__()
        self.dual = dual
        self.logit_scale = dual.logit_scale  # open_clip's step clamps it in place

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.dual(images, texts[:, 0], texts[:, 1])
        return {
            "image_features": out["image_features"],
            "text_features": out["text_features"],
            "logit_scale": out["logit_scale"],
        }


def plain_texts(frame: pd.DataFrame) -> list[str]:
    """Each row's text for plain CLIP: the report (findings + impression, else the whole text), else the caption
    a plain CLIP user writes for a label-only image."""
    from medclip.data.dataset import report_text

    out = []
    for row in frame.to_dict("records"):
        text = report_text(row)
        if not text and not math.isnan(float(row.get("label.pneumonia", math.nan))):
            text = PLAIN_CAPTION[float(row["label.pneumonia"])]
        out.append(text)
    return out


def train_clip(sets: dict[str, DataSet], out: Path, args: argparse.Namespace, seed: int) -> Path:
    """(b) plain CLIP: open_clip_train's ``train_one_epoch`` + ``cosine_lr`` with open_clip's ``ClipLoss``,
    run for the same number of steps as the medclip arm over the same training rows."""
    import lightning as L
    from open_clip.loss import ClipLoss
    from open_clip_train.data import DataInfo
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch
    from torch.utils.data import ConcatDataset, DataLoader

    from medclip.data.dataset import ManifestDataset
    from medclip.data.manifest import read_manifest
    from medclip.model import create_model

    L.seed_everything(seed, workers=True)
    dual = create_model("offline-default", vision={"image_size": args.image_size})
    model = _OpenClipShaped(dual)
    parts = []
    for s in sets.values():
        frame = read_manifest(s.train_manifest)
        frame = frame[frame["split"] == "train"].reset_index(drop=True)
        frame["report_text"] = plain_texts(frame)
        frame["report_findings"], frame["report_impression"] = "", ""
        frame = frame[frame["report_text"] != ""].reset_index(drop=True)
        parts.append(ManifestDataset(frame, image_size=args.image_size, label_names=[]))
    dataset = ConcatDataset(parts)

    def collate(items):
        tok = dual.tokenize([it["text"] for it in items], max_length=args.max_tokens)
        return torch.stack([it["image"] for it in items]), torch.stack([tok["input_ids"], tok["attention_mask"]], dim=1)

    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )
    steps_per_epoch = len(loader)
    epochs = max(1, math.ceil(args.steps / steps_per_epoch))
    named = list(model.named_parameters())
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
            {
                "params": [p for n, p in named if not exclude(n, p) and p.requires_grad],
                "weight_decay": args.weight_decay,
            },
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, args.steps)
    oc_args = SimpleNamespace(
        device="cpu",
        precision="fp32",
        distill=False,
        accum_freq=1,
        skip_scheduler=False,
        grad_clip_norm=1.0,
        horovod=False,
        wandb=False,
        world_size=1,
        rank=0,
        local_rank=0,
        batch_size=args.batch_size,
        log_every_n_steps=1000,
        save_logs=False,
    )
    loss = ClipLoss()
    done = 0
    for epoch in range(epochs):
        batches = min(steps_per_epoch, args.steps - done)  # the same step budget as the medclip arm
        loader.num_batches, loader.num_samples = batches, batches * args.batch_size
        info = DataInfo(_Truncated(loader, batches))
        train_one_epoch(model, {"train": info}, loss, epoch, optimizer, None, scheduler, None, oc_args)
        done += batches
    return dual.save_pretrained(out / "model")


class _Truncated:
    """The first ``n`` batches of a DataLoader, with the attributes open_clip's loop reads."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n = loader, n
        self.num_batches, self.num_samples = n, n * loader.batch_size
        self.sampler = getattr(loader, "sampler", None)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                break
            yield batch


def untrained(args: argparse.Namespace) -> torch.nn.Module:
    """(c) the towers before any training."""
    from medclip.model import create_model

    torch.manual_seed(0)  # the projections are new (random) layers: the same ones every run
    return create_model("offline-default", vision={"image_size": args.image_size}).eval()


# ---------------------------------------------------------------------- measuring
@dataclass
class Stat:
    """One measure on one split: per-row inputs kept so paired bootstraps can resample patients."""

    value: float
    groups: np.ndarray
    fn: Callable[[np.ndarray], float]  # row indices -> statistic
    chance: float | None = None


def _auroc_stat(y: np.ndarray, score: np.ndarray, groups: np.ndarray) -> Stat:
    from medclip.eval.metrics import auroc

    known = ~np.isnan(y)
    y, score, groups = y[known], score[known], groups[known]
    fn = lambda i: auroc(y[i], score[i])  # noqa: E731
    return Stat(fn(np.arange(len(y))), groups, fn, 0.5)


def _mean_auroc_stat(y: np.ndarray, prob: np.ndarray, groups: np.ndarray, columns: list[int]) -> Stat:
    from medclip.eval.metrics import auroc

    def fn(i: np.ndarray) -> float:
        vals = []
        for j in columns:
            known = ~np.isnan(y[i, j])
            vals.append(auroc(y[i, j][known], prob[i, j][known]) if known.any() else math.nan)
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan

    return Stat(fn(np.arange(len(y))), groups, fn, 0.5)


def _recall_stat(ranks: np.ndarray, groups: np.ndarray, gallery: int, k: int = 10) -> Stat:
    fn = lambda i: float((ranks[i] <= k).mean())  # noqa: E731
    return Stat(fn(np.arange(len(ranks))), groups, fn, min(1.0, k / max(gallery, 1)))


def _accuracy_stat(correct: np.ndarray, groups: np.ndarray, chance: float) -> Stat:
    fn = lambda i: float(correct[i].mean())  # noqa: E731
    return Stat(fn(np.arange(len(correct))), groups, fn, chance)


def _balanced_stat(truth: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> Stat:
    """Mean per-class recall (chance 1 / number of classes present)."""

    def fn(i: np.ndarray) -> float:
        t, p = truth[i], pred[i]
        return float(np.mean([(p[t == c] == c).mean() for c in np.unique(t)])) if len(t) else math.nan

    return Stat(fn(np.arange(len(truth))), groups, fn, 1.0 / max(1, len(np.unique(truth))))


def _probe_stat(train_x, train_y, test_x, test_y, test_groups, seed: int) -> Stat:
    """Logistic regression on L2-normalised image features (C from a small grid, chosen by training-fold CV)."""
    from sklearn.linear_model import LogisticRegressionCV

    from medclip.eval.metrics import auroc

    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)  # noqa: E731
    classes = np.unique(train_y)
    if len(classes) < 2:
        return Stat(math.nan, test_groups, lambda i: math.nan)
    clf = LogisticRegressionCV(Cs=[0.1, 1.0, 10.0], cv=3, max_iter=2000, random_state=seed)
    clf.fit(norm(train_x), train_y)
    prob = clf.predict_proba(norm(test_x))
    present = [k for k, c in enumerate(clf.classes_) if (test_y == c).any() and (test_y != c).any()]

    def fn(i: np.ndarray) -> float:
        vals = [auroc((test_y[i] == clf.classes_[k]).astype(float), prob[i, k]) for k in present]
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan

    return Stat(fn(np.arange(len(test_y))), test_groups, fn, 0.5)


class FeatureBank:
    """Image embeddings per (set, split), with the backbone's pooled features computed once per backbone.

    Models whose vision backbone is bit-identical (the untrained towers and every LiT-locked run share one)
    reuse the pooled features and only run their own projection, so evaluating a locked model costs no
    image encoding. Any other backbone (plain CLIP, unlocked runs) is encoded in full, once.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.pooled: dict[str, torch.Tensor] = {}
        self.folder = folder  # pooled features persist here between runs of the suite (same key = same input)

    @torch.no_grad()
    def embed(self, model: torch.nn.Module, s: DataSet, split: str, frame: pd.DataFrame) -> torch.Tensor:
        """The model's normalised image embeddings of ``frame`` (its projection over the pooled features)."""
        pooled = self.pooled_features(model, s, split, frame)
        proj = model.visual.proj
        return torch.nn.functional.normalize(proj(pooled.to(next(proj.parameters()).dtype)).float(), dim=-1)

    @torch.no_grad()
    def pooled_features(self, model: torch.nn.Module, s: DataSet, split: str, frame: pd.DataFrame) -> torch.Tensor:
        """The vision backbone's pooled features of ``frame`` (before the projection), computed once per backbone."""
        import hashlib

        from medclip.data.dataset import ManifestDataset
        from medclip.inference.encoders import model_image_size
        from medclip.train.features import model_fingerprint

        size = model_image_size(model)
        size = int(max(size) if isinstance(size, tuple) else size)
        rows = hashlib.sha256("\n".join(frame["image_id"].astype(str)).encode()).hexdigest()[:12]
        key = f"{model_fingerprint(model)[:16]}_{s.name}_{split}_{size}px_{rows}"
        path = self.folder / f"{key}.pt" if self.folder is not None else None
        if key not in self.pooled and path is not None and path.is_file():
            self.pooled[key] = torch.load(path)
        if key not in self.pooled:
            dataset = ManifestDataset(frame, image_size=size, label_names=[])
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=64,
                shuffle=False,
                collate_fn=lambda items: torch.stack([it["image"] for it in items]),
            )
            self.pooled[key] = torch.cat([model.visual.features(b).float() for b in loader])
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(self.pooled[key], path)
        return self.pooled[key]


def embedded(model: torch.nn.Module, s: DataSet, split: str, bank: FeatureBank):
    """A set's split with its image embeddings and report texts (the eval runner's EmbeddedSplit)."""
    from medclip.data.dataset import report_text
    from medclip.eval.runner import EmbeddedSplit

    frame = s.frame[s.frame["split"] == split].reset_index(drop=True)
    return EmbeddedSplit(frame, bank.embed(model, s, split, frame), [report_text(r) for r in frame.to_dict("records")])


def _ranks(model: torch.nn.Module, part) -> tuple[np.ndarray, np.ndarray, int]:
    """Image->text ranks at study (case) level over the split's unique (study, text) pairs."""
    from medclip.eval.retrieval import retrieval_ranks
    from medclip.inference.encoders import embed_texts

    has_text = np.array([bool(t) for t in part.texts])
    pairs = list(dict.fromkeys((s, t) for s, t, h in zip(part.studies, part.texts, has_text) if h))
    feats = embed_texts(model, [t for _, t in pairs])
    ranks = retrieval_ranks(
        part.image_features[torch.from_numpy(has_text)], feats, part.studies[has_text], [s for s, _ in pairs]
    )
    return ranks, part.patients[has_text], len(pairs)


def measure(
    model: torch.nn.Module,
    sets: dict[str, DataSet],
    split: str,
    args: argparse.Namespace,
    bank: FeatureBank,
    probes: bool = True,
) -> dict[str, Stat]:
    """Every measure of one model on one split ("val" or "test"). Texts are cut at ``--max-tokens`` as in training."""
    from medclip.eval.attributes import AttributeClassifier
    from medclip.inference.zeroshot import ZeroShotClassifier
    from medclip.knowledge.attributes import ATTRIBUTES, attribute_graph

    model.eval()
    model.config.text.context_length = args.max_tokens
    graph = attribute_graph()
    out: dict[str, Stat] = {}

    # covid: mean zero-shot AUROC over findings with support (decided on the test labels, the same columns for
    # every split and model); image->report R@10
    part = embedded(model, sets["covid"], split, bank)
    findings = list(DATASET_FINDINGS + LABELER_FINDINGS)
    y = part.labels(findings)
    prob = ZeroShotClassifier.from_model(model, findings).predict_proba(part.image_features)
    supported = covid_findings_with_support(sets)
    columns = [j for j, cid in enumerate(findings) if cid in supported]
    out["covid zero-shot mean AUROC"] = _mean_auroc_stat(y, prob, part.patients, columns)
    ranks, groups, gallery = _ranks(model, part)
    out["covid image->report R@10"] = _recall_stat(ranks, groups, gallery)

    # kermany: zero-shot pneumonia; bacterial vs viral among pneumonia
    part = embedded(model, sets["kermany"], split, bank)
    p = ZeroShotClassifier.from_model(model, ["pneumonia"]).predict_proba(part.image_features)[:, 0]
    out["kermany zero-shot pneumonia AUROC"] = _auroc_stat(part.labels(["pneumonia"])[:, 0], p, part.patients)
    sub = part.frame["subtype"].to_numpy()
    pneu = np.isin(sub, ("bacterial", "viral"))
    clf = AttributeClassifier.from_model(model, "pneumonia_subtype", graph)
    prob_sub = clf.predict_proba(part.image_features[torch.from_numpy(pneu)])
    out["kermany bacterial-vs-viral AUROC"] = _auroc_stat(
        (sub[pneu] == "bacterial").astype(float),
        prob_sub[:, clf.classes.index("bacterial_pneumonia")],
        part.patients[pneu],
    )

    # medpix: image->caption R@10 at case level; modality AUROC; body region and plane accuracy
    part = embedded(model, sets["medpix"], split, bank)
    ranks, groups, gallery = _ranks(model, part)
    out["medpix image->caption R@10"] = _recall_stat(ranks, groups, gallery)
    clf = AttributeClassifier.from_model(model, "imaging_modality", graph)
    pm = clf.predict_proba(part.image_features)[:, clf.classes.index("magnetic_resonance_imaging")]
    out["medpix zero-shot modality AUROC"] = _auroc_stat(
        (part.frame["modality"] == "MR").to_numpy(float), pm, part.patients
    )
    for attr in ("body_region", "plane"):
        spec = ATTRIBUTES[attr]
        truth = spec.classes_of(part.frame[spec.column])
        clf = AttributeClassifier.from_model(model, spec.task, graph)
        known = np.isin(truth, clf.classes)
        pred = np.array(clf.classes, dtype=object)[
            clf.predict_proba(part.image_features[torch.from_numpy(known)]).argmax(1)
        ]
        chance = float(pd.Series(truth[known]).value_counts(normalize=True).max())
        out[f"medpix {attr.replace('_', ' ')} accuracy"] = _accuracy_stat(
            (pred == truth[known]).astype(float), part.patients[known], chance
        )
        out[f"medpix {attr.replace('_', ' ')} balanced accuracy"] = _balanced_stat(
            truth[known], pred, part.patients[known]
        )

    if probes:  # linear probes on the image encoder's features (before the projection, as CLIP's probes):
        # training split -> this split
        for name, label, col in (
            ("covid", "COVID-19", "label.covid19_pneumonia"),
            ("kermany", "pneumonia", "label.pneumonia"),
            ("medpix", "body region", "body_region"),
        ):
            out[f"{name} linear probe AUROC ({label})"] = _encoder_probe(
                model, sets[name], bank, split, lambda f, col=col: np.array([str(v) for v in f[col]])
            )
    return out


def covid_findings_with_support(sets: dict[str, DataSet]) -> list[str]:
    """The covid findings scored by the zero-shot mean: at least MIN_SUPPORT positives and negatives among the
    test images (decided on the test labels, the same findings for every split and model)."""
    test = sets["covid"].frame[sets["covid"].frame["split"] == "test"]
    out = []
    for cid in DATASET_FINDINGS + LABELER_FINDINGS:
        v = pd.to_numeric(test.get(f"label.{cid}"), errors="coerce")
        if MIN_SUPPORT <= (v == 1).sum() and MIN_SUPPORT <= (v == 0).sum():
            out.append(cid)
    return out


#: Class values a linear probe leaves out (unknown).
_UNKNOWN = ("", "nan", "None", "<NA>")


def _encoder_probe(
    model: torch.nn.Module, s: DataSet, bank: FeatureBank, split: str, classes: Callable[[pd.DataFrame], np.ndarray]
) -> Stat:
    """A linear probe on the image encoder's features of ``s``'s training split, scored on ``split``;
    ``classes(frame)`` gives each row's class as a string (one of ``_UNKNOWN`` = left out)."""
    frames = {sp: s.frame[s.frame["split"] == sp].reset_index(drop=True) for sp in ("train", split)}
    x = {sp: bank.pooled_features(model, s, sp, f).numpy() for sp, f in frames.items()}
    y = {sp: classes(f) for sp, f in frames.items()}
    ok = {sp: ~np.isin(v, _UNKNOWN) for sp, v in y.items()}
    return _probe_stat(
        x["train"][ok["train"]],
        y["train"][ok["train"]],
        x[split][ok[split]],
        y[split][ok[split]],
        frames[split]["patient_id"].astype(str).to_numpy()[ok[split]],
        seed=0,
    )


def _binary_classes(column: str) -> Callable[[pd.DataFrame], np.ndarray]:
    """Rows' 0 / 1 label in ``column`` as "0" / "1"; anything else (unmentioned, uncertain) as ""."""

    def classes(frame: pd.DataFrame) -> np.ndarray:
        v = pd.to_numeric(frame.get(column), errors="coerce").to_numpy(float)
        return np.where(v == 1, "1", np.where(v == 0, "0", ""))

    return classes


def covid_probe_ceiling(model: torch.nn.Module, sets: dict[str, DataSet], bank: FeatureBank) -> str:
    """What the image encoder's features hold about the covid findings: per finding, a supervised linear probe
    (training patients' labels) on the untrained encoder's features, scored on the test patients, and their mean
    over the same findings as the zero-shot row. A locked (LiT) encoder cannot do better zero-shot than this."""
    rows, stats = [], []
    for cid in covid_findings_with_support(sets):
        stat = _encoder_probe(model, sets["covid"], bank, "test", _binary_classes(f"label.{cid}"))
        stats.append(stat.value)
        rows.append(f"{cid} {stat.value:.3f}")
    return (
        "\nCeiling: supervised linear probes on the untrained encoder's covid features (training patients' labels, "
        f"test patients), per finding: {', '.join(rows)}; mean {np.nanmean(stats):.3f}"
    )


def paired_bootstrap(runs_a: list[Stat], runs_b: list[Stat], n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """Difference of the seed-averaged statistic (a - b) with a 95% CI, resampling patients (the same resample
    for every run of both arms: all runs score the same rows)."""
    groups = runs_a[0].groups
    uniq, codes = np.unique(groups.astype(str), return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    mean = lambda runs, idx: float(np.nanmean([r.fn(idx) for r in runs]))  # noqa: E731
    full = np.arange(len(groups))
    point = mean(runs_a, full) - mean(runs_b, full)
    diffs = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        d = mean(runs_a, idx) - mean(runs_b, idx)
        if not math.isnan(d):
            diffs.append(d)
    lo, hi = np.quantile(diffs, [0.025, 0.975]) if len(diffs) >= 20 else (math.nan, math.nan)
    return point, float(lo), float(hi)


def single_ci(run: Stat, n_boot: int, seed: int = 0) -> tuple[float, float]:
    from medclip.eval.metrics import bootstrap_ci

    rows = np.arange(len(run.groups), dtype=float)
    est = bootstrap_ci(lambda y, s: run.fn(y.astype(int)), rows, rows, groups=run.groups, n_boot=n_boot, seed=seed)
    return est.low, est.high


# ---------------------------------------------------------------------- tables
#: Headline targets (issue 10): measure -> (description, check(medclip mean, clip mean, untrained)).
TARGETS: dict[str, tuple[str, Callable[[float, float, float], bool]]] = {
    "kermany zero-shot pneumonia AUROC": (">= 0.90", lambda m, c, u: m >= 0.90),
    "covid zero-shot mean AUROC": (">= 0.65 and >= CLIP + 0.05", lambda m, c, u: m >= 0.65 and m >= c + 0.05),
    "medpix image->caption R@10": (">= 2x chance and > CLIP", None),  # type: ignore[dict-item]
    "medpix zero-shot modality AUROC": (">= 0.95", lambda m, c, u: m >= 0.95),
}


def _mean_sd(values: list[float]) -> str:
    v = np.array([x for x in values if not math.isnan(x)])
    if not v.size:
        return "n/a"
    return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if v.size > 1 else "")


def headline_table(results: dict[str, list[dict[str, Stat]]], n_boot: int) -> str:
    """Rows = measures; columns = medclip (mean ± sd over seeds), CLIP, untrained, paired differences."""
    med, clip, raw = results["medclip"], results["clip"], results["untrained"]
    lines = [
        f"{'measure (test patients)':44s} {'chance':>6s}  {'medclip':>15s}  {'plain CLIP':>15s}  {'untrained':>9s}  "
        f"{'medclip - CLIP [95% CI]':>26s}  {'medclip - untrained [95% CI]':>28s}  target"
    ]
    lines.append("-" * len(lines[0]))
    for key in med[0]:
        a, b, u = [r[key] for r in med], [r[key] for r in clip], [raw[0][key]]
        d_clip = paired_bootstrap(a, b, n_boot)
        d_raw = paired_bootstrap(a, u, n_boot)
        m, c, un = (float(np.nanmean([r.value for r in x])) for x in (a, b, u))
        target, verdict = "", ""
        if key in TARGETS:
            target = TARGETS[key][0]
            check = TARGETS[key][1] or (lambda m, c, u, a=a: m >= 2 * (a[0].chance or 0) and m > c)
            verdict = " met" if check(m, c, un) else " NOT met"
        chance = f"{a[0].chance:.3f}" if a[0].chance is not None else "-"
        lines.append(
            f"{key:44s} {chance:>6s}  {_mean_sd([r.value for r in a]):>15s}  {_mean_sd([r.value for r in b]):>15s}  "
            f"{un:9.3f}  {d_clip[0]:+.3f} [{d_clip[1]:+.3f}, {d_clip[2]:+.3f}]  "
            f"{d_raw[0]:+.3f} [{d_raw[1]:+.3f}, {d_raw[2]:+.3f}]    {target}{verdict}"
        )
    return "\n".join(lines)


def ablation_table(rows: dict[str, dict[str, dict[str, Stat]]], keys: list[str], n_boot: int = 1000) -> str:
    """Rows = ablations (seed 0), columns = validation then test values of the key measures, the validation score
    and its difference from the defaults' with a patient-bootstrap 95% CI."""
    short = {k: k.split(" ")[0][:3] + ":" + "".join(w[0] for w in k.split(" ")[1:]) for k in keys}
    head = (
        f"{'variant':18s} "
        + " ".join(f"{'val ' + short[k]:>10s}" for k in keys)
        + "  "
        + " ".join(f"{'test ' + short[k]:>11s}" for k in keys)
        + f"  {'val score':>9s}  {'- defaults [95% CI]':>26s}"
    )
    lines = [head, "-" * len(head)]
    for name, res in rows.items():
        val, test = res["val"], res["test"]
        lines.append(
            f"{name:18s} "
            + " ".join(f"{val[k].value:10.3f}" for k in keys)
            + "  "
            + " ".join(f"{test[k].value:11.3f}" for k in keys)
            + f"  {val_score(val, keys):9.3f}  "
            + (
                "{:+.3f} [{:+.3f}, {:+.3f}]".format(*val_score_difference(val, rows["defaults"]["val"], keys, n_boot))
                if name != "defaults"
                else ""
            )
        )
    lines.append("columns: " + "; ".join(f"{v} = {k}" for k, v in short.items()))
    return "\n".join(lines)


def val_score_difference(
    a: dict[str, Stat], b: dict[str, Stat], keys: list[str], n_boot: int, seed: int = 0
) -> tuple[float, float, float]:
    """``val_score(a) - val_score(b)`` with a 95% CI: each set's patients are resampled (one draw per set, used by
    every measure of that set and by both variants), so the CI says whether a difference is more than chance."""
    rng = np.random.default_rng(seed)
    sets = sorted({k.split(" ")[0] for k in keys})
    patients = {
        name: np.unique(np.concatenate([a[k].groups.astype(str) for k in keys if k.startswith(name)])) for name in sets
    }
    rows = {}  # measure -> {patient: its row indices}
    for k in keys:
        groups = a[k].groups.astype(str)
        order = np.argsort(groups, kind="stable")
        uniq, start = np.unique(groups[order], return_index=True)
        rows[k] = dict(zip(uniq, np.split(order, start[1:])))

    def score(stats: dict[str, Stat], index: dict[str, np.ndarray]) -> float:
        vals = []
        for k in keys:
            chance = stats[k].chance or 0.0
            v = stats[k].fn(index[k])
            if not math.isnan(v):
                vals.append((v - chance) / max(1e-9, 1.0 - chance))
        return float(np.mean(vals)) if vals else math.nan

    full = {k: np.arange(len(a[k].groups)) for k in keys}
    point = score(a, full) - score(b, full)
    empty = np.array([], dtype=int)
    diffs = []
    for _ in range(n_boot):
        drawn = {name: rng.choice(p, size=len(p), replace=True) for name, p in patients.items()}
        index = {k: np.concatenate([rows[k].get(p, empty) for p in drawn[k.split(" ")[0]]] or [empty]) for k in keys}
        d = score(a, index) - score(b, index)
        if not math.isnan(d):
            diffs.append(d)
    lo, hi = np.quantile(diffs, [0.025, 0.975]) if len(diffs) >= 20 else (math.nan, math.nan)
    return point, float(lo), float(hi)


def val_score(stats: dict[str, Stat], keys: list[str]) -> float:
    """The validation score that picks defaults: the mean over the key measures of (value - chance) / (1 - chance)."""
    vals = []
    for k in keys:
        s = stats[k]
        chance = s.chance or 0.0
        if not math.isnan(s.value):
            vals.append((s.value - chance) / max(1e-9, 1.0 - chance))
    return float(np.mean(vals)) if vals else math.nan


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="development mode: fewer images and steps, one seed")
    ap.add_argument("--seeds", type=int, default=None, help="seeds of the headline rows (default 3; --quick 1)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 100; --quick 60)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=None, help="image size in px (default 128)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument(
        "--ablations",
        default=None,
        help="default | all | none | comma-separated names of "
        + ", ".join(ABLATIONS)
        + " (default: default = "
        + ",".join(DEFAULT_ABLATIONS)
        + "; --quick none)",
    )
    ap.add_argument("--arms", default="medclip,clip,untrained", help="headline arms to run")
    ap.add_argument(
        "--step-speed",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="after the ablations, time the training step of the defaults and each ablation row back to back on "
        "the same real batches, ROUNDS rounds interleaved (0: off); each run's own images/s is shown beside it",
    )
    ap.add_argument("--step-speed-steps", type=int, default=10, help="timed steps per row and round (--step-speed)")
    ap.add_argument("--loss", default=None, help="medclip side: NAME or NAME:key=value,... instead of the default loss")
    ap.add_argument("--workdir", type=Path, default=Path("runs/quality_benchmark"))
    ap.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training option on top of the defaults for the medclip arm and every ablation (repeat), "
        "e.g. model.lock_image=true: ablations then flip options from that recipe",
    )
    args = ap.parse_args(argv)
    from medclip.train.config import parse_override

    BASE.clear()
    BASE.update({".".join(k): v for k, v in map(parse_override, args.base)})
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.steps = args.steps or (60 if args.quick else 100)
    args.image_size = args.image_size or 128
    if args.ablations is None:
        args.ablations = "none" if args.quick else "default"
    names = {"all": list(ABLATIONS), "none": [], "default": list(DEFAULT_ABLATIONS)}.get(
        args.ablations, args.ablations.split(",")
    )
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        ap.error(f"unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}")
    args.ablation_names = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import warnings

    from medclip.logging_setup import setup_logging

    setup_logging(0)  # Lightning's INFO once, no adverts (as `medclip fit` prints)
    warnings.filterwarnings("ignore", category=FutureWarning)  # scikit-learn's LogisticRegressionCV notices
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.time()
    times: dict[str, float] = {}
    data = shared_data()
    args.workdir.mkdir(parents=True, exist_ok=True)
    caps = (
        {"kermany": {"train": 500, "val": 150, "test": 300}, "medpix": {"train": 400, "test": 300}}
        if args.quick
        else {"kermany": {"train": 1500, "val": 300, "test": 800}}
    )
    t = time.time()
    sets = build_sets(data, args.workdir, caps)
    times["data"] = time.time() - t
    for s in sets.values():
        f = s.frame
        print(
            f"{s.name:8s} {len(f):5d} images, {f['patient_id'].nunique():4d} patients; "
            + ", ".join(f"{k} {int((f['split'] == k).sum())}" for k in ("train", "val", "test"))
            + f"; text: {s.text}"
        )
    if BASE:
        print(f"medclip arm and ablations: the defaults + {BASE}")
    print(
        f"budget per run (every arm): {args.steps} steps x batch {args.batch_size}, {args.image_size} px, lr {args.lr} "
        f"cosine, warmup {args.warmup}; seeds {args.seeds}; machine: {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at start (shared machine)"
    )

    arms = args.arms.split(",")
    bank = FeatureBank(args.workdir / "feature_bank")
    results: dict[str, list[dict[str, Stat]]] = {a: [] for a in arms}
    val_results: dict[str, dict[str, Stat]] = {}
    for arm in arms:
        for seed in range(1 if arm == "untrained" else args.seeds):
            t = time.time()
            out = args.workdir / f"{arm}_seed{seed}"
            if arm == "medclip":
                from medclip.model import DualEncoder

                model = DualEncoder.from_pretrained(train_medclip(sets, out, args, seed)).eval()
            elif arm == "clip":
                from medclip.model import DualEncoder

                model = DualEncoder.from_pretrained(train_clip(sets, out, args, seed)).eval()
            else:
                model = untrained(args)
            times[f"train {arm} seed {seed}"] = time.time() - t
            t = time.time()
            results[arm].append(measure(model, sets, "test", args, bank))
            if seed == 0:
                val_results[arm] = measure(model, sets, "val", args, bank, probes=False)
            times[f"eval {arm} seed {seed}"] = time.time() - t
            print(
                f"  {arm} seed {seed}: " + ", ".join(f"{k} {v.value:.3f}" for k, v in results[arm][-1].items()),
                flush=True,
            )

    if {"medclip", "clip", "untrained"} <= set(results):
        print(
            f"\nHeadline: {args.seeds} seed(s) per trained arm (mean ± sd); differences: paired patient bootstrap of "
            f"the seed-averaged statistic, {args.bootstrap} resamples"
        )
        print(headline_table(results, args.bootstrap))
    if "untrained" in arms:
        print(covid_probe_ceiling(untrained(args), sets, bank))

    keys = [
        "covid zero-shot mean AUROC",
        "kermany zero-shot pneumonia AUROC",
        "medpix image->caption R@10",
        "medpix zero-shot modality AUROC",
        "medpix body region accuracy",
    ]
    if args.ablation_names and "medclip" in results:
        rows: dict[str, dict[str, dict[str, Stat]]] = {
            "defaults": {"val": val_results["medclip"], "test": results["medclip"][0]}
        }
        for name in args.ablation_names:
            what, overrides = ABLATIONS[name]
            if not differs_from_defaults(overrides):
                print(f"  ablation {name}: equals the defaults, not retrained")
                continue
            t = time.time()
            try:
                from medclip.model import DualEncoder

                model = DualEncoder.from_pretrained(
                    train_medclip(sets, args.workdir / f"ablation_{name}", args, 0, overrides)
                ).eval()
            except Exception as exc:  # an option not built yet: say so, keep the table
                print(f"  ablation {name} ({what}): not run: {str(exc).splitlines()[0][:160]}")
                continue
            rows[name] = {
                "val": measure(model, sets, "val", args, bank, probes=False),
                "test": measure(model, sets, "test", args, bank, probes=False),
            }
            times[f"ablation {name}"] = time.time() - t
            print(
                f"  ablation {name}: val score {val_score(rows[name]['val'], keys):.3f} ({(time.time() - t) / 60:.1f} min)",
                flush=True,
            )
        print(
            "\nAblations (seed 0; one option changed from the defaults each; val = validation patients, "
            "test = held-back patients; val score = mean over the columns of (value - chance) / (1 - chance))"
        )
        print(ablation_table(rows, keys, args.bootstrap))
        best = max(rows, key=lambda n: val_score(rows[n]["val"], keys))
        if best == "defaults":
            print(f"validation picks: the defaults (val score {val_score(rows['defaults']['val'], keys):.3f})")
        else:
            d, lo, hi = val_score_difference(rows[best]["val"], rows["defaults"]["val"], keys, args.bootstrap)
            verdict = (
                "its CI excludes 0: it should become the default"
                if lo > 0
                else "its CI includes 0 (a chance difference on these validation patients): the defaults stay"
            )
            print(f"validation picks: {best}, val score {d:+.3f} [{lo:+.3f}, {hi:+.3f}] over the defaults; {verdict}")
        for name in rows:
            if name != "defaults":
                print(f"  {name}: {ABLATIONS[name][0]}: {ABLATIONS[name][1]}")
        if args.step_speed:
            t = time.time()
            timed = [n for n in rows if n != "defaults"]
            speed = step_speed(sets, args, timed, args.step_speed_steps, args.step_speed)
            times["step speed"] = time.time() - t
            run_rates = {"defaults": RUN_RATES.get(str(args.workdir / "medclip_seed0"))}
            run_rates.update({n: RUN_RATES.get(str(args.workdir / f"ablation_{n}")) for n in timed})
            print(
                f"\nTraining step speed (batch {args.batch_size}, the locked image tower's cached features, real "
                f"texts of the mixed sources; {args.step_speed} rounds x {args.step_speed_steps} steps per row, rows "
                f"interleaved; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: absolute rates "
                "move with the machine's load, the ratios are the measure; 'its run': the median of that training "
                "run's own progress lines, runs one after another)"
            )
            print(speed_table(speed, run_rates))
    if val_results:
        print(
            "\nValidation patients (seed 0): "
            + "; ".join(f"{arm} val score {val_score(v, keys):.3f}" for arm, v in val_results.items())
        )

    print(
        "\nWall time (min): "
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in times.items())
        + f"; total {(time.time() - t0) / 60:.1f} (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
