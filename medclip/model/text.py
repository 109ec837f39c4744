"""Text tower: a BERT-family encoder from ``transformers``, CLS or masked-mean pooling, projection.

Padding costs compute: a batch is split into a few sub-batches of similar length
(``TextConfig.length_buckets``), each cut to its longest text, and results are put back in order.
Token states of real tokens do not depend on padding, so the embeddings are the same.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from .config import TextConfig
from .resources import ModelLoadError, hf_offline, hub_hint, resolve_model_source
from .vision import build_projection


def plan_length_buckets(lengths: list[int] | np.ndarray, max_buckets: int, overhead_tokens: int) -> list[np.ndarray]:
    """Split sample indices into at most ``max_buckets`` groups of similar length.

    Minimises padded tokens (group size x longest length in the group) plus ``overhead_tokens``
    per group, exactly (dynamic programming over the sorted lengths). Returns index arrays,
    shortest group first.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    n = len(order)
    if n == 0:
        return []
    sorted_len = lengths[order]
    k_max = max(1, min(max_buckets, n))
    inf = np.iinfo(np.int64).max // 4
    # best[k][j]: least cost of covering the j shortest samples with k groups; cut[k][j]: start of the last group.
    best = np.full((k_max + 1, n + 1), inf, dtype=np.int64)
    cut = np.zeros((k_max + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0
    starts = np.arange(n + 1)
    for k in range(1, k_max + 1):
        for j in range(1, n + 1):
            firsts = starts[:j]
            cost = best[k - 1, :j] + (j - firsts) * sorted_len[j - 1] + overhead_tokens
            cost[best[k - 1, :j] >= inf] = inf
            pick = int(np.argmin(cost))
            best[k, j], cut[k, j] = cost[pick], pick
    k = int(np.argmin(best[1:, n])) + 1
    groups, j = [], n
    while k > 0:
        i = int(cut[k, j])
        groups.append(order[i:j])
        j, k = i, k - 1
    return groups[::-1]


def _hidden_size(config: PretrainedConfig) -> int:
    for attr in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, attr, None), int):
            return int(getattr(config, attr))
    raise ModelLoadError(f"text model config {type(config).__name__} has no hidden size")


def _make_config(hf_config: dict[str, Any], vocab_size: int | None) -> PretrainedConfig:
    data = dict(hf_config)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ModelLoadError("text.hf_config needs a 'model_type' (e.g. 'bert')")
    if vocab_size is not None and "vocab_size" not in data:
        data["vocab_size"] = vocab_size
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as err:
        raise ModelLoadError(f"text.hf_config: {err}") from err


def hf_config_to_dict(config: PretrainedConfig) -> dict[str, Any]:
    """A ``transformers`` config as a ``text.hf_config`` dict (with ``model_type``; no paths or versions)."""
    data = config.to_dict()
    for key in (
        "_name_or_path",
        "transformers_version",
        "architectures",
        "torch_dtype",
        "dtype",
        "_attn_implementation_autoset",
    ):
        data.pop(key, None)
    return data


def _from_config(config: PretrainedConfig) -> PreTrainedModel:
    model: PreTrainedModel
    try:
        model = AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler layer
        model = AutoModel.from_config(config)
    return model


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar (missing weights are checked here instead)."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _from_pretrained(path: str, config: PretrainedConfig | None) -> PreTrainedModel:
    kwargs: dict[str, Any] = dict(trust_remote_code=False, local_files_only=hf_offline(), output_loading_info=True)
    if config is not None:
        kwargs["config"] = config
    model: PreTrainedModel
    info: dict[str, Any]
    try:
        with _quiet_transformers():
            try:
                model, info = AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
            except TypeError:
                model, info = AutoModel.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: weights of other shapes than the config
        hint = hub_hint(path) or (
            "; a folder needs config.json and model.safetensors (or pytorch_model.bin) as save_pretrained writes "
            "them, or set text.pretrained=false to train it from random weights"
            if Path(path).is_dir()
            else ""
        )
        raise ModelLoadError(f"text model {path!r}: cannot load ({' '.join(str(err).split())[:500]}){hint}") from err
    missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
    if missing:
        warnings.warn(
            f"text model {path!r}: {len(missing)} weights not in the checkpoint (random init), e.g. {missing[:3]}",
            stacklevel=3,
        )
    return model


class TextTower(nn.Module):
    """Encoder + pooling + projection: (input_ids, attention_mask) -> (B, embed_dim)."""

    encoder: PreTrainedModel

    def __init__(
        self, cfg: TextConfig, embed_dim: int, vocab_size: int | None = None, load_pretrained: bool = True
    ) -> None:
        super().__init__()
        self.cfg = cfg
        path = resolve_model_source(cfg.name, "text.name") if cfg.name else None
        config = _make_config(cfg.hf_config, vocab_size) if cfg.hf_config is not None else None
        if load_pretrained and cfg.pretrained and path:
            self.encoder = _from_pretrained(path, config)
        else:
            if config is None:
                if path is None:
                    raise ModelLoadError("text model: set text.name or text.hf_config")
                try:
                    config = AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=hf_offline())
                except (OSError, ValueError) as err:
                    raise ModelLoadError(
                        f"text model {cfg.name!r}: cannot load its config ({err}){hub_hint(path)}"
                    ) from err
            self.encoder = _from_config(config)
        if vocab_size is not None and vocab_size > self.encoder.config.vocab_size:
            raise ModelLoadError(
                f"tokenizer has {vocab_size} tokens but the text model {cfg.name or 'hf_config'} only {self.encoder.config.vocab_size}"
            )
        self.width = _hidden_size(self.encoder.config)
        self.proj = build_projection(cfg.proj, self.width, embed_dim, cfg.proj_bias)

    @property
    def max_positions(self) -> int:
        """Longest token sequence the encoder accepts."""
        return int(getattr(self.encoder.config, "max_position_embeddings", 0) or 10**9)

    def hf_config_dict(self) -> dict[str, Any]:
        """The encoder's full ``transformers`` config (enough to rebuild it with no download)."""
        return hf_config_to_dict(self.encoder.config)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._pool(hidden, attention_mask)

    def plan(self, attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, int]] | None:
        """Sub-batches ``(row indices, length)`` the encoder runs, or None for the batch as given."""
        lengths = attention_mask.sum(dim=1)
        positions = torch.arange(attention_mask.shape[1], device=lengths.device)
        right_padded = bool((attention_mask.bool() == (positions < lengths[:, None])).all())
        if self.cfg.length_buckets <= 1 or not right_padded or attention_mask.shape[0] < 2:
            return None
        lengths_cpu = lengths.cpu().numpy()
        groups = plan_length_buckets(lengths_cpu, self.cfg.length_buckets, self.cfg.bucket_overhead_tokens)
        return [
            (torch.as_tensor(group, device=attention_mask.device), max(int(lengths_cpu[group].max()), 1))
            for group in groups
        ]

    def tokens_to_run(self, attention_mask: torch.Tensor) -> int:
        """Token positions (padding included) the encoder computes for this batch."""
        plan = self.plan(attention_mask)
        return attention_mask.numel() if plan is None else sum(len(idx) * length for idx, length in plan)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be (B, L), got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(
                f"text of {input_ids.shape[1]} tokens exceeds the encoder's {self.max_positions} positions"
            )
        plan = self.plan(attention_mask)
        if plan is None:
            pooled = self._encode(input_ids, attention_mask)
        else:
            parts = [self._encode(input_ids[idx, :length], attention_mask[idx, :length]) for idx, length in plan]
            order = torch.cat([idx for idx, _ in plan])
            pooled = torch.empty((input_ids.shape[0], parts[0].shape[1]), dtype=parts[0].dtype, device=parts[0].device)
            pooled = pooled.index_copy(0, order, torch.cat(parts))
        projected: torch.Tensor = self.proj(pooled)
        return projected

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # transformers >= 5 renamed gradient_checkpointing_* to activation_checkpointing_*
        enc = self.encoder
        if enable:
            kwargs = {"use_reentrant": False}
            if hasattr(enc, "activation_checkpointing_enable"):
                enc.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        elif hasattr(enc, "activation_checkpointing_disable"):
            enc.activation_checkpointing_disable()
        else:
            enc.gradient_checkpointing_disable()
