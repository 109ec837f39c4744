"""Image <-> report retrieval at study level: Recall@K and median rank.

The search itself is :class:`medclip.inference.index.EmbeddingIndex` (exact, or FAISS HNSW for large galleries).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medclip.inference.index import EmbeddingIndex

from .metrics import median_rank, ranks_from_neighbours, ranks_of_matches, recall_at_k

RECALL_KS = (1, 5, 10)


def retrieval_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_studies: Sequence[object],
    gallery_studies: Sequence[object],
    use_faiss: bool | str = "auto",
    max_k: int = 100,
) -> np.ndarray:
    """Study-level 1-based rank of the first correct gallery item per query (exact full ranking, or,
    with a FAISS index, within the top ``max_k``: queries with no match there get ``max_k + 1``)."""
    index = EmbeddingIndex(gallery, use_faiss=use_faiss)
    if index.uses_faiss:
        _, nb = index.search(queries, max_k)
        return ranks_from_neighbours(nb, query_studies, gallery_studies)
    sim = (torch.as_tensor(queries).float() @ index.embeddings.T).numpy()
    return ranks_of_matches(sim, query_studies, gallery_studies)


def retrieval_metrics(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """{"R@1": ..., "R@5": ..., "R@10": ..., "median_rank": ..., "n_queries": ...}."""
    out = {f"R@{k}": recall_at_k(ranks, k) for k in ks}
    out["median_rank"] = median_rank(ranks)
    out["n_queries"] = int((np.asarray(ranks) > 0).sum())
    return out


def evaluate_retrieval(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    image_studies: Sequence[object],
    text_studies: Sequence[object],
    use_faiss: bool | str = "auto",
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, dict]:
    """Image->report and report->image retrieval at study level (images / reports of one study all
    count as correct matches). Returns ``{"image_to_report": {...}, "report_to_image": {...}}`` with
    the metrics of :func:`retrieval_metrics`, the gallery sizes and the chance R@K."""
    i2t = retrieval_ranks(image_features, text_features, image_studies, text_studies, use_faiss)
    t2i = retrieval_ranks(text_features, image_features, text_studies, image_studies, use_faiss)
    result: dict[str, Any] = {
        "image_to_report": retrieval_metrics(i2t, ks),
        "report_to_image": retrieval_metrics(t2i, ks),
    }
    result["image_to_report"]["gallery_size"] = int(len(text_studies))
    result["report_to_image"]["gallery_size"] = int(len(image_studies))
    result["n_studies"] = int(len(set(map(str, image_studies)) | set(map(str, text_studies))))
    result["ranks"] = {"image_to_report": i2t.tolist(), "report_to_image": t2i.tolist()}
    return result
