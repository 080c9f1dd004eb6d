"""Exact top-k and rank kernels on similarity scores (pure tensor code, any device).

Two families live here:

* plain kernels (`exact_topk`, `exact_ranks`) that score in the dtype they are given — used in
  fp32 by `cir_demo.eval.metrics` and by `Gallery` when it searches in fp32;
* a two-stage filter for reduced-precision search (`error_bound`, `filtered_topk`,
  `filtered_ranks`): score the whole gallery in bf16/fp16, keep every row that *could* be in the
  answer given a rigorous bound on the rounding error, and rescore only those rows in fp32. The
  result equals fp32 search over the same stored features, at the speed of the low-precision scan.

Ties count optimistically: a rank is 1 + the number of rows scoring *strictly* higher.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

logger = logging.getLogger(__name__)

# Bound on the (Q, N) score block materialised at once; keeps batched search memory-sane.
MAX_BLOCK_ELEMS = 1 << 25

# Rescoring a row costs ~7x a row of a blocked dense fp32 scan (random gathers): past
# N / DENSE_FRACTION candidate rows, scan densely instead.
DENSE_FRACTION = 8

# Rescoring callbacks: exact fp32 scores for (query index, gallery row) pairs.
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_k(k: int, n_rows: int, excluding: bool) -> int:
    """Validate k and clamp it to the rows that can be returned (one fewer when excluding)."""
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    available = n_rows - (1 if excluding else 0)
    if available <= 0:
        raise ValueError("the gallery has no row left to return")
    return min(k, available)


def has_exclusion(exclude_rows: torch.Tensor | None) -> bool:
    """True when at least one query excludes a row (-1 means 'none')."""
    return exclude_rows is not None and bool((exclude_rows >= 0).any())


def mask_rows(scores: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Set scores[q, rows[q]] to -inf in place where rows[q] >= 0; returns scores."""
    if rows is None:
        return scores
    valid = rows >= 0  # (Q,)
    if bool(valid.any()):
        q_idx = torch.nonzero(valid).squeeze(1)  # (V,)
        scores[q_idx, rows[q_idx]] = float("-inf")
    return scores


def query_blocks(n_queries: int, n_rows: int):
    """Yield (start, end) query slices whose (block, N) score matrix stays under the budget."""
    step = max(1, MAX_BLOCK_ELEMS // max(n_rows, 1))
    for start in range(0, n_queries, step):
        yield start, min(start + step, n_queries)


def exact_topk(queries: torch.Tensor, matrix: torch.Tensor, k: int,
               exclude_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of `queries @ matrix.T` in the matrix dtype, blocked over queries.

    queries (Q, D), matrix (N, D) on one device; exclude_rows (Q,) int64 or None (-1 = none).
    Returns (scores (Q, k) float32, rows (Q, k) int64), best first; k is clamped to the rows
    available (N, or N-1 when any query excludes a row).
    """
    k = check_k(k, matrix.shape[0], has_exclusion(exclude_rows))
    out_s, out_r = [], []
    for a, b in query_blocks(queries.shape[0], matrix.shape[0]):
        scores = (queries[a:b].to(matrix.dtype) @ matrix.T).float()  # (B, N)
        mask_rows(scores, None if exclude_rows is None else exclude_rows[a:b])
        top = torch.topk(scores, k, dim=1)
        out_s.append(top.values)
        out_r.append(top.indices)
    return torch.cat(out_s), torch.cat(out_r)


def ranks_from_scores(scores: torch.Tensor, target_rows: torch.Tensor,
                      exclude_rows: torch.Tensor | None = None) -> torch.Tensor:
    """1-based ranks (Q,) of target_rows in full score rows (Q, N); scores is modified in place."""
    target = scores.gather(1, target_rows[:, None])  # (Q, 1)
    mask_rows(scores, exclude_rows)
    return (scores > target).sum(dim=1) + 1


def exact_ranks(queries: torch.Tensor, matrix: torch.Tensor, target_rows: torch.Tensor,
                exclude_rows: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of target_rows[q] in the ranking of `queries[q] @ matrix.T`.

    Excluded rows (exclude_rows[q] >= 0) are removed from the ranking first. Returns (Q,) int64.
    """
    if exclude_rows is not None and bool((target_rows == exclude_rows).any()):
        raise ValueError("a target row is also the excluded row of its query")
    ranks = []
    for a, b in query_blocks(queries.shape[0], matrix.shape[0]):
        scores = (queries[a:b].to(matrix.dtype) @ matrix.T).float()  # (B, N)
        ranks.append(ranks_from_scores(scores, target_rows[a:b],
                                       None if exclude_rows is None else exclude_rows[a:b]))
    return torch.cat(ranks)


def unit_roundoff(dtype: torch.dtype) -> float:
    """Relative rounding error of round-to-nearest in `dtype` (0 for fp32 and wider)."""
    return {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}.get(dtype, 0.0)


def error_bound(query_norms: torch.Tensor, dim: int, in_dtype: torch.dtype,
                out_dtype: torch.dtype, safety: float = 1.0) -> torch.Tensor:
    """Worst-case |approximate - fp32 score| per query, for unit-norm gallery rows.

    Inputs rounded to `in_dtype` give at most (2u + u^2)·|q| (Cauchy-Schwarz); fp32
    accumulation over `dim` terms adds gamma_dim·|q|; rounding the output to `out_dtype` adds
    u_out·|s|. `safety` widens it for kernels whose accumulation order is not guaranteed.
    """
    u, u_out = unit_roundoff(in_dtype), unit_roundoff(out_dtype)
    gamma = dim * 2.0 ** -24 / (1 - dim * 2.0 ** -24)
    per_unit = (2 * u + u * u) + gamma * (1 + u) ** 2 + u_out * (1 + 3 * u)
    return query_norms.float() * (per_unit * 1.01 * safety)  # (Q,)


def filtered_topk(approx: torch.Tensor, k: int, eps: torch.Tensor,
                  rescore: Callable[[torch.Tensor], torch.Tensor],
                  dense: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k from approximate scores whose error is at most eps per query.

    approx (Q, N) with excluded rows already at -inf; eps (Q,); rescore(rows (Q, C)) returns the
    exact fp32 scores (Q, C) of those rows; dense() returns all exact scores (Q, N), used when
    more than N / DENSE_FRACTION rows would need rescoring. Every row that can be in the exact
    top-k scores at least (k-th approximate score - 2·eps), so only those are rescored.
    """
    n = approx.shape[1]
    top = torch.topk(approx, min(n, max(4 * k, k + 256)), dim=1)  # usually holds every candidate
    threshold = (top.values[:, k - 1].float() - 2 * eps)[:, None]  # (Q, 1)
    if top.values.shape[1] < n and bool((top.values[:, -1:].float() >= threshold).any()):
        n_cand = int((approx >= threshold).sum(dim=1).max())
        if n_cand * DENSE_FRACTION > n:
            exact = mask_rows_like(dense(), approx)
            top = torch.topk(exact, k, dim=1)
            return top.values, top.indices
        top = torch.topk(approx, n_cand, dim=1)
    cand = top.indices  # (Q, C)
    exact = rescore(cand)  # (Q, C) float32
    # Candidates below a query's threshold are real rows and harmless, but an excluded row
    # (-inf) can only be among them and must stay out.
    exact = exact.masked_fill(top.values == float("-inf"), float("-inf"))
    best = torch.topk(exact, k, dim=1)
    return best.values, cand.gather(1, best.indices)


def mask_rows_like(exact: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Copy approx's -inf (excluded) entries onto exact scores of the same shape."""
    return exact.masked_fill(approx == float("-inf"), float("-inf"))


def filtered_ranks(approx: torch.Tensor, target_scores: torch.Tensor, eps: torch.Tensor,
                   rescore_pairs: PairScorer, target_rows: torch.Tensor,
                   dense: Callable[[], torch.Tensor], max_pairs: int = 1 << 14) -> torch.Tensor:
    """Exact 1-based ranks of target_rows (Q,) whose exact scores are target_scores (Q,).

    approx (Q, N) has excluded rows at -inf. Rows with approx > target + eps certainly beat the
    target; rows within +-eps are rescored with rescore_pairs(query_idx (M,), rows (M,)) -> (M,)
    fp32, in blocks of max_pairs, or, when that band is wide, every row via dense() -> (Q, N).
    The target row itself never counts.
    """
    lo = (target_scores - eps)[:, None]  # (Q, 1)
    hi = (target_scores + eps)[:, None]  # (Q, 1)
    band = (approx >= lo) & (approx <= hi)  # (Q, N)
    if int(band.sum()) * DENSE_FRACTION > band.numel():
        return ranks_from_scores(mask_rows_like(dense(), approx), target_rows)
    above = (approx > hi).sum(dim=1)  # (Q,)
    q_idx, rows = torch.nonzero(band, as_tuple=True)  # (M,), (M,)
    for a in range(0, q_idx.numel(), max_pairs):
        qi, ri = q_idx[a:a + max_pairs], rows[a:a + max_pairs]
        wins = (rescore_pairs(qi, ri) > target_scores[qi]) & (ri != target_rows[qi])  # (m,)
        above = above.index_add(0, qi, wins.long())
    return above + 1
