"""Text-tower pre-stage (KAD-style): contrastive training between reports and their knowledge-graph label text.

KAD (Zhang et al., Nature Communications 2023) first teaches the text encoder medical knowledge, then
trains images against it. Here the knowledge comes from the project's own graph: each report of a text
corpus (IU X-ray reports, MedPix captions, the training manifest's reports) is labelled by the
rule-based :class:`medclip.knowledge.ReportLabeler`, and its labels are written back as short sentences
(:meth:`ReportAugmenter.labels_to_text`). A symmetric InfoNCE loss pulls each report towards its own
label text and away from the others' in the batch, so reports that state the same findings in other
words land near each other before any image is seen. Only text-tower parameters are updated (the
temperature is the model's, held fixed); reports with no finding the labeler recognises are skipped.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

#: CSV columns read as report text, in order of preference (findings + impression are joined).
CSV_TEXT_COLUMNS = ("report_text", "report", "text", "caption", "findings", "impression")


def corpus_texts(path: str | Path) -> list[str]:
    """Report texts of a manifest (``.parquet``: the train split when it has one) or a CSV (a column from
    :data:`CSV_TEXT_COLUMNS`, or findings + impression)."""
    import pandas as pd

    from medclip.data.dataset import report_text

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: text corpus not found")
    if path.suffix == ".parquet":
        from medclip.data.manifest import read_manifest

        df = read_manifest(path)
        if "split" in df and (df["split"] == "train").any():
            df = df[df["split"] == "train"]  # held-out reports stay held out
        texts = [report_text(row) for row in df.to_dict("records")]
    elif path.suffix == ".csv":
        df = pd.read_csv(path)
        lower = {c.lower(): c for c in df.columns}
        if "findings" in lower and "impression" in lower:
            texts = [
                " ".join(str(v) for v in (f, i) if isinstance(v, str) and v.strip())
                for f, i in zip(df[lower["findings"]], df[lower["impression"]])
            ]
        else:
            column = next((lower[c] for c in CSV_TEXT_COLUMNS if c in lower), None)
            if column is None:
                raise ValueError(f"{path}: no report text column (one of {', '.join(CSV_TEXT_COLUMNS)})")
            texts = [str(v) for v in df[column] if isinstance(v, str)]
    else:
        raise ValueError(f"{path}: a text corpus is a manifest (.parquet) or a .csv file")
    return [t.strip() for t in texts if t and t.strip()]


def labelled_reports(texts: Sequence[str], labeler: Any = None) -> list[tuple[str, dict[str, float]]]:
    """``(report, {finding: 1 / 0 / -1})`` for each report in which the labeler finds at least one finding
    (the inferred "no finding" alone does not count)."""
    from medclip.knowledge import ReportLabeler
    from medclip.knowledge.labeler import NO_FINDING

    labeler = labeler or ReportLabeler()
    out = []
    for text in texts:
        values = {cid: m.value for cid, m in labeler.label(text).items()}
        known = {cid: float(v) for cid, v in values.items() if not math.isnan(v)}
        if any(cid != NO_FINDING for cid in known):
            out.append((text, known))
    return out


def _text_params(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.text.parameters() if p.requires_grad]


def pair_loss(
    model: Any, reports: list[str], label_texts: list[str], scale: float, max_length: int | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE between reports and their label texts (row i's positive is column i)."""
    a = model.tokenize(reports, max_length=max_length)
    b = model.tokenize(label_texts, max_length=max_length)
    device = next(model.text.parameters()).device
    za = model.encode_text(a["input_ids"].to(device), a["attention_mask"].to(device))
    zb = model.encode_text(b["input_ids"].to(device), b["attention_mask"].to(device))
    logits = scale * za @ zb.t()
    target = torch.arange(len(reports), device=device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def text_pretrain(
    model: Any,
    corpus: Sequence[tuple[str, dict[str, float]]],
    *,
    steps: int,
    lr: float,
    batch_size: int = 32,
    seed: int = 0,
    max_length: int | None = None,
    device: torch.device | str | None = None,
    augmenter: Any = None,
) -> list[float]:
    """Train ``model``'s text tower for ``steps`` on (report, labels) pairs; returns the loss of each step.

    Label texts are rewritten at every step (varied templates and synonyms); batches are a seeded sample.
    Parameters outside the text tower and the temperature are not touched.
    """
    if len(corpus) < 2:
        raise ValueError(f"text pre-stage needs at least 2 labelled reports, got {len(corpus)}")
    if augmenter is None:
        from medclip.knowledge import Graph, ReportAugmenter

        augmenter = ReportAugmenter(Graph.load())
    params = _text_params(model)
    if not params:
        raise ValueError("text pre-stage: the text tower has no trainable parameters (model.lock_text?)")
    rng = random.Random(seed)
    home = next(model.text.parameters()).device
    target = torch.device(device) if device is not None else home
    model.text.to(target)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scale = float(model.logit_scale.detach().exp().clamp(max=model.config.max_logit_scale))
    was_training = model.text.training
    model.text.train()
    losses = []
    try:
        for _ in range(steps):
            batch = rng.sample(list(corpus), min(batch_size, len(corpus)))
            reports = [r for r, _ in batch]
            label_texts = [augmenter.labels_to_text(labels, rng, unknown="name") for _, labels in batch]
            loss = pair_loss(model, reports, label_texts, scale, max_length)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        model.text.to(home)
        model.text.train(was_training)
        model.train(model.training)  # re-applies locked towers' eval modes
        for p in params:
            p.grad = None
    return losses


def run_text_pretrain(
    model: Any,
    cfg: dict[str, Any],
    *,
    seed: int,
    default_corpora: Sequence[str],
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """The ``text_pretrain`` config section applied to ``model``; returns a summary for the run folder."""
    paths = [str(p) for p in (cfg.get("corpora") or [])] or [str(p) for p in default_corpora if p]
    texts: list[str] = []
    for path in paths:
        texts += corpus_texts(path)
    corpus = labelled_reports(texts)
    log.info(
        "text pre-stage: %d of %d reports have findings the labeler knows; %d steps",
        len(corpus),
        len(texts),
        cfg["steps"],
    )
    losses = text_pretrain(
        model,
        corpus,
        steps=int(cfg["steps"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg.get("batch_size", 32)),
        seed=seed,
        max_length=max_length,
        device=device,
    )
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "corpora": len(paths),
        "reports": len(texts),
        "labelled_reports": len(corpus),
        "steps": len(losses),
        "loss_first": sum(head) / len(head),
        "loss_last": sum(tail) / len(tail),
    }
