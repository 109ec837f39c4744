"""Moved to :mod:`medclip.inference.encoders` (kept so ``benchmarks/quality.py`` and older scripts still import)."""

from medclip.inference.encoders import describe_model, embed_images, embed_texts, load_model, model_image_size

__all__ = ["describe_model", "embed_images", "embed_texts", "load_model", "model_image_size"]
