"""``medclip adapt``: fit every few-shot method on shots drawn by patient, score them on test patients.

For each shot count ``k`` and each of ``draws`` random draws, every finding gets ``k`` positive and
``k`` negative training images, at most one per patient (:func:`medclip.eval.fewshot.sample_shots`);
the test split's patients must not appear in the training split. Each method is fitted on the draw
and scored (AUROC) on the test split; zero-shot is the 0-shot row. The classifiers of the largest
``k``, first draw, are saved next to the checkpoint (``adapters/<method>/``) for ``medclip eval
--adapter`` and the demo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclip.checkpoint import CheckpointDir
from medclip.eval.fewshot import sample_shots
from medclip.eval.metrics import auroc
from medclip.eval.runner import EvalOptions, Evaluator, jsonable
from medclip.inference.encoders import embed_images
from medclip.inference.zeroshot import ZeroShotClassifier

from .methods import METHODS, AdaptedClassifier, ShotSet, fit_method
from .store import save_adapter

log = logging.getLogger(__name__)
RESULTS_FILE = "adapt.json"


def _sha256(path: Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def classifier_logits(clf: AdaptedClassifier, evaluator: Evaluator, split_name: str) -> torch.Tensor:
    """Log-odds (N, F) of a classifier on an embedded split (LoRA re-embeds with its merged model)."""
    split = evaluator.split(split_name)
    if clf.needs_images:
        merged = clf.merged_model(evaluator.model)
        emb = embed_images(merged, evaluator.dataset(split.frame), evaluator.options.batch_size)  # type: ignore[arg-type]
        return clf.logits(emb)
    return clf.logits(split.image_features, split.backbone_features)


def _aurocs(labels: np.ndarray, logits: np.ndarray, findings: Sequence[str]) -> dict[str, float]:
    out = {}
    for j, cid in enumerate(findings):
        known = np.isin(labels[:, j], (0.0, 1.0))
        y = labels[known, j]
        out[cid] = auroc(y, logits[known, j]) if known.any() and 0 < y.sum() < y.size else math.nan
    return out


def _mean(values) -> float:
    arr = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    return float(arr.mean()) if arr.size else math.nan


def run_adapt(
    checkpoint: str | Path,
    manifest: str | Path,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    methods: Sequence[str] = METHODS,
    draws: int = 3,
    seed: int = 0,
    features: str = "backbone",
    train_split: str = "train",
    test_split: str = "test",
    findings: Sequence[str] | str | None = None,
    unmentioned_as_negative: bool = False,
    save: bool = True,
    output: str | Path | None = None,
    batch_size: int = 32,
    max_images: int | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    zeroshot: ZeroShotClassifier | None = None,
    keep_scores: bool = False,
) -> dict[str, Any]:
    """Fit and score every method; returns the results (also written to ``output``/adapt.json).

    ``zeroshot``: the zero-shot classifier to compare with (and to start Tip-Adapter from) instead of the
    knowledge graph's prompt ensembles for ``findings``; its findings are the label columns scored.
    ``keep_scores``: also return, under ``"scores"`` (not written to adapt.json), the test images' patient ids
    and labels, the zero-shot log-odds and every method's log-odds per k and draw, for paired patient
    bootstraps (:func:`paired_difference_ci`)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not shots or any(int(k) < 1 for k in shots):
        raise ValueError(f"shots must be positive integers, got {list(shots)}")
    if draws < 1:
        raise ValueError("draws must be at least 1")
    ckpt = CheckpointDir.open(checkpoint).require()
    model = ckpt.load_model()
    options = EvalOptions(
        split=test_split,
        train_split=train_split,
        val_split=None,
        findings=[findings] if isinstance(findings, str) else (list(findings) if findings else None),
        unmentioned_as_negative=unmentioned_as_negative,
        seed=seed,
        batch_size=batch_size,
        max_images=max_images,
        fewshot_features=features,
    )
    ev = Evaluator(model, manifest, options)
    train, test = ev.split(train_split), ev.split(test_split)
    shared = sorted(set(train.patients) & set(test.patients))
    if shared:
        raise ValueError(
            f"{len(shared)} patient(s) are in both the {train_split} and the {test_split} split: shots and test "
            f"patients must be disjoint (re-split the manifest by patient)"
        )
    if features == "backbone" and train.backbone_features is None:
        raise ValueError("this model has no pre-projection features: use --features embedding")
    zs = zeroshot if zeroshot is not None else ev.zeroshot_classifier()
    names = zs.findings
    ytr = train.labels(names, unmentioned_as_negative)
    yte = test.labels(names, unmentioned_as_negative)
    zs_test = zs.logits(test.image_features).numpy()
    zs_auroc = _aurocs(yte, zs_test, names)
    scores: dict[str, Any] = {
        "patients": test.patients,
        "labels": yte,
        "zeroshot": zs_test,
        "logits": {},
        "zeroshot_findings": names,
    }
    results: dict[str, Any] = {
        "findings": names,
        "features": features,
        "draws": draws,
        "methods": list(methods),
        "zeroshot": {"per_finding": zs_auroc, "mean": _mean(zs_auroc.values())},
        "shots": {},
        "data": {
            split: {"images": len(s.frame), "patients": int(s.frame["patient_id"].nunique())}
            for split, s in ((train_split, train), (test_split, test))
        },
    }
    manifest_path = Path(manifest)
    provenance_base = {
        "manifest": manifest_path.name,
        "manifest_sha256": _sha256(manifest_path),
        "train_split": train_split,
        "test_split": test_split,
        "seed": seed,
    }
    to_save: dict[str, tuple[AdaptedClassifier, dict[str, Any]]] = {}
    ks = sorted({int(k) for k in shots})
    # a finding takes part at k only with k positive and k negative training patients
    available = {
        k: [
            j
            for j in range(len(names))
            if sample_shots(ytr[:, j], k, np.random.default_rng(0), train.patients) is not None
        ]
        for k in ks
    }
    complete = [k for k in ks if len(available[k]) == len(names)]
    save_k = max(complete) if complete else max((k for k in ks if available[k]), default=None)
    results["skipped"] = {k: [names[j] for j in range(len(names)) if j not in available[k]] for k in ks}
    for k in ks:
        per_method: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        kept: dict[str, list[dict[str, np.ndarray]]] = {m: [] for m in methods}
        seconds: dict[str, float] = {m: 0.0 for m in methods}
        cols = available[k]
        if len(cols) < len(names):
            log.warning(
                "k=%d: fewer than %d positive or negative training patients for %s: left out at this k",
                k,
                k,
                results["skipped"][k],
            )
        sub = [names[j] for j in cols]
        zs_k = (
            zs
            if len(cols) == len(names)
            else ZeroShotClassifier(sub, zs.positive[cols], zs.negative[cols], zs.logit_scale)
        )
        for d in range(draws if cols else 0):
            rng = np.random.default_rng([seed, k, d])
            picks = [sample_shots(ytr[:, j], k, rng, train.patients) for j in cols]
            union = np.unique(np.concatenate([p for p in picks if p is not None]))
            labels = np.full((union.size, len(cols)), np.nan)
            pos = {int(i): r for r, i in enumerate(union)}
            for c, (j, p) in enumerate(zip(cols, picks, strict=True)):
                for i in p:  # type: ignore[union-attr]
                    labels[pos[int(i)], c] = ytr[i, j]
            images = None
            if "lora" in methods:
                frame = train.frame.iloc[union].reset_index(drop=True)
                data = ev.dataset(frame)
                images = torch.stack([data[i]["image"] for i in range(len(frame))])
            shot_set = ShotSet(
                train.image_features[union],
                None if train.backbone_features is None else train.backbone_features[union],
                labels,
                images,
            )
            for method in methods:
                start = time.perf_counter()
                clf = fit_method(
                    method, model, shot_set, sub, zs_k, features=features, seed=seed + d,
                    **(method_options or {}).get(method, {}),
                )  # fmt: skip
                seconds[method] += time.perf_counter() - start
                logits = classifier_logits(clf, ev, test_split).numpy()
                per_method[method].append(_aurocs(yte[:, cols], logits, sub))
                if keep_scores:
                    kept[method].append({c: logits[:, i].copy() for i, c in enumerate(sub)})
                if save and k == save_k and d == 0:
                    prov = {
                        **provenance_base,
                        "shots": k,
                        "draw": d,
                        "shot_images": int(union.size),
                        "shot_patients": int(train.frame["patient_id"].iloc[union].nunique()),
                        "test_auroc": {c: (None if math.isnan(v) else v) for c, v in per_method[method][-1].items()},
                    }
                    to_save[method] = (clf, prov)
        results["shots"][k] = {
            m: {
                "per_finding": {c: (_mean(r[c] for r in runs) if c in sub else math.nan) for c in names},
                "draw_means": [_mean(r.values()) for r in runs],
                "mean": _mean(_mean(r.values()) for r in runs),
                "sd": float(np.std([_mean(r.values()) for r in runs])) if runs else math.nan,
                "seconds_per_draw": seconds[m] / max(len(runs), 1),
            }
            for m, runs in per_method.items()
        }
        scores["logits"][k] = kept
    if save:
        results["saved"] = {m: str(save_adapter(ckpt, clf, prov)) for m, (clf, prov) in to_save.items()}
    out_dir = Path(output) if output is not None else ckpt.adapters
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_FILE).write_text(json.dumps(jsonable(results), indent=2) + "\n")
    results["results_file"] = str(out_dir / RESULTS_FILE)
    if keep_scores:
        results["scores"] = scores
    return results


def paired_difference_ci(
    scores: dict[str, Any], k: int, method: str, finding: str, n_boot: int = 1000, seed: int = 0
) -> Any:
    """``method`` minus zero-shot test AUROC for ``finding`` at ``k`` (the method's AUROC averaged over the
    draws), with a 95% CI from :func:`medclip.eval.metrics.bootstrap_ci` resampling test patients: each
    resample scores every draw and zero-shot on the same images. Needs ``run_adapt(..., keep_scores=True)``;
    ``None`` when the method has no draw for the finding at ``k``."""
    from medclip.eval.metrics import bootstrap_ci

    names = list(scores["zeroshot_findings"])
    runs = [d[finding] for d in scores["logits"].get(k, {}).get(method, []) if finding in d]
    if not runs or finding not in names:
        return None
    j = names.index(finding)
    y = scores["labels"][:, j]
    known = np.isin(y, (0.0, 1.0))
    y, zs = y[known], scores["zeroshot"][known, j]
    runs = [r[known] for r in runs]
    rows = np.arange(y.size, dtype=float)

    def diff(i: np.ndarray, _: np.ndarray) -> float:
        idx = i.astype(int)
        yy = y[idx]
        if not 0 < yy.sum() < yy.size:
            return math.nan
        return float(np.mean([auroc(yy, r[idx]) for r in runs])) - auroc(yy, zs[idx])

    return bootstrap_ci(diff, rows, rows, groups=scores["patients"][known], n_boot=n_boot, seed=seed)


def format_adapt(results: dict[str, Any]) -> str:
    """The methods x shots table (mean AUROC over findings, mean +- sd over draws) and per finding at the largest k."""
    by_k = {int(k): v for k, v in results["shots"].items()}
    ks = sorted(by_k)

    def fmt(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    header = ["method", "k=0", *(f"k={k}" for k in ks)]
    skipped_at = {int(k): set(v) for k, v in (results.get("skipped") or {}).items()}
    zs_per = results["zeroshot"]["per_finding"]
    # zero-shot over the same findings as each k's column (a k that leaves findings out is compared fairly)
    zs_cells = [
        f"({fmt(_mean(zs_per[c] for c in results['findings'] if c not in skipped_at[k]))})" if skipped_at.get(k) else ""
        for k in ks
    ]
    rows = [["zeroshot", fmt(results["zeroshot"]["mean"]), *zs_cells]]
    for m in results["methods"]:
        cells = []
        for k in ks:
            r = by_k[k].get(m)
            cells.append("n/a" if not r or not r["draw_means"] else f"{fmt(r['mean'])}±{fmt(r['sd'])}")
        rows.append([m, "", *cells])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    feats = (
        "the encoder's features before the projection"
        if results["features"] == "backbone"
        else "the normalised embedding"
    )
    out = [
        f"Few-shot adaptation: mean test AUROC over {len(results['findings'])} finding(s), mean±sd over "
        f"{results['draws']} draw(s) of the shots (by patient); probes, GDA and Tip-Adapter keys on {feats}",
        *lines,
    ]
    skipped = {int(k): v for k, v in (results.get("skipped") or {}).items() if v}
    for k, left in sorted(skipped.items()):
        out.append(
            f"k={k}: left out {', '.join(left)} (fewer than {k} positive or negative training patients); "
            "(zero-shot) in its column is over the same findings"
        )
    done = [k for k in ks if any(r["draw_means"] for r in by_k[k].values())]
    names = results["findings"]
    for k in done:  # per finding at each k (zero-shot as the k=0 reference)
        head = ["method", *names]
        prow = [["zeroshot", *(fmt(results["zeroshot"]["per_finding"][c]) for c in names)]]
        prow += [[m, *(fmt(by_k[k][m]["per_finding"][c]) for c in names)] for m in results["methods"]]
        w = [max(len(str(r[i])) for r in [head, *prow]) for i in range(len(head))]
        out.append(f"\nPer finding at k={k}")
        out += ["  ".join(str(c).ljust(x) for c, x in zip(r, w, strict=True)).rstrip() for r in [head, *prow]]
    return "\n".join(out)
