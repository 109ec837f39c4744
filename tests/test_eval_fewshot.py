"""Few-shot linear probe and training-free GDA on synthetic embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medclip.eval.fewshot import evaluate_fewshot, gda_fit, linear_probe_fit, sample_shots
from medclip.eval.metrics import auroc


def _gaussians(n: int, seed: int, dim: int = 8, shift: float = 1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    x = rng.normal(size=(n, dim))
    x[:, 0] += shift * y
    x[:, 1] += 0.5 * x[:, 0]  # correlated features: GDA's shared covariance matters
    return x, y


def test_gda_equals_the_bayes_direction_with_known_covariance():
    x, y = _gaussians(4000, 0)
    w, b = gda_fit(x, y)
    # with plenty of data the shrunk covariance is close to the true one: AUROC near the optimum
    xt, yt = _gaussians(2000, 1)
    assert auroc(yt, xt @ w + b) > 0.83
    # log-odds are centred: equal priors put the decision boundary between the class means
    m1, m0 = x[y == 1].mean(0), x[y == 0].mean(0)
    assert (m1 @ w + b) > 0 > (m0 @ w + b)
    assert (m1 @ w + b) == pytest.approx(-(m0 @ w + b), rel=1e-6)
    with pytest.raises(ValueError, match="both classes"):
        gda_fit(x[y == 1], y[y == 1])
    # one shot per class: no covariance to estimate, the nearest class mean decides
    w1, b1 = gda_fit(x[[0, 1]], np.array([1.0, 0.0]))
    np.testing.assert_allclose(w1, x[0] - x[1])
    assert b1 == pytest.approx(-0.5 * (x[0] @ x[0] - x[1] @ x[1]))


def test_linear_probe_learns_the_signal():
    x, y = _gaussians(200, 2)
    w, b = linear_probe_fit(x, y)
    xt, yt = _gaussians(500, 3)
    assert auroc(yt, xt @ w + b) > 0.8


def test_sample_shots_balanced_one_image_per_patient():
    y = np.array([1, 1, 1, 0, 0, 0, np.nan, -1])
    groups = ["a", "a", "b", "c", "d", "e", "f", "g"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = sample_shots(y, 2, rng, groups)
        assert sorted(y[idx]) == [0, 0, 1, 1]
        assert len({groups[i] for i in idx}) == 4
    assert sample_shots(y, 3, rng, groups) is None  # only two patients are positive


def test_evaluate_fewshot_improves_with_shots_and_reports_ensembles():
    xtr, ytr = _gaussians(300, 4)
    xte, yte = _gaussians(300, 5)
    zs = (xte[:, 0] - 0.75)[:, None]  # a zero-shot log-odds that sees the signal
    res = evaluate_fewshot(
        xtr,
        ytr[:, None],
        xte,
        yte[:, None],
        ["f"],
        zeroshot_logits=zs,
        shots=(1, 16),
        trials=4,
        train_zeroshot_logits=(xtr[:, 0] - 0.75)[:, None],
    )
    assert set(res["shots"][1]) == {"linear_probe", "gda", "linear_probe+zeroshot", "gda+zeroshot"}
    assert res["shots"][16]["gda"]["mean"] > res["shots"][1]["gda"]["mean"]
    assert res["shots"][16]["gda"]["mean"] > 0.8
    assert res["zeroshot"]["mean"] == pytest.approx(auroc(yte, zs[:, 0]))
    # one shot per class is a noisy probe; the scaled ensemble with a good zero-shot prior beats it
    assert res["shots"][1]["gda+zeroshot"]["mean"] > res["shots"][1]["gda"]["mean"]
    # a finding with too few positives for k shots is n/a, not an error
    ytr2 = np.where(np.arange(300) < 3, 1.0, 0.0)[:, None]
    out = evaluate_fewshot(xtr, ytr2, xte, yte[:, None], ["f"], shots=(4,), trials=2)
    assert math.isnan(out["shots"][4]["gda"]["mean"])
