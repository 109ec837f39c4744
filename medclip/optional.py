"""Optional packages: import them by name, or fail with one line naming the extra to install.

>>> faiss = import_optional("faiss", "index", "--faiss yes")  # doctest: +SKIP

Extras (``pip install 'medclip-kit[<extra>]'``) and the packages they bring:

=========  ===================  =====================================================
extra      pip package          used for
=========  ===================  =====================================================
bench      open-clip-torch      ``open_clip:`` models (evaluation, fine-tuning)
index      faiss-cpu            approximate retrieval search (``--faiss yes``)
volumes    monai, einops        CT/MR volume encoders (MONAI 3D ResNet / ViT)
demo       gradio               the triage demo page
train      tensorboard          TensorBoard logs of ``medclip fit``
plots      matplotlib           PNG plots written by ``medclip eval``
reports    sacrebleu,           BLEU-4 and ROUGE-L of drafted reports (``medclip eval``)
           rouge-score
adapt      peft                 LoRA few-shot adaptation (``medclip adapt --methods lora``)
pretrain   lightly              image-only DINO pretraining (``medclip pretrain-image``)
=========  ===================  =====================================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Distribution name on PyPI of each optional import name (when they differ).
PIP_NAMES: dict[str, str] = {
    "open_clip": "open-clip-torch",
    "faiss": "faiss-cpu",
    "einops": "einops",
    "gradio": "gradio",
    "monai": "monai",
    "tensorboard": "tensorboard",
    "matplotlib": "matplotlib",
    "sacrebleu": "sacrebleu",
    "rouge_score": "rouge-score",
    "peft": "peft",
    "lightly": "lightly",
}

#: The medclip-kit extra that installs each optional import name.
EXTRAS: dict[str, str] = {
    "open_clip": "bench",
    "faiss": "index",
    "einops": "volumes",
    "gradio": "demo",
    "monai": "volumes",
    "tensorboard": "train",
    "matplotlib": "plots",
    "sacrebleu": "reports",
    "rouge_score": "reports",
    "peft": "adapt",
    "lightly": "pretrain",
}

DISTRIBUTION = "medclip-kit"


class MissingExtraError(RuntimeError):
    """An optional package is not installed; the message is one line saying what to ``pip install``."""

    def __init__(self, module: str, extra: str, purpose: str, detail: str = "") -> None:
        self.module = module
        self.extra = extra
        self.purpose = purpose
        self.pip_name = PIP_NAMES.get(module.split(".")[0], module.split(".")[0])
        message = f"{purpose} needs the optional package '{self.pip_name}': pip install '{DISTRIBUTION}[{extra}]'"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import and return ``module``; if it (or a package it needs) is missing, raise
    :class:`MissingExtraError` naming ``purpose`` and the medclip-kit ``extra`` that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        missing = getattr(err, "name", None)
        # the package itself is absent: the plain message; a broken install (one of its own
        # dependencies missing): the same advice plus what failed, still on one line
        detail = "" if missing in (top, module) else " ".join(f"{type(err).__name__}: {err}".split())
        raise MissingExtraError(module, extra, purpose, detail) from err


__all__ = ["MissingExtraError", "import_optional", "EXTRAS", "PIP_NAMES"]
