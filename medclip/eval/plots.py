"""PNG plots of evaluation results (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    from medclip.optional import import_optional

    matplotlib = import_optional("matplotlib", "plots", "evaluation plots")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_roc_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str = "Zero-shot ROC"
) -> Path:
    """One ROC curve per finding: {finding: (fpr, tpr, auroc)}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1.4, label=f"{name} ({auc:.2f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, Path(path))


def plot_reliability(table: Mapping[str, np.ndarray], ece: float, path: str | Path, title: str = "Calibration") -> Path:
    """Reliability diagram (observed positive rate vs mean predicted probability per bin) with bin counts."""
    plt = _pyplot()
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    edges = np.asarray(table["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    filled = np.asarray(table["count"]) > 0
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect calibration")
    ax.plot(
        np.asarray(table["mean_predicted"])[filled], np.asarray(table["fraction_positive"])[filled], "o-", label="model"
    )
    ax.set(ylabel="observed positive rate", title=f"{title} (ECE {ece:.3f})", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    axc.bar(centres, table["count"], width=np.diff(edges) * 0.9, color="tab:grey")
    axc.set(xlabel="predicted probability", ylabel="images")
    return _save(fig, Path(path))


def plot_prompt_sensitivity(auroc_by_style: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Grouped bars: AUROC per finding (groups) for each prompt style (bars)."""
    plt = _pyplot()
    styles = list(auroc_by_style)
    findings = sorted({f for v in auroc_by_style.values() for f in v})
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(findings) + 2), 4))
    width = 0.8 / max(len(styles), 1)
    x = np.arange(len(findings))
    for i, style in enumerate(styles):
        vals = [auroc_by_style[style].get(f, math.nan) for f in findings]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=style)
    ax.axhline(0.5, ls="--", c="grey", lw=0.8)
    ax.set_xticks(x, findings, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="AUROC", ylim=(0, 1), title="Prompt sensitivity")
    ax.legend(fontsize=7, ncol=min(len(styles), 3))
    return _save(fig, Path(path))


def plot_recall_curves(ranks: Mapping[str, Sequence[int]], path: str | Path, max_k: int = 50) -> Path:
    """Recall@K for K = 1..max_k, one line per retrieval direction."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ks = np.arange(1, max_k + 1)
    for name, seq in ranks.items():
        r = np.asarray(seq)
        r = r[r > 0]
        if r.size:
            ax.plot(ks, [(r <= k).mean() for k in ks], label=name.replace("_", " "))
    ax.set(xlabel="K", ylabel="Recall@K", ylim=(0, 1), title="Study-level retrieval")
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_fewshot(result: Mapping, path: str | Path) -> Path:
    """Mean AUROC vs shots per class for each few-shot method, with the zero-shot level as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    shots = sorted(int(k) for k in result["shots"])
    methods = sorted({m for k in shots for m in result["shots"][k]})
    for m in methods:
        ax.plot(shots, [result["shots"][k][m]["mean"] for k in shots], "o-", label=m)
    if "zeroshot" in result and not math.isnan(result["zeroshot"]["mean"]):
        ax.axhline(result["zeroshot"]["mean"], ls="--", c="black", lw=1, label="zero-shot")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="shots per class", ylabel="mean AUROC", title="Few-shot on frozen image embeddings")
    ax.legend(fontsize=7)
    return _save(fig, Path(path))
