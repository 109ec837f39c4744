"""Image <-> report retrieval: a nearest-neighbour index and study-level Recall@K / median rank.

:class:`EmbeddingIndex` searches by inner product (cosine for normalised embeddings): exactly with
torch matrix products, or with FAISS (HNSW) when ``faiss`` is importable and the gallery is large.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from .metrics import median_rank, ranks_from_neighbours, ranks_of_matches, recall_at_k

log = logging.getLogger(__name__)

#: Galleries at least this large use an approximate FAISS index under ``use_faiss="auto"``.
FAISS_MIN_GALLERY = 50_000
RECALL_KS = (1, 5, 10)


def faiss_available() -> bool:
    """True when the optional ``faiss`` package can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class EmbeddingIndex:
    """Inner-product nearest-neighbour search over a gallery of embeddings (N, E).

    ``use_faiss``: ``"auto"`` (FAISS HNSW when importable and N >= :data:`FAISS_MIN_GALLERY`),
    ``True`` (require FAISS) or ``False`` (exact search).
    """

    def __init__(self, embeddings: torch.Tensor | np.ndarray, use_faiss: bool | str = "auto", hnsw_neighbours: int = 32) -> None:
        emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32) if isinstance(embeddings, np.ndarray) else embeddings)
        emb = emb.detach().float().cpu()
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"gallery embeddings must be a non-empty (N, E) array, got shape {tuple(emb.shape)}")
        if use_faiss not in ("auto", True, False):
            raise ValueError(f"use_faiss must be 'auto', True or False, got {use_faiss!r}")
        self.embeddings = emb
        have = faiss_available()
        if use_faiss is True and not have:
            raise ImportError("use_faiss=True but faiss is not installed (pip install faiss-cpu)")
        self.uses_faiss = bool(have and (use_faiss is True or (use_faiss == "auto" and emb.shape[0] >= FAISS_MIN_GALLERY)))
        self._faiss = None
        if self.uses_faiss:
            import faiss

            index = faiss.IndexHNSWFlat(emb.shape[1], hnsw_neighbours, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = 128
            index.add(np.ascontiguousarray(emb.numpy()))
            self._faiss = index
            log.info("FAISS HNSW index over %d embeddings", emb.shape[0])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def search(self, queries: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best gallery items per query: (scores (Q, k) float32, indices (Q, k) int64), best first.
        ``k`` larger than the gallery is cut to its size."""
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32) if isinstance(queries, np.ndarray) else queries).detach().float().cpu()
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"queries must be (Q, {self.embeddings.shape[1]}), got {tuple(q.shape)}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self))
        if self._faiss is not None:
            scores, idx = self._faiss.search(np.ascontiguousarray(q.numpy()), k)
            return scores.astype(np.float32), idx.astype(np.int64)
        scores, idx = [], []
        for chunk in q.split(4096):
            s, i = (chunk @ self.embeddings.T).topk(k, dim=1)
            scores.append(s)
            idx.append(i)
        return torch.cat(scores).numpy(), torch.cat(idx).numpy().astype(np.int64)


def retrieval_ranks(queries: torch.Tensor, gallery: torch.Tensor, query_studies: Sequence[object],
                    gallery_studies: Sequence[object], use_faiss: bool | str = "auto", max_k: int = 100) -> np.ndarray:
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


def evaluate_retrieval(image_features: torch.Tensor, text_features: torch.Tensor, image_studies: Sequence[object],
                       text_studies: Sequence[object], use_faiss: bool | str = "auto", ks: Sequence[int] = RECALL_KS) -> dict[str, dict]:
    """Image->report and report->image retrieval at study level (images / reports of one study all
    count as correct matches). Returns ``{"image_to_report": {...}, "report_to_image": {...}}`` with
    the metrics of :func:`retrieval_metrics`, the gallery sizes and the chance R@K."""
    i2t = retrieval_ranks(image_features, text_features, image_studies, text_studies, use_faiss)
    t2i = retrieval_ranks(text_features, image_features, text_studies, image_studies, use_faiss)
    result = {"image_to_report": retrieval_metrics(i2t, ks), "report_to_image": retrieval_metrics(t2i, ks)}
    result["image_to_report"]["gallery_size"] = int(len(text_studies))
    result["report_to_image"]["gallery_size"] = int(len(image_studies))
    result["n_studies"] = int(len(set(map(str, image_studies)) | set(map(str, text_studies))))
    result["ranks"] = {"image_to_report": i2t.tolist(), "report_to_image": t2i.tolist()}
    return result
