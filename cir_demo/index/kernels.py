"""Top-k and rank kernels on similarity scores (pure tensor code, any device).

The tie rule, everywhere: a ranking is sorted by score descending, then by gallery row
ascending. The rank of target row t is 1 + #{r : s_r > s_t} + #{r : s_r == s_t and r < t}, with
excluded rows never counted, and a top-k is exactly the first k rows of that ranking (also when
several rows tie at the k-th score). `beats` is that rule; every function here goes through it.

Three families live here:

* plain kernels (`exact_topk`, `exact_ranks`, `ranks_from_scores`, `rank_among`) on scores
  computed in the dtype they are given, one GEMM per query block — used in fp32 by
  `cir_demo.eval.metrics`;
* `pair_scores`, the canonical fp32 score of (query, stored row): a fixed pairwise summation
  tree made of elementwise ops, so the same pair gets the same bits whatever the batch shape or
  device (a GEMM's summation order is not fixed), and identical rows tie exactly;
* a two-stage filter (`error_bound`, `filtered_topk`, `filtered_ranks`): scan the whole gallery
  in a fast dtype, keep every row that *could* be in the answer given a rigorous bound on the
  difference between scan and canonical scores, and rescore only those rows canonically. The
  result equals ranking every row by its canonical score, at the speed of the scan.
"""

from __future__ import annotations

import logging
import numbers
from typing import Callable

import torch

logger = logging.getLogger(__name__)

# Bound on the (Q, N) score block materialised at once; keeps batched search memory-sane.
MAX_BLOCK_ELEMS = 1 << 25

# Rescoring a row costs several times a row of a blocked dense scan (random gathers, the
# summation tree): past N / DENSE_FRACTION candidate rows, rescore every row instead.
DENSE_FRACTION = 8

U32 = 2.0 ** -24  # unit roundoff of fp32
_LAST_DIM_STEPS_DOWN_TO = 16  # tree_sum: below this width, sum along a leading dim instead

# Rescoring callbacks: canonical fp32 scores for (query index, gallery row) pairs.
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_k(k, n_rows: int, excluding: bool) -> int:
    """Validate k and clamp it to the rows that can be returned (one fewer when excluding)."""
    # bool is an int subclass and a float like 50.0 is not a whole-number type: both refused.
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"K must be a whole number ≥ 1, got {k!r}")
    available = n_rows - (1 if excluding else 0)
    if available <= 0:
        raise ValueError("the gallery has no row left to return")
    return min(int(k), available)


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


# ---- the tie rule ----------------------------------------------------------------------------
def _column_rows(scores: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Gallery rows of the columns of scores (Q, C): rows itself, or the column index."""
    if rows is not None:
        return rows
    return torch.arange(scores.shape[1], device=scores.device).expand_as(scores)  # (Q, C)


def beats(scores: torch.Tensor, rows: torch.Tensor, target_scores: torch.Tensor,
          target_rows: torch.Tensor) -> torch.Tensor:
    """True where a row ranks before the target: higher score, or equal score and lower row.

    All arguments broadcast together (e.g. (Q, C) against (Q, 1)); a row never beats itself.
    """
    return (scores > target_scores) | ((scores == target_scores) & (rows < target_rows))


def rank_among(scores: torch.Tensor, target_scores: torch.Tensor, target_rows: torch.Tensor,
               rows: torch.Tensor | None = None) -> torch.Tensor:
    """1-based ranks (Q,) of targets among the columns of scores (Q, C) under the tie rule.

    rows (Q, C): the gallery row of each column (None: column c is row c). Columns at -inf
    (excluded rows, padding) never count against a finite target.
    """
    rows = _column_rows(scores, rows)
    return beats(scores, rows, target_scores[:, None], target_rows[:, None]).sum(dim=1) + 1


def order_by_rule(scores: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each line of (scores (Q, C), rows (Q, C)) by score descending, then row ascending."""
    by_row = rows.argsort(dim=1)  # (Q, C); equal rows (only -1 pads) have equal scores
    scores, rows = scores.gather(1, by_row), rows.gather(1, by_row)
    by_score = scores.argsort(dim=1, descending=True, stable=True)  # stable: keeps row order
    return scores.gather(1, by_score), rows.gather(1, by_score)


def topk_by_rule(scores: torch.Tensor, k: int,
                 rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k columns of each line's ranking: (scores (Q, k), gallery rows (Q, k)).

    scores (Q, C) with k <= C; rows (Q, C) distinct gallery rows of the columns (None: column
    c is row c). torch.topk picks arbitrarily among ties, so a tie straddling the k-th place
    is settled here by row, and ties inside the top k are put in row order.
    """
    rows = _column_rows(scores, rows)
    top = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)  # one extra to see a straddle
    vals, cols = top.values[:, :k], top.indices[:, :k]  # (Q, k), sorted by score
    settled = top.values.shape[1] > k and bool((top.values[:, k] == top.values[:, k - 1]).any())
    if settled:
        s = torch.nonzero(top.values[:, k] == top.values[:, k - 1]).squeeze(1)  # (S,) straddling
        cols = cols.clone()
        cols[s] = _settle_straddle(scores[s], rows[s], vals[s, k - 1], k)
        vals = scores.gather(1, cols)  # (Q, k), no longer sorted
    picked = rows.gather(1, cols)  # (Q, k)
    if settled or bool((vals[:, 1:] == vals[:, :-1]).any()):
        vals, picked = order_by_rule(vals, picked)
    return vals, picked


def _settle_straddle(scores: torch.Tensor, rows: torch.Tensor, kth: torch.Tensor, k: int) -> torch.Tensor:
    """Columns (S, k): every column above the k-th score, then the lowest rows among its ties."""
    # key -1: must be taken (fewer than k of them); row id: a tie, lowest rows first; else last.
    above, tied = scores > kth[:, None], scores == kth[:, None]  # (S, C)
    last = torch.iinfo(torch.long).max
    key = torch.where(above, torch.full_like(rows, -1), torch.where(tied, rows, torch.full_like(rows, last)))
    return torch.topk(key, k, dim=1, largest=False).indices  # (S, k)


# ---- plain kernels (one GEMM per query block) ------------------------------------------------
def exact_topk(queries: torch.Tensor, matrix: torch.Tensor, k: int,
               exclude_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of `queries @ matrix.T` in the matrix dtype, blocked over queries, by the tie rule.

    queries (Q, D), matrix (N, D) on one device; exclude_rows (Q,) int64 or None (-1 = none).
    Returns (scores (Q, k) float32, rows (Q, k) int64), best first; k is clamped to the rows
    available (N, or N-1 when any query excludes a row).
    """
    k = check_k(k, matrix.shape[0], has_exclusion(exclude_rows))
    out_s, out_r = [], []
    for a, b in query_blocks(queries.shape[0], matrix.shape[0]):
        scores = (queries[a:b].to(matrix.dtype) @ matrix.T).float()  # (B, N)
        mask_rows(scores, None if exclude_rows is None else exclude_rows[a:b])
        vals, rows = topk_by_rule(scores, k)
        out_s.append(vals)
        out_r.append(rows)
    return torch.cat(out_s), torch.cat(out_r)


def ranks_from_scores(scores: torch.Tensor, target_rows: torch.Tensor,
                      exclude_rows: torch.Tensor | None = None) -> torch.Tensor:
    """1-based ranks (Q,) of target_rows in full score rows (Q, N); scores is modified in place."""
    target = scores.gather(1, target_rows[:, None])[:, 0]  # (Q,)
    mask_rows(scores, exclude_rows)
    return rank_among(scores, target, target_rows)


def exact_ranks(queries: torch.Tensor, matrix: torch.Tensor, target_rows: torch.Tensor,
                exclude_rows: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of target_rows[q] in the ranking of `queries[q] @ matrix.T` (tie rule).

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


# ---- canonical scores --------------------------------------------------------------------------
def tree_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim (..., D) -> (...) in a fixed pairwise order, shape- and device-independent.

    Equivalent to zero-padding D to a power of two and repeatedly adding the upper half onto
    the lower half; each step is one elementwise add, so the rounding never depends on how a
    library blocks a reduction. Overwrites x. Error at most gamma_ceil(log2 D) of the absolute
    sum, below the gamma_D the bounds use.
    """
    width = x.shape[-1]
    half = 1 << max(0, (width - 1).bit_length() - 1)  # largest power of two below width
    if width > 1:
        x[..., :width - half] += x[..., half:]  # the zero padding would add nothing elsewhere
    x = x[..., :half]
    while half > _LAST_DIM_STEPS_DOWN_TO:
        half //= 2
        x[..., :half] += x[..., half:2 * half]
        x = x[..., :half]
    # Narrow last-dim slices are slow to add (tiny inner loops); the same additions run along
    # a contiguous leading dim instead: layout changes which memory is read, not the result.
    x = x.movedim(-1, 0).contiguous()  # (half, ...)
    while half > 1:
        half //= 2
        x[:half] += x[half:2 * half]
        x = x[:half]
    return x[0]


def pair_scores(raw: torch.Tensor, queries: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Canonical fp32 scores (...) = (raw · query) / norm for broadcastable (..., D) pairs."""
    products = torch.mul(raw, queries.float())  # fp16 raw is promoted exactly; fp32 products
    return tree_sum(products) / norms


def row_norms(raw: torch.Tensor) -> torch.Tensor:
    """Canonical fp32 L2 norms (...) of rows (..., D), clamped like F.normalize."""
    x = raw.float()
    return tree_sum(x * x).sqrt().clamp_min(1e-12)


# ---- the two-stage filter ----------------------------------------------------------------------
def unit_roundoff(dtype: torch.dtype) -> float:
    """Relative error of rounding an fp32 value to `dtype` (0 for fp32 and wider)."""
    return {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}.get(dtype, 0.0)


def error_bound(query_norms: torch.Tensor, dim: int, in_dtype: torch.dtype, out_dtype: torch.dtype,
                safety: float = 1.0, in_roundoff: float | None = None) -> torch.Tensor:
    """Worst-case |scan score - canonical score| per query (Q,), for unit-norm scan rows.

    The filter compares scan scores with canonical (rescored) ones, so the bound is the scan's
    error plus the rescorer's, each against the real score s = x·q/|x| of a stored row x
    (u = 2^-24, g = gamma_D = D·u/(1 - D·u), valid for any summation order):
    * norm n' (fp32 sum of squares, sqrt): |n'/n - 1| <= rho = g/2 + u + g·u;
    * scan: x/n' rounded to fp32 then to in_dtype (u_in, or `in_roundoff`, e.g. TF32), the
      query to in_dtype, products summed in fp32 (g), output rounded to out_dtype (u_out):
      |scan - s| <= |q|·[rho + (eta + g(1 + eta))(1 + u_out) + u_out] / (1 - rho),
      eta = (1 + u)(1 + u_in)^2 - 1;
    * rescorer (`pair_scores`, fp32): |canonical - s| <= |q|·[(g + rho)(1 + u)/(1 - rho) + u],
      about g·|q| = 3.8e-5·|q| at D = 640, which a bound on the scan alone leaves out.
    1% headroom covers the second-order terms dropped above; `safety` widens the scan part only,
    for kernels not known to accumulate in fp32 as assumed.
    """
    u, u_out = U32, unit_roundoff(out_dtype)
    u_in = unit_roundoff(in_dtype) if in_roundoff is None else in_roundoff
    g = dim * u / (1 - dim * u)
    rho = g / 2 + u + g * u
    eta = (1 + u) * (1 + u_in) ** 2 - 1
    scan = (rho + (eta + g * (1 + eta)) * (1 + u_out) + u_out) / (1 - rho)
    rescore = (g + rho) * (1 + u) / (1 - rho) + u
    return query_norms.float() * ((scan * safety + rescore) * 1.01)  # (Q,)


def filtered_topk(approx: torch.Tensor, k: int, eps: torch.Tensor,
                  rescore: Callable[[torch.Tensor], torch.Tensor],
                  dense: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by canonical score (tie rule) from scan scores within eps (Q,) of it.

    approx (Q, N) with excluded rows already at -inf; rescore(rows (Q, C)) returns canonical
    scores (Q, C) of those rows; dense() returns every canonical score (Q, N), used when more
    than N / DENSE_FRACTION rows would need rescoring. The k-th canonical score is at least
    (k-th scan score - eps), so every row that can be in the top k, ties at the k-th place
    included, scans at least (k-th scan score - 2·eps): exactly those rows are rescored.
    """
    n = approx.shape[1]
    top = torch.topk(approx, min(n, max(4 * k, k + 256)), dim=1)  # usually holds every candidate
    threshold = (top.values[:, k - 1].float() - 2 * eps)[:, None]  # (Q, 1)
    if top.values.shape[1] < n and bool((top.values[:, -1:].float() >= threshold).any()):
        n_cand = int((approx >= threshold).sum(dim=1).max())
        if n_cand * DENSE_FRACTION > n:
            return topk_by_rule(mask_like(dense(), approx), k)
        top = torch.topk(approx, n_cand, dim=1)
    # top is sorted, so the candidates are a prefix; trim to the longest one over the block
    width = max(k, int((top.values.float() >= threshold).sum(dim=1).max()))
    values, cand = top.values[:, :width], top.indices[:, :width]  # (Q, C)
    exact = rescore(cand)  # (Q, C) float32
    # Columns below a query's threshold are real rows that cannot reach its top k, but an
    # excluded row (-inf) can only be among them and must stay out.
    exact = exact.masked_fill(values == float("-inf"), float("-inf"))
    return topk_by_rule(exact, k, cand)


def mask_like(exact: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Copy approx's -inf (excluded) entries onto exact scores of the same shape."""
    return exact.masked_fill(approx == float("-inf"), float("-inf"))


def filtered_ranks(approx: torch.Tensor, target_scores: torch.Tensor, eps: torch.Tensor,
                   rescore_pairs: PairScorer, target_rows: torch.Tensor,
                   dense: Callable[[], torch.Tensor], max_pairs: int = 1 << 14) -> torch.Tensor:
    """Ranks (Q,) (tie rule) of target_rows whose canonical scores are target_scores (Q,).

    approx (Q, N) has excluded rows at -inf. Rows scanning above target + eps certainly beat
    the target; rows within +-eps (ties included, the target itself too) are rescored with
    rescore_pairs(query_idx (M,), rows (M,)) -> (M,) in blocks of max_pairs, or, when that band
    is wide, every row via dense() -> (Q, N). The target row never counts against itself.
    """
    lo = (target_scores - eps)[:, None]  # (Q, 1)
    hi = (target_scores + eps)[:, None]  # (Q, 1)
    band = (approx >= lo) & (approx <= hi)  # (Q, N)
    if int(band.sum()) * DENSE_FRACTION > band.numel():
        return rank_among(mask_like(dense(), approx), target_scores, target_rows)
    ahead = (approx > hi).sum(dim=1)  # (Q,)
    q_idx, rows = torch.nonzero(band, as_tuple=True)  # (M,), (M,)
    for a in range(0, q_idx.numel(), max_pairs):
        qi, ri = q_idx[a:a + max_pairs], rows[a:a + max_pairs]
        wins = beats(rescore_pairs(qi, ri), ri, target_scores[qi], target_rows[qi])  # (m,)
        ahead = ahead.index_add(0, qi, wins.long())
    return ahead + 1
