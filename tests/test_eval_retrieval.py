"""EmbeddingIndex search and study-level retrieval metrics."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medclip.eval.retrieval import evaluate_retrieval
from medclip.inference.index import EmbeddingIndex, faiss_available


def test_exact_search_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(300, 16, generator=g), dim=-1)
    queries = F.normalize(torch.randn(7, 16, generator=g), dim=-1)
    index = EmbeddingIndex(gallery, use_faiss=False)
    scores, idx = index.search(queries, 5)
    sim = queries @ gallery.T
    np.testing.assert_array_equal(idx, sim.argsort(dim=1, descending=True)[:, :5].numpy())
    np.testing.assert_allclose(scores, sim.sort(dim=1, descending=True).values[:, :5].numpy(), rtol=1e-6)
    assert not index.uses_faiss and len(index) == 300
    # k beyond the gallery is cut; one query may be 1-D; numpy input works
    s, i = EmbeddingIndex(gallery[:3].numpy()).search(queries[0], 10)
    assert s.shape == (1, 3) and i.shape == (1, 3)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="non-empty"):
        EmbeddingIndex(torch.zeros(0, 4))
    index = EmbeddingIndex(torch.eye(4))
    with pytest.raises(ValueError, match=r"queries must be \(Q, 4\)"):
        index.search(torch.ones(2, 3), 1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(torch.ones(1, 4), 0)
    with pytest.raises(ValueError, match="use_faiss"):
        EmbeddingIndex(torch.eye(4), use_faiss="sometimes")


def test_missing_faiss_names_the_extra_to_install(monkeypatch):
    from medclip.optional import MissingExtraError

    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss were not installed
    with pytest.raises(MissingExtraError, match=r"--faiss yes.*faiss-cpu.*medclip-kit\[index\]"):
        EmbeddingIndex(torch.eye(4), use_faiss=True)
    assert not EmbeddingIndex(torch.eye(4), use_faiss="auto").uses_faiss


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_faiss_index_agrees_with_exact_search():
    g = torch.Generator().manual_seed(1)
    gallery = F.normalize(torch.randn(500, 16, generator=g), dim=-1)
    queries = gallery[:20] + 0.01 * torch.randn(20, 16, generator=g)
    _, exact = EmbeddingIndex(gallery, use_faiss=False).search(queries, 1)
    _, approx = EmbeddingIndex(gallery, use_faiss=True).search(queries, 1)
    assert (exact == approx).mean() > 0.9


def test_study_level_retrieval_counts_any_image_or_report_of_the_study():
    # study s0 has two images, s1 and s2 one each; one report per study
    reports = torch.eye(3)
    images = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [0.8, 0.0, 0.6]])
    result = evaluate_retrieval(images, reports, ["s0", "s0", "s1", "s2"], ["s0", "s1", "s2"], use_faiss=False)
    i2t = result["image_to_report"]
    # image ranks: 1, 2 (report s2 scores 0.8 > 0.6 for s0's second image), 1, 2
    assert result["ranks"]["image_to_report"] == [1, 2, 1, 2]
    assert i2t["R@1"] == 0.5 and i2t["R@5"] == 1.0 and i2t["median_rank"] == 1.5 and i2t["n_queries"] == 4
    # reports s0 and s1 find their image first; report s2's own image (0.6) is beaten by s0's second (0.8)
    assert result["ranks"]["report_to_image"] == [1, 1, 2]
    assert result["n_studies"] == 3
