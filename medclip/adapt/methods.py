"""Few-shot adaptation methods: each fits an :class:`AdaptedClassifier` from labelled shots.

Every method scores each finding as a binary log-odds (positive vs negative), like the zero-shot
classifier (:class:`medclip.inference.zeroshot.ZeroShotClassifier`), so they compare on one scale:

* ``linear_probe`` / ``gda``: :func:`medclip.eval.fewshot.linear_probe_fit` / ``gda_fit`` on the
  image features (the encoder's pre-projection features by default);
* ``tip_adapter``: Tip-Adapter (Zhang et al., ECCV 2022), training-free: the zero-shot log-odds plus
  ``alpha`` x a cache model over the shots (affinity ``exp(-beta (1 - x.k))`` to each L2-normalised
  shot key, summed with +1 for positive and -1 for negative shots). ``alpha = 0`` is zero-shot;
* ``tip_adapter_f``: Tip-Adapter-F, the cache keys fine-tuned on the shots (values and text fixed);
* ``coop``: CoOp (Zhou et al., IJCV 2022) with class-specific context: ``M`` learned context vectors
  per finding replace the hand-written template before the finding's name ("<ctx> <name>." vs
  "<ctx> no <name>."); the towers stay frozen, only the context vectors train;
* ``lora``: LoRA (the ``peft`` package) on the text tower's attention and MLP layers and the vision
  tower's attention/MLP layers (ViT) or its last stage's convolutions (CNNs), trained on the shots
  against the finding sentences; the base weights are never changed, the low-rank updates are saved
  and merged into a copy of the model at load.

Shots are given per finding as a label matrix over a union of images (NaN = not a shot of that
finding), so one call fits every finding.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medclip.eval.fewshot import gda_fit, linear_probe_fit
from medclip.inference.zeroshot import ZeroShotClassifier, prompts_for_style
from medclip.optional import import_optional

METHODS = ("linear_probe", "gda", "tip_adapter", "tip_adapter_f", "coop", "lora")
#: methods that need the model's towers (text for CoOp, both for LoRA), not only image features
TOWER_METHODS = ("coop", "lora")
COOP_INIT = "a radiograph showing"


@dataclass
class ShotSet:
    """The union of the shot images of every finding: features, and labels (n, F) with NaN where an
    image is not a shot of that finding."""

    embedding: torch.Tensor  # (n, E) normalised joint embeddings
    backbone: torch.Tensor | None  # (n, D) pre-projection features
    labels: np.ndarray  # (n, F)
    images: torch.Tensor | None = None  # (n, 1, H, W) what the model sees (LoRA only)

    def features(self, kind: str) -> torch.Tensor:
        if kind == "backbone":
            if self.backbone is None:
                raise ValueError("this model has no pre-projection features")
            return self.backbone
        return self.embedding


@dataclass
class AdaptedClassifier:
    """A fitted few-shot classifier: ``method``, the findings it scores, what image features it reads,
    its tensors (what it learned or cached) and its settings. :meth:`logits` gives log-odds (N, F)."""

    method: str
    findings: list[str]
    features: str  # "backbone" | "embedding"
    tensors: dict[str, torch.Tensor]
    params: dict[str, Any] = field(default_factory=dict)
    _merged: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def needs_images(self) -> bool:
        """True when the classifier scores images with its own (merged LoRA) model, not given features."""
        return self.method == "lora"

    def logits(self, embedding: torch.Tensor, backbone: torch.Tensor | None = None) -> torch.Tensor:
        """Log-odds (N, F) from the model's image features (for LoRA: the merged model's embeddings)."""
        emb = F.normalize(torch.as_tensor(embedding).float(), dim=-1)
        if self.features == "backbone" and backbone is None:
            raise ValueError(f"{self.method}: needs the encoder's pre-projection features")
        x = emb if self.features == "embedding" else torch.as_tensor(backbone).float()
        t = self.tensors
        if self.method in ("linear_probe", "gda"):
            return x.double() @ t["weight"].double().T + t["bias"].double()
        if self.method in ("tip_adapter", "tip_adapter_f"):
            return tip_logits(x, emb, t, float(self.params["alpha"]), float(self.params["beta"]))
        if self.method in ("coop", "lora"):
            scale = float(self.params["logit_scale"])
            return scale * (emb @ t["positive"].T - emb @ t["negative"].T)
        raise ValueError(f"unknown adaptation method {self.method!r}")

    def merged_model(self, model: nn.Module) -> nn.Module:
        """LoRA: a copy of ``model`` with the low-rank updates merged into its weights (cached)."""
        if self.method != "lora":
            return model
        if self._merged is None:
            self._merged = merge_lora(model, self.tensors, self.params)
        return self._merged


# ---------------------------------------------------------------------------- feature methods
def fit_linear(kind: str, shots: ShotSet, findings: Sequence[str], method: str, seed: int = 0) -> AdaptedClassifier:
    """Linear probe or GDA per finding on ``kind`` features."""
    x = shots.features(kind).double().numpy()
    weights, biases = [], []
    for j in range(len(findings)):
        rows = ~np.isnan(shots.labels[:, j])
        if method == "linear_probe":
            fit = linear_probe_fit(x[rows], shots.labels[rows, j], seed=seed)
        else:
            fit = gda_fit(x[rows], shots.labels[rows, j])
        weights.append(torch.as_tensor(fit[0], dtype=torch.float32))
        biases.append(float(fit[1]))
    return AdaptedClassifier(
        method, list(findings), kind, {"weight": torch.stack(weights), "bias": torch.tensor(biases)}, {}
    )


def _zs_tensors(zeroshot: ZeroShotClassifier) -> dict[str, torch.Tensor]:
    return {"zs_positive": zeroshot.positive.clone(), "zs_negative": zeroshot.negative.clone()}


def tip_logits(
    x: torch.Tensor, emb: torch.Tensor, t: dict[str, torch.Tensor], alpha: float, beta: float
) -> torch.Tensor:
    """Zero-shot log-odds + alpha x the cache model's (positive - negative) affinity, per finding."""
    zs = float(t["zs_scale"]) * (emb @ t["zs_positive"].T - emb @ t["zs_negative"].T)
    if alpha == 0.0:
        return zs
    keys = F.normalize(t["keys"].float(), dim=-1)  # (F, S, D)
    xn = F.normalize(x.float(), dim=-1)
    affinity = torch.exp(-beta * (1.0 - torch.einsum("nd,fsd->nfs", xn, keys)))
    signs = 2.0 * t["values"].float() - 1.0  # (F, S): +1 positive shot, -1 negative shot
    return zs + alpha * (affinity * signs[None]).sum(-1)


def fit_tip_adapter(
    kind: str,
    shots: ShotSet,
    findings: Sequence[str],
    zeroshot: ZeroShotClassifier,
    alpha: float = 1.0,
    beta: float = 5.5,
    finetune: bool = False,
    steps: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
) -> AdaptedClassifier:
    """Tip-Adapter (``finetune=False``) or Tip-Adapter-F (keys trained on the shots with the rest fixed)."""
    x = shots.features(kind).float()
    keys, values = [], []
    for j in range(len(findings)):
        rows = np.flatnonzero(~np.isnan(shots.labels[:, j]))
        keys.append(F.normalize(x[rows], dim=-1))
        values.append(torch.as_tensor(shots.labels[rows, j], dtype=torch.float32))
    n = max(len(v) for v in values)
    if any(len(v) != n for v in values):
        raise ValueError("Tip-Adapter needs the same number of shots for every finding")
    t = {
        "keys": torch.stack(keys),
        "values": torch.stack(values),
        "zs_scale": torch.tensor(zeroshot.logit_scale),
        **_zs_tensors(zeroshot),
    }
    method = "tip_adapter_f" if finetune else "tip_adapter"
    if finetune:
        torch.manual_seed(seed)
        param = nn.Parameter(t["keys"].clone())
        opt = torch.optim.AdamW([param], lr=lr, eps=1e-4)
        y, known = _targets(shots.labels)
        emb = F.normalize(shots.embedding.float(), dim=-1)
        for _ in range(steps):
            logits = tip_logits(x, emb, {**t, "keys": param}, alpha, beta)
            loss = _masked_bce(logits, y, known)
            opt.zero_grad()
            loss.backward()
            opt.step()
        t["keys"] = param.detach().clone()
    return AdaptedClassifier(method, list(findings), kind, t, {"alpha": alpha, "beta": beta})


def _targets(labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    known = torch.as_tensor(~np.isnan(labels))
    return torch.as_tensor(np.nan_to_num(labels, nan=0.0), dtype=torch.float32), known


def _masked_bce(logits: torch.Tensor, y: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


# ---------------------------------------------------------------------------- CoOp
def _text_tower(model: nn.Module) -> Any:
    text = getattr(model, "text", None)
    if text is None or not hasattr(text, "encoder") or not hasattr(text, "_pool"):
        raise ValueError("CoOp and LoRA need a medclip model (a DualEncoder); open_clip models are not supported")
    return text


def _finding_names(findings: Sequence[str]) -> list[str]:
    from medclip.knowledge import Graph
    from medclip.knowledge.prompts import prompt_names

    graph = Graph.load()
    names = []
    for cid in findings:
        found = prompt_names(graph, cid) if cid in graph else []
        names.append((found[0] if found else cid.replace("_", " ")).lower())
    return names


class CoOpPrompts(nn.Module):
    """Class-specific context vectors (F, M, width) and the frozen token embeddings around them."""

    def __init__(self, model: nn.Module, findings: Sequence[str], n_ctx: int | None = None, init: str = COOP_INIT):
        super().__init__()
        text = _text_tower(model)
        tok: Any = cast(Any, model).tokenize
        embed = text.encoder.get_input_embeddings()
        init_ids = tok([init])["input_ids"][0][1:-1]  # without [CLS] / [SEP]
        n_ctx = int(n_ctx or len(init_ids))
        with torch.no_grad():
            if len(init_ids) == n_ctx:
                base = embed(init_ids).float()
            else:
                gen = torch.Generator().manual_seed(0)
                base = torch.randn(n_ctx, embed.embedding_dim, generator=gen) * 0.02
        self.ctx = nn.Parameter(base[None].repeat(len(findings), 1, 1).clone())
        names = _finding_names(findings)
        self.names = names
        self.pos_ids = [tok([f"{n}."])["input_ids"][0] for n in names]
        self.neg_ids = [tok([f"no {n}."])["input_ids"][0] for n in names]

    def embed(self, model: nn.Module, ctx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (positive, negative) text embeddings (F, E) with the context vectors ``ctx``."""
        ctx = self.ctx if ctx is None else ctx
        text = _text_tower(model)
        embed = text.encoder.get_input_embeddings()
        out = []
        for ids_list in (self.pos_ids, self.neg_ids):
            seqs = []
            for j, ids in enumerate(ids_list):
                words = embed(ids.to(ctx.device)).to(ctx.dtype)
                seqs.append(torch.cat([words[:1], ctx[j], words[1:]]))  # [CLS] ctx name ... [SEP]
            length = max(s.shape[0] for s in seqs)
            mask = torch.zeros(len(seqs), length, dtype=torch.long)
            batch = torch.zeros(len(seqs), length, seqs[0].shape[1], dtype=ctx.dtype)
            for i, s in enumerate(seqs):
                batch[i, : s.shape[0]] = s
                mask[i, : s.shape[0]] = 1
            hidden = text.encoder(inputs_embeds=batch, attention_mask=mask).last_hidden_state
            out.append(F.normalize(text.proj(text._pool(hidden, mask)), dim=-1))
        return out[0], out[1]


def fit_coop(
    model: nn.Module,
    shots: ShotSet,
    findings: Sequence[str],
    logit_scale: float,
    n_ctx: int | None = None,
    steps: int = 100,
    lr: float = 2e-3,
    seed: int = 0,
) -> AdaptedClassifier:
    """CoOp: train only the context vectors (class-specific) on the shots' embeddings; towers frozen."""
    torch.manual_seed(seed)
    prompts = CoOpPrompts(model, findings, n_ctx)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    init = prompts.ctx.detach().clone()
    try:
        opt = torch.optim.AdamW([prompts.ctx], lr=lr, weight_decay=0.0)
        y, known = _targets(shots.labels)
        emb = F.normalize(shots.embedding.float(), dim=-1)
        for _ in range(steps):
            pos, neg = prompts.embed(model)
            loss = _masked_bce(logit_scale * (emb @ pos.T - emb @ neg.T), y, known)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pos, neg = prompts.embed(model)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    tensors = {"ctx": prompts.ctx.detach().clone(), "ctx_init": init, "positive": pos, "negative": neg}
    return AdaptedClassifier(
        "coop", list(findings), "embedding", tensors, {"logit_scale": logit_scale, "n_ctx": int(init.shape[1])}
    )


# ---------------------------------------------------------------------------- LoRA
def _peft() -> Any:
    return import_optional("peft", "adapt", "medclip adapt --methods lora")


def lora_targets(model: nn.Module) -> list[str]:
    """Module names LoRA adapts: the text tower's attention (query/key/value) and MLP/output (dense)
    linears; the vision tower's attention/MLP linears (ViT: qkv, proj, fc1, fc2) or, for a CNN,
    the dense convolutions and linears of its last block group (timm's group matcher; depthwise
    convolutions are left out: LoRA cannot merge into them)."""
    names = []
    for name, module in model.named_modules():
        if not name.startswith("text.encoder."):
            continue
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in ("query", "key", "value", "dense"):
            names.append(name)
    vision = [
        name
        for name, module in model.named_modules()
        if name.startswith("visual.backbone.")
        and isinstance(module, nn.Linear)
        and name.rsplit(".", 1)[-1] in ("qkv", "proj", "fc1", "fc2")
    ]
    if not vision:  # a CNN: the convolutions (and linears) of the last block group that has any
        groups = model.image_blocks() if hasattr(model, "image_blocks") else []  # type: ignore[operator]
        for group in reversed(groups):
            modules = sorted({f"visual.backbone.{p.rsplit('.', 1)[0]}" for p in group})
            vision = [m for m in modules if _lora_fits(model.get_submodule(m))]
            if vision:
                break
    return names + vision


def _lora_fits(module: nn.Module) -> bool:
    """A linear layer or a dense convolution (LoRA cannot merge into a grouped / depthwise one)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _inject(model: nn.Module, targets: list[str], rank: int, alpha: float) -> nn.Module:
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none")
    return peft.inject_adapter_in_model(config, model)


def _unload(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer into its base layer and put the base layer back in its place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    return model


def lora_model(model: nn.Module, tensors: dict[str, torch.Tensor], params: dict[str, Any]) -> nn.Module:
    """A copy of ``model`` with LoRA layers holding ``tensors`` (not merged)."""
    copy_ = _inject(copy.deepcopy(model), list(params["targets"]), int(params["rank"]), float(params["lora_alpha"]))
    state = {k.removeprefix("lora."): v for k, v in tensors.items() if k.startswith("lora.")}
    missing = copy_.load_state_dict(state, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"LoRA weights do not fit this model: {missing.unexpected_keys[:3]}")
    return copy_.eval()


def merge_lora(model: nn.Module, tensors: dict[str, torch.Tensor], params: dict[str, Any]) -> nn.Module:
    """A copy of ``model`` with the LoRA updates merged into its weights (plain layers again)."""
    return _unload(lora_model(model, tensors, params)).eval()


def _sentence_prompts(model: nn.Module, findings: Sequence[str]) -> tuple[dict, dict]:
    from medclip.knowledge import Graph

    prompts = prompts_for_style(Graph.load(), list(findings), "sentence")
    pos = model.tokenize([prompts[c]["positive"][0] for c in findings])  # type: ignore[operator]
    neg = model.tokenize([prompts[c]["negative"][0] for c in findings])  # type: ignore[operator]
    return dict(pos), dict(neg)


def _text_pair(model: nn.Module, pos: dict, neg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    enc: Any = cast(Any, model).encode_text
    return (
        enc(pos["input_ids"], pos["attention_mask"], normalize=True),
        enc(neg["input_ids"], neg["attention_mask"], normalize=True),
    )


def fit_lora(
    model: nn.Module,
    shots: ShotSet,
    findings: Sequence[str],
    logit_scale: float,
    rank: int = 4,
    lora_alpha: float = 8.0,
    steps: int = 30,
    lr: float = 5e-4,
    batch_size: int = 16,
    seed: int = 0,
    prompt_style: str = "ensemble",
) -> AdaptedClassifier:
    """LoRA on both towers, trained on the shot images against the finding sentences ("there is
    <name>." vs "there is no <name>."); ``model`` is not touched (a copy is adapted; BatchNorm statistics
    stay frozen, the copy runs in eval mode). The classifier is the zero-shot classifier of the merged
    model with the same prompt ensembles as the zero-shot row (``prompt_style``), so only the towers'
    low-rank updates separate the two; with no training step it is zero-shot exactly."""
    _text_tower(model)
    if shots.images is None:
        raise ValueError("LoRA needs the shot images")
    torch.manual_seed(seed)
    targets = lora_targets(model)
    adapted = _inject(copy.deepcopy(model), targets, rank, lora_alpha).eval()
    for name, p in adapted.named_parameters():
        p.requires_grad_("lora_" in name)
    params = [p for p in adapted.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    pos_tok, neg_tok = _sentence_prompts(model, findings)
    y, known = _targets(shots.labels)
    gen = torch.Generator().manual_seed(seed)
    n = shots.images.shape[0]
    for _ in range(steps):
        idx = torch.randperm(n, generator=gen)[: min(batch_size, n)]
        emb = adapted.encode_image(shots.images[idx], normalize=True)  # type: ignore[operator]
        pos, neg = _text_pair(adapted, pos_tok, neg_tok)
        loss = _masked_bce(logit_scale * (emb @ pos.T - emb @ neg.T), y[idx], known[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    lora_state = {f"lora.{k}": v.detach().clone() for k, v in adapted.state_dict().items() if "lora_" in k}
    hparams = {"targets": targets, "rank": rank, "lora_alpha": lora_alpha, "logit_scale": logit_scale}
    merged = _unload(adapted)
    classifier = ZeroShotClassifier.from_model(cast(Any, merged), list(findings), style=prompt_style)
    hparams["prompt_style"] = prompt_style
    tensors = {**lora_state, "positive": classifier.positive, "negative": classifier.negative}
    clf = AdaptedClassifier("lora", list(findings), "embedding", tensors, hparams)
    clf._merged = merged
    return clf


def fit_method(
    method: str,
    model: nn.Module,
    shots: ShotSet,
    findings: Sequence[str],
    zeroshot: ZeroShotClassifier,
    features: str = "backbone",
    seed: int = 0,
    **options: Any,
) -> AdaptedClassifier:
    """Fit one method (see :data:`METHODS`) on ``shots``."""
    if method in ("linear_probe", "gda"):
        return fit_linear(features, shots, findings, method, seed=seed)
    if method in ("tip_adapter", "tip_adapter_f"):
        return fit_tip_adapter(
            features, shots, findings, zeroshot, finetune=method == "tip_adapter_f", seed=seed, **options
        )
    if method == "coop":
        return fit_coop(model, shots, findings, zeroshot.logit_scale, seed=seed, **options)
    if method == "lora":
        options.setdefault("prompt_style", zeroshot.style)
        return fit_lora(model, shots, findings, zeroshot.logit_scale, seed=seed, **options)
    raise ValueError(f"unknown adaptation method {method!r}; choose from {', '.join(METHODS)}")


def finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)
