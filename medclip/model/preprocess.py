"""What the model sees: one :class:`PreprocessConfig` saved with the model, and one :func:`preprocess`.

Like open_clip's ``preprocess_cfg``: the model config (``config.json``, key ``preprocess``) carries the
window, the resize policy, the image size, the volume grid, the slice / frame choice and the text
length the model was trained with. ``medclip fit`` writes it from the cache it trained on (or from the
data config when training from a manifest); the cache, the manifest datasets, ``medclip eval`` and the
demo all turn an image into pixels through :func:`preprocess` with the checkpoint's config, so a model
trained on a lung-window cache is evaluated and served on the same pixels.

Windowing itself stays in :mod:`medclip.io.windowing` (the primitive called here); reading a file with
the config's window is the caller's part (:func:`medclip.data.cache.preprocess_row` for manifest rows,
:mod:`medclip.demo.uploads` for uploads), because a DICOM VOI LUT needs the file.

This module is light (no torch): the cache's worker processes import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medclip.io.image import MedicalImage
    from medclip.io.windowing import WindowSpec

__all__ = ["FRAME_POLICIES", "RESIZE_POLICIES", "PreprocessConfig", "parse_window", "preprocess", "text_length"]

#: How a 2D image is fitted into the model's square: ``letterbox`` = long side resized (aspect kept),
#: short side zero-padded, centered (no anatomy cut away). The one policy medclip has today.
RESIZE_POLICIES = ("letterbox",)
#: Which frame of a multi-frame 2D acquisition, or which slice of a volume shown to a 2D model, is used.
FRAME_POLICIES = ("middle", "first")


def parse_window(window: Any) -> WindowSpec:
    """A window as written in configs (``"auto"``, a preset name, ``"C,W"``) -> a :data:`WindowSpec`."""
    if isinstance(window, str) and "," in window:
        c, w = window.split(",", 1)
        return float(c), float(w)
    if isinstance(window, (list, tuple)):
        return float(window[0]), float(window[1])
    spec: WindowSpec = window  # "auto", a preset name or None (check_window judges it where it is used)
    return spec


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's input, and how long a text may be.

    ``window``: ``"auto"`` (the file's VOI LUT / window, else a robust percentile window), a preset name
    (``lung``, ``mediastinum``, ...) or ``"center,width"`` in modality units. ``resize``: one of
    :data:`RESIZE_POLICIES`. ``image_size``: side of the uint8 square a 2D image becomes.
    ``volume_shape`` / ``volume_spacing``: the (D, H, W) grid and mm spacing volumes are resampled to.
    ``frame``: which frame of a multi-frame 2D image / which slice of a volume a 2D model sees
    (:data:`FRAME_POLICIES`). ``volume_index``: which volume of a 4D acquisition (fMRI, dynamic series).
    ``context_length``: the most text tokens (None: the text tower's ``context_length``).
    """

    image_size: int = 224
    window: str = "auto"
    resize: str = "letterbox"
    volume_shape: tuple[int, int, int] = (64, 128, 128)
    volume_spacing: tuple[float, float, float] = (3.0, 1.5, 1.5)
    frame: str = "middle"
    volume_index: int = 0
    context_length: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "volume_shape", tuple(int(v) for v in self.volume_shape))
        object.__setattr__(self, "volume_spacing", tuple(float(v) for v in self.volume_spacing))
        if isinstance(self.window, (list, tuple)):  # (center, width) given as numbers
            object.__setattr__(self, "window", f"{float(self.window[0]):g},{float(self.window[1]):g}")
        if int(self.image_size) < 1:
            raise ValueError(f"preprocess.image_size must be >= 1, got {self.image_size}")
        object.__setattr__(self, "image_size", int(self.image_size))
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"preprocess.resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.frame not in FRAME_POLICIES:
            raise ValueError(f"preprocess.frame must be one of {FRAME_POLICIES}, got {self.frame!r}")
        if len(self.volume_shape) != 3 or len(self.volume_spacing) != 3:
            raise ValueError("preprocess.volume_shape and volume_spacing need 3 values (D, H, W)")
        if int(self.volume_index) < 0:
            raise ValueError(f"preprocess.volume_index must be >= 0, got {self.volume_index}")
        if self.context_length is not None and int(self.context_length) < 2:
            raise ValueError(f"preprocess.context_length must be >= 2, got {self.context_length}")
        from medclip.io.windowing import check_window

        try:
            check_window(parse_window(self.window))
        except ValueError as exc:
            raise ValueError(f"preprocess.window: {exc}") from None

    @property
    def window_spec(self) -> WindowSpec:
        """The window as :func:`medclip.io.load_image` takes it."""
        return parse_window(self.window)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict."""
        data = asdict(self)
        data["volume_shape"] = list(self.volume_shape)
        data["volume_spacing"] = list(self.volume_spacing)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = True) -> PreprocessConfig:
        """Build from :meth:`to_dict`'s output; ``strict=False`` ignores other keys (a cache's ``cache.json``
        config also holds ``shard_size`` and ``reduced_decode``)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown and strict:
            raise ValueError(f"unknown preprocess keys {unknown}; allowed: {sorted(names)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def with_(self, **changes: Any) -> PreprocessConfig:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)


def text_length(model_context_length: int, requested: int | None, *, what: str = "data.max_text_tokens") -> int:
    """The one text length: the model's ``context_length``, or a smaller ``requested`` one.

    Raises ValueError (naming ``what``) when ``requested`` asks for more tokens than the model supports:
    the two used to clip each other silently."""
    if requested is None:
        return int(model_context_length)
    if int(requested) > int(model_context_length):
        raise ValueError(
            f"{what} = {requested} is more than the model's text context length "
            f"({model_context_length} tokens, model.text.context_length): lower it, or raise the model's"
        )
    return int(requested)


def _frame(depth: int, policy: str) -> int:
    return depth // 2 if policy == "middle" else 0


def preprocess(
    image: MedicalImage,
    cfg: PreprocessConfig,
    *,
    kind: str = "image",
    slice_index: int | None = None,
    window: WindowSpec | None = None,
) -> np.ndarray:
    """The array the model sees for ``image``: uint8 (S, S) for 2D models, float16 (D, H, W) in [0, 1] for volumes.

    ``kind="image"``: a 3D array (a multi-frame 2D acquisition, or a volume shown to a 2D model) gives one
    frame (``slice_index``, else ``cfg.frame``); an image read without a window (modality values) is
    windowed with ``window`` (default ``cfg.window``); then letterboxed to ``cfg.image_size``.
    ``kind="volume"``: a windowed volume resampled to ``cfg.volume_spacing`` / ``cfg.volume_shape``.
    """
    from medclip.io.windowing import check_window, to_model_input

    if kind == "volume":
        from medclip.io.volume import resample_volume

        if not image.is_volume:
            raise ValueError(f"{image.source}: expected a volume, got an array of shape {image.shape}")
        if image.metadata.get("window") is None:
            raise ValueError(
                f"{image.source}: a volume must be read with the window (window={cfg.window!r}) before it is resampled"
            )
        vol = resample_volume(image, spacing=cfg.volume_spacing, shape=cfg.volume_shape)
        volume: np.ndarray = np.clip(vol.array, 0.0, 1.0).astype(np.float16)
        return volume
    if kind != "image":
        raise ValueError(f"kind must be 'image' or 'volume', got {kind!r}")
    if window is None:
        window = cfg.window_spec
    check_window(window)
    if image.is_volume:
        depth = image.array.shape[0]
        index = _frame(depth, cfg.frame) if slice_index is None else int(slice_index)
        if not 0 <= index < depth:
            raise ValueError(f"slice {index} out of range: the volume has {depth} slices")
        image = replace(image, array=image.array[index], spacing=tuple(image.spacing[-2:]), affine=None)
    return to_model_input(image, cfg.image_size, window=window)
