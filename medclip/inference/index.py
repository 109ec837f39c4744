"""Nearest-neighbour search over embeddings: exact (torch) or approximate (FAISS HNSW).

:class:`EmbeddingIndex` searches by inner product (cosine for normalised embeddings): exactly with
torch matrix products, or with FAISS (HNSW) when ``faiss`` is importable and the gallery is large.
FAISS is optional (the ``index`` extra). The demo's gallery and ``medclip eval``'s retrieval use it.
"""

from __future__ import annotations

import logging
from types import ModuleType

import numpy as np
import torch

from medclip.optional import import_optional

log = logging.getLogger(__name__)

#: Galleries at least this large use an approximate FAISS index under ``use_faiss="auto"``.
FAISS_MIN_GALLERY = 50_000


def _faiss() -> ModuleType:
    return import_optional("faiss", "index", "approximate search (--faiss yes)")


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

    def __init__(
        self, embeddings: torch.Tensor | np.ndarray, use_faiss: bool | str = "auto", hnsw_neighbours: int = 32
    ) -> None:
        emb = torch.as_tensor(
            np.asarray(embeddings, dtype=np.float32) if isinstance(embeddings, np.ndarray) else embeddings
        )
        emb = emb.detach().float().cpu()
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"gallery embeddings must be a non-empty (N, E) array, got shape {tuple(emb.shape)}")
        if use_faiss not in ("auto", True, False):
            raise ValueError(f"use_faiss must be 'auto', True or False, got {use_faiss!r}")
        self.embeddings = emb
        have = faiss_available()
        if use_faiss is True and not have:
            _faiss()  # raises MissingExtraError: one line naming the extra to install
        self.uses_faiss = bool(
            have and (use_faiss is True or (use_faiss == "auto" and emb.shape[0] >= FAISS_MIN_GALLERY))
        )
        self._faiss = None
        if self.uses_faiss:
            faiss = _faiss()
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
        q = (
            torch.as_tensor(np.asarray(queries, dtype=np.float32) if isinstance(queries, np.ndarray) else queries)
            .detach()
            .float()
            .cpu()
        )
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
