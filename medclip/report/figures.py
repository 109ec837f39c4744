"""Pictures in the report: thumbnails (PNG without metadata) and reliability diagrams."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

THUMB_SIZE = 160


def to_uint8(image: Any) -> np.ndarray:
    """A 2D uint8 array from an image array or tensor: (H, W), (1, H, W) or a volume (1, D, H, W) whose
    middle slice is taken; float values are read as [0, 1]."""
    arr = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    arr = np.squeeze(arr)
    while arr.ndim > 2:
        arr = arr[arr.shape[0] // 2]
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)
        arr = (arr * 255.0 + 0.5).astype(np.uint8)
    return arr


def png_bytes(array: np.ndarray, size: int | None = THUMB_SIZE) -> bytes:
    """A grey PNG (longest side ``size``), written without any text chunk or metadata."""
    img = Image.fromarray(to_uint8(array), mode="L")
    if size is not None and max(img.size) != size:
        scale = size / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def pair_png(left: np.ndarray, right: np.ndarray, size: int = 120, gap: int = 6) -> bytes:
    """Two images side by side (a near-duplicate pair), each fitted in ``size`` x ``size``."""

    def fit(a: np.ndarray) -> Image.Image:
        img = Image.fromarray(to_uint8(a), mode="L")
        img.thumbnail((size, size), Image.Resampling.BILINEAR)
        canvas = Image.new("L", (size, size), 255)
        canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
        return canvas

    out = Image.new("L", (2 * size + gap, size), 255)
    out.paste(fit(left), (0, 0))
    out.paste(fit(right), (size + gap, 0))
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def reliability_png(per_finding: Mapping[str, Mapping[str, Any]], title: str) -> bytes | None:
    """Reliability diagrams (observed positive rate vs mean predicted probability per bin), one panel per
    finding with a reliability table; None when matplotlib (extra ``plots``) is missing or nothing to draw."""
    items = [(f, e) for f, e in per_finding.items() if e.get("reliability")]
    if not items:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cols = min(4, len(items))
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(items) :]:
        ax.axis("off")
    for ax, (finding, entry) in zip(axes.flat, items):
        table = entry["reliability"]
        pred = np.array([np.nan if v is None else v for v in table["mean_predicted"]], dtype=float)
        frac = np.array([np.nan if v is None else v for v in table["fraction_positive"]], dtype=float)
        count = np.array(table["count"], dtype=float)
        filled = count > 0
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
        ax.plot(pred[filled], frac[filled], marker="o", color="#0b5394")
        for x, y, c in zip(pred[filled], frac[filled], count[filled]):
            ax.annotate(str(int(c)), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color="#555")
        ece = entry.get("ece") or {}
        label = f"ECE {ece['value']:.3f}" if ece.get("value") is not None else "ECE n/a"
        ax.set_title(f"{finding}\n{label}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted", fontsize=8)
        ax.set_ylabel("observed positive rate", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
