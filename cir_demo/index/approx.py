"""Optional approximate search with FAISS, for galleries well beyond a million images.

Exact `Gallery` search is the default and is faster than FAISS' exact IndexFlatIP up to at least
100k rows; use `FaissGallery` only when the exact scan gets too slow, and check it with
`recall_at_k_vs_exact`. FAISS is imported lazily (CPU only here).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch

from cir_demo.index import kernels as K
from cir_demo.index.store import check_names

logger = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw")


def _faiss():
    try:
        import faiss
    except ImportError as err:  # optional dependency
        raise ImportError("FaissGallery needs the 'faiss-cpu' package (pip install faiss-cpu)") from err
    return faiss


class FaissGallery:
    """Approximate top-k over N named gallery features, with the same `topk` contract as `Gallery`.

    kind: "ivf" (IndexIVFFlat: nlist ~ 4·sqrt(N) clusters, nprobe of them searched), "hnsw"
    (IndexHNSWFlat with hnsw_m links, ef_search breadth) or "flat" (exact, for comparison).
    Rows FAISS could not fill (too few probed) come back as -1 with score -inf.
    """

    def __init__(self, features: Any, names: Sequence[str], *, kind: str = "ivf", nlist: int | None = None,
                 nprobe: int | None = None, hnsw_m: int = 32, ef_search: int = 128, seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        faiss = _faiss()
        raw = features.detach().cpu().float() if torch.is_tensor(features) else torch.from_numpy(
            np.asarray(features, dtype=np.float32))
        x = torch.nn.functional.normalize(raw, dim=-1).numpy()  # (N, D) fp32 unit rows
        self.names = check_names(names, x.shape[0])
        self.kind, self.dim = kind, int(x.shape[1])
        self.index = self._build(faiss, x, kind, nlist, nprobe, hnsw_m, ef_search, seed)
        self.index.add(x)
        logger.info("FAISS %s gallery of %d x %d", kind, x.shape[0], self.dim)

    @staticmethod
    def _build(faiss, x: np.ndarray, kind: str, nlist: int | None, nprobe: int | None,
               hnsw_m: int, ef_search: int, seed: int):
        n, d = x.shape
        if kind == "flat":
            return faiss.IndexFlatIP(d)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
            return index
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = nprobe or max(1, nlist // 8)
        return index

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def topk(self, queries: torch.Tensor, k: int, exclude_rows: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate top-k: (scores (Q, k) float32, rows (Q, k) int64) on the CPU, best first."""
        q = queries.detach().cpu().float()
        single = q.ndim == 1
        q = q[None] if single else q
        excl = None if exclude_rows is None else torch.as_tensor(exclude_rows).cpu().long().reshape(-1)
        if excl is not None and excl.numel() != q.shape[0]:
            raise ValueError(f"expected {q.shape[0]} exclude_rows (one per query, -1 = none), got {excl.numel()}")
        excluding = K.has_exclusion(excl)
        k = K.check_k(k, len(self), excluding)
        scores, rows = self.index.search(np.ascontiguousarray(q.numpy()), k + int(excluding))
        scores, rows = torch.from_numpy(scores), torch.from_numpy(rows).long()  # (Q, k[+1])
        if excluding:
            scores, rows = _drop_one(scores, rows, excl)  # (Q, k)
        scores = scores.masked_fill(rows < 0, float("-inf"))
        return (scores[0], rows[0]) if single else (scores, rows)


def _drop_one(scores: torch.Tensor, rows: torch.Tensor, excl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop exactly one column per query from (Q, k+1): its excluded row if returned, else the last.

    FAISS marks unfilled slots with row -1, which must not be mistaken for "no exclusion" (-1).
    """
    width = rows.shape[1]
    hit = (rows == excl[:, None]) & (excl[:, None] >= 0)  # (Q, k+1)
    found = hit.any(dim=1)  # (Q,)
    # argmax of a bool row gives its first True; queries without a hit drop their last column
    drop = torch.where(found, hit.int().argmax(dim=1), torch.full_like(found, width - 1, dtype=torch.long))
    keep = torch.arange(width)[None, :] != drop[:, None]  # (Q, k+1), exactly k True per query
    return scores[keep].reshape(-1, width - 1), rows[keep].reshape(-1, width - 1)


def recall_at_k_vs_exact(approx: Any, exact: Any, queries: torch.Tensor, k: int = 50,
                         exclude_rows: Any = None) -> float:
    """Mean fraction (0..1) of the exact top-k rows that `approx.topk` also returns."""
    _, got = approx.topk(queries, k, exclude_rows)
    _, want = exact.topk(queries, k, exclude_rows)
    got, want = got.cpu().reshape(-1, got.shape[-1]), want.cpu().reshape(-1, want.shape[-1])
    hits = (got[:, :, None] == want[:, None, :]).any(dim=2).sum(dim=1)  # (Q,)
    return float(hits.float().mean() / want.shape[1])
