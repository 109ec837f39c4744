"""Few-shot adaptation of a medclip model to a new site's labels (``medclip adapt``).

Methods (:mod:`medclip.adapt.methods`): linear probe, GDA, Tip-Adapter and Tip-Adapter-F, CoOp, LoRA;
each fits an :class:`AdaptedClassifier` saved next to the checkpoint (:mod:`medclip.adapt.store`) and
scored by :mod:`medclip.adapt.runner`.
"""

from .methods import METHODS, AdaptedClassifier, ShotSet, fit_method
from .store import load_adapter, save_adapter, saved_adapters

__all__ = ["METHODS", "AdaptedClassifier", "ShotSet", "fit_method", "load_adapter", "save_adapter", "saved_adapters"]
