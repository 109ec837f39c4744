"""Few-shot classification on frozen image embeddings, alone and ensembled with zero-shot.

Per finding (binary, positive vs negative), from ``k`` labelled examples of each class:

* linear probe: L2-regularised logistic regression (scikit-learn);
* GDA: the training-free Gaussian discriminant analysis classifier (Wang et al., ICLR 2024,
  "A hard-to-beat baseline for training-free CLIP-based adaptation"): class means and one shared,
  Ledoit-Wolf-shrunk covariance give a linear log-odds ``w.x + b`` in closed form.

Ensemble: few-shot log-odds + ``alpha`` x zero-shot log-odds, each first divided by its standard
deviation over the k-shot training examples (GDA's log-odds are far larger than the zero-shot
ones in high dimension; the scales come from the shots only, never from the test images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .metrics import auroc

FEWSHOT_METHODS = ("linear_probe", "gda")


def gda_fit(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """(w, b) of the binary GDA log-odds ``w.x + b`` with equal class priors (nearest class mean
    when there is one example per class)."""
    from sklearn.covariance import ledoit_wolf

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        raise ValueError("GDA needs examples of both classes")
    mu1, mu0 = x[y].mean(axis=0), x[~y].mean(axis=0)
    centred = np.concatenate([x[y] - mu1, x[~y] - mu0])
    cov, _ = ledoit_wolf(centred, assume_centered=True)
    if np.trace(cov) <= 1e-12:  # one example per class: no within-class spread, use the identity
        cov = np.eye(x.shape[1])  # (GDA reduces to the nearest-class-mean classifier)
    precision = np.linalg.pinv(cov)
    w = precision @ (mu1 - mu0)
    b = -0.5 * (mu1 @ precision @ mu1 - mu0 @ precision @ mu0)
    return w, float(b)


def linear_probe_fit(
    features: np.ndarray, labels: np.ndarray, c: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, float]:
    """(w, b) of an L2 logistic regression on the features (balanced classes)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels).astype(int)
    if y.min() == y.max():
        raise ValueError("a linear probe needs examples of both classes")
    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
    clf.fit(np.asarray(features, dtype=np.float64), y)
    return clf.coef_[0].copy(), float(clf.intercept_[0])


def sample_shots(
    labels: np.ndarray, k: int, rng: np.random.Generator, groups: Sequence[object] | np.ndarray | None = None
) -> np.ndarray | None:
    """Indices of ``k`` positives and ``k`` negatives (at most one image per patient when ``groups`` is
    given, so shots are independent); None when either class has fewer than ``k``."""
    y = np.asarray(labels, dtype=np.float64)
    picked = []
    for cls in (1.0, 0.0):
        idx = np.flatnonzero(y == cls)
        if groups is not None:
            perm = rng.permutation(idx.size)
            _, first = np.unique(np.asarray([str(v) for v in groups])[idx][perm], return_index=True)
            idx = idx[perm][first]
        if idx.size < k:
            return None
        picked.append(rng.choice(idx, size=k, replace=False))
    return np.concatenate(picked)


def evaluate_fewshot(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    findings: list[str],
    zeroshot_logits: np.ndarray | None = None,
    shots: Sequence[int] = (1, 4, 16),
    trials: int = 5,
    alpha: float = 1.0,
    seed: int = 0,
    train_groups: Sequence[object] | np.ndarray | None = None,
    train_zeroshot_logits: np.ndarray | None = None,
) -> dict:
    """Test AUROC per finding for each method and k, mean over ``trials`` random draws of the shots.

    ``*_labels`` are (N, F) with 1 / 0 known and NaN / -1 unknown (ignored). ``zeroshot_logits``
    (N_test, F) enables the ``+zeroshot`` ensembles and the ``zeroshot`` reference row;
    ``train_zeroshot_logits`` (N_train, F) give the zero-shot scale on the shots (else 1).
    Returns ``{"shots": {k: {method: {"per_finding": {cid: auroc}, "mean": auroc}}}, "zeroshot": ...}``.
    """
    xtr, xte = np.asarray(train_features, np.float64), np.asarray(test_features, np.float64)
    ytr, yte = np.asarray(train_labels, np.float64), np.asarray(test_labels, np.float64)
    methods = list(FEWSHOT_METHODS) + (
        [f"{m}+zeroshot" for m in FEWSHOT_METHODS] if zeroshot_logits is not None else []
    )
    out: dict = {"shots": {}, "trials": trials, "alpha": alpha}
    if zeroshot_logits is not None:
        zs = {}
        for j, cid in enumerate(findings):
            known = np.isin(yte[:, j], (0.0, 1.0))
            zs[cid] = auroc(yte[known, j], zeroshot_logits[known, j]) if known.any() else math.nan
        out["zeroshot"] = {"per_finding": zs, "mean": _nanmean(zs.values())}
    for k in shots:
        per_method: dict[str, dict[str, list[float]]] = {m: {cid: [] for cid in findings} for m in methods}
        for j, cid in enumerate(findings):
            known_te = np.isin(yte[:, j], (0.0, 1.0))
            if not known_te.any():
                continue
            for t in range(trials):
                rng = np.random.default_rng([seed, k, j, t])
                idx = sample_shots(ytr[:, j], k, rng, train_groups)
                if idx is None:
                    break
                fits = {
                    "linear_probe": linear_probe_fit(xtr[idx], ytr[idx, j], seed=seed),
                    "gda": gda_fit(xtr[idx], ytr[idx, j]),
                }
                zs_scale = (
                    _scale(np.asarray(train_zeroshot_logits, np.float64)[idx, j])
                    if train_zeroshot_logits is not None
                    else 1.0
                )
                for name, (w, b) in fits.items():
                    logit = xte[known_te] @ w + b
                    per_method[name][cid].append(auroc(yte[known_te, j], logit))
                    if zeroshot_logits is not None:
                        zs = np.asarray(zeroshot_logits, np.float64)[known_te, j]
                        ens = logit / _scale(xtr[idx] @ w + b) + alpha * zs / zs_scale
                        per_method[f"{name}+zeroshot"][cid].append(auroc(yte[known_te, j], ens))
        out["shots"][int(k)] = {
            m: {
                "per_finding": {cid: (_nanmean(v) if v else math.nan) for cid, v in res.items()},
                "mean": _nanmean(_nanmean(v) for v in res.values() if v),
            }
            for m, res in per_method.items()
        }
    return out


def _scale(logits: np.ndarray) -> float:
    """Standard deviation of log-odds (1 when they are constant)."""
    s = float(np.std(logits))
    return s if s > 1e-12 else 1.0


def _nanmean(values) -> float:
    arr = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    return float(arr.mean()) if arr.size else math.nan
