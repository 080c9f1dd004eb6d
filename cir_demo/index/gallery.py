"""`Gallery`: exact nearest-neighbour search over gallery features resident on one device.

The gallery is normalised once at construction and kept on the device in a fast scan dtype
(fp16 on CUDA; on a CPU whichever of fp32 / bf16 / fp16 ran the whole exact top-k fastest when
timed once per process, see ``resolve_dtype``), next to the raw fp16 features. Every
search scans the whole gallery in that dtype, then rescores with the canonical fp32 score
(`kernels.pair_scores`) every row the scan's error bound cannot rule out (see
`cir_demo.index.kernels`). Results therefore equal ranking every stored row by its canonical
fp32 score, ties broken by gallery row (lower row first), whatever the scan dtype, the query
batch or the call: `topk`, `rank_of`, `scores_of` and `subset_ranking` agree bit for bit.
Timings: `python -m cir_demo bench` (cir_demo/bench/topk.py); no figure is kept here.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cir_demo.config.runtime import default_device, dtype_of
from cir_demo.index import kernels as K
from cir_demo.index.store import GalleryIndex, check_names

logger = logging.getLogger(__name__)

# fp32 elements per canonical rescoring step: CPU steps stay cache-sized (the summation tree
# makes several passes over them); CUDA steps are large so that few kernels are launched.
_RESCORE_ELEMS = {"cpu": 1 << 19, "cuda": 1 << 22}
# The error bound assumes the scan GEMM accumulates in fp32. On CPU, observed scan errors stay
# within it (tests/test_index.py); no GPU has run this code, so how cuBLAS accumulates the fp16
# scan is unchecked, and on CUDA the scan part of the bound is widened by this factor: an
# unmeasured margin, not a derived one, which would not cover fp16 accumulation.
_CUDA_SAFETY = 4.0
# fp32 scans on CUDA may run at reduced input precision (torch.set_float32_matmul_precision):
# "high" allows TF32 (10 stored mantissa bits), "medium" bf16 (7); bounds allow truncation.
_FP32_MATMUL_ROUNDOFF = {"highest": 0.0, "high": 2.0 ** -10, "medium": 2.0 ** -7}
PROBE_ROWS = 65_536        # the scan-dtype probe times a gallery of at most this many rows
_SCAN_CHOICES: dict = {}   # (device type, dim, size bucket) -> dtype, probed once per process


def resolve_dtype(compute_dtype: str | torch.dtype, device: torch.device, n_rows: int = 0, dim: int = 640,
                  *, timer: Callable[[torch.dtype, int, int], float] | None = None) -> torch.dtype:
    """Scan dtype. "auto": fp16 on CUDA; on a CPU the fastest of fp32 / bf16 / fp16 for a gallery of
    this size, timed once per process on random unit vectors (the whole exact top-k: scan, bound
    and rescoring), because which is fastest depends on the machine's kernels, not on its flags:
    fp16 scans beat bf16 on both an AVX2-only EPYC and an AVX512-BF16 one, and fp32 wins on small
    galleries where rescoring costs more than the scan saves. Results are exact in every dtype.
    ``timer(dtype, n_rows, dim) -> ms`` replaces the measurement (tests)."""
    if isinstance(compute_dtype, torch.dtype):
        return compute_dtype
    if compute_dtype != "auto":
        return dtype_of(compute_dtype, "compute_dtype ('auto' or a precision)")
    if device.type == "cuda":
        return torch.float16
    key = (device.type, dim, max(1, n_rows).bit_length())
    if timer is None and key in _SCAN_CHOICES:
        return _SCAN_CHOICES[key]
    timer = timer or _time_topk
    timings = {dtype: timer(dtype, n_rows, dim) for dtype in (torch.float32, torch.bfloat16, torch.float16)}
    choice = min(timings, key=timings.get)
    if timings[torch.float32] <= 1.05 * timings[choice]:  # near-equal: keep the simplest
        choice = torch.float32
    logger.debug("scan dtype probe for %d x %d: %s -> %s", n_rows, dim, timings, choice)
    _SCAN_CHOICES[key] = choice
    return choice


def _time_topk(dtype: torch.dtype, n_rows: int, dim: int, repeats: int = 7) -> float:
    """Median ms of one top-50 query over a random gallery like this one (scaled from PROBE_ROWS)."""
    rows = max(64, min(n_rows, PROBE_ROWS))
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(rows, dim, generator=gen)  # (R, D)
    gallery = Gallery(feats, [str(i) for i in range(rows)], device="cpu", compute_dtype=dtype)
    query = torch.nn.functional.normalize(feats[rows // 2] + 0.5 * torch.randn(dim, generator=gen), dim=0)
    gallery.topk(query, 50)  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        gallery.topk(query, 50)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times) * max(1.0, n_rows / rows)


class Gallery:
    """Exact top-k / rank / subset search over N named gallery features (vectors only).

    features: raw (N, D) CLIP image features (any float dtype, tensor or array; stored fp16);
    names: N unique names, row-aligned. device: default CUDA if available, else CPU.
    compute_dtype: "auto" | "fp16" | "bf16" | "fp32": the scan precision only. Results equal
    ranking by the canonical fp32 score with ties broken by gallery row, in every dtype.
    Queries are (Q, D) or (D,) L2-normalised float tensors on any device.
    """

    def __init__(self, features: Any, names: Sequence[str], *, device: str | torch.device | None = None,
                 compute_dtype: str | torch.dtype = "auto", manifest: dict | None = None):
        raw = torch.from_numpy(np.asarray(features)) if not torch.is_tensor(features) else features
        if raw.ndim != 2 or raw.shape[0] == 0 or not raw.is_floating_point():
            raise ValueError(f"features must be a non-empty float (N, D) matrix, got {tuple(raw.shape)}")
        self.names = check_names(names, raw.shape[0])
        self.row_of = {name: i for i, name in enumerate(self.names)}
        self.manifest = dict(manifest or {})
        self.device = default_device(device)
        self.compute_dtype = resolve_dtype(compute_dtype, self.device, raw.shape[0], raw.shape[1])
        # Normalise where the features are (the CPU, as loaded), then only transfer: no CUDA work
        # happens at construction (ZeroGPU attaches a GPU only inside a request).
        host = raw.detach().to(torch.float16)
        if not bool(torch.isfinite(host).all()):
            raise ValueError("features contain NaN/inf (or values beyond the fp16 range)")
        norms = torch.empty(len(self.names), device=host.device)  # (N,) fp32, canonical
        matrix = torch.empty_like(host, dtype=self.compute_dtype)  # (N, D) unit rows
        step = max(1, (1 << 22) // host.shape[1])
        for a in range(0, len(self.names), step):  # blocked: never a full fp32 copy
            block = host[a:a + step].float()  # (B, D)
            norms[a:a + step] = K.row_norms(block)
            matrix[a:a + step] = (block / norms[a:a + step, None]).to(self.compute_dtype)
        self._raw = host.to(self.device).contiguous()  # (N, D) raw fp16
        self._norms, self._matrix = norms.to(self.device), matrix.to(self.device)
        self._step_elems = _RESCORE_ELEMS.get(self.device.type, 1 << 22)
        self._out_dtype_probed = None
        logger.debug("gallery of %d x %d on %s, scan dtype %s", len(self), self.dim, self.device,
                     self.compute_dtype)

    @classmethod
    def from_index(cls, index: GalleryIndex, **kwargs: Any) -> "Gallery":
        """A Gallery over a loaded index (keeps its manifest); kwargs as for the constructor."""
        return cls(index.features, index.names, manifest=index.manifest, **kwargs)

    def __len__(self) -> int:
        return int(self._raw.shape[0])

    @property
    def dim(self) -> int:
        return int(self._raw.shape[1])

    # ---- names and stored features -------------------------------------------------------
    def rows_of(self, names: Sequence[str]) -> torch.Tensor:
        """Rows (int64, on the device) of the given names; KeyError names the unknown one."""
        try:
            return torch.tensor([self.row_of[n] for n in names], dtype=torch.long, device=self.device)
        except KeyError as err:
            raise KeyError(f"unknown gallery image name {err.args[0]!r}") from None

    def raw_features(self, rows: Any) -> torch.Tensor:
        """Stored raw fp16 features (R, D) of the given rows, on the device (never re-encoded)."""
        return self._raw[self._check_rows(rows)]

    def feature_of(self, name: str) -> torch.Tensor:
        """Stored raw fp16 feature (D,) of one gallery image, e.g. to use it as a reference."""
        return self.raw_features(self.rows_of([name]))[0]

    # ---- search ---------------------------------------------------------------------------
    def topk(self, queries: torch.Tensor, k: int, exclude_rows: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k: (scores (Q, k) float32, rows (Q, k) int64), best first, on the device.

        The first k rows of the ranking by canonical score, ties by lower gallery row, so a
        row's position here is its `rank_of`. exclude_rows: (Q,) rows to drop from each ranking
        (-1 = none), e.g. the reference image; an excluded row never appears. k is clamped to N
        (N-1 when excluding); a k that is not a whole number >= 1 is a ValueError. A 1-D
        query gives 1-D results.
        """
        q, single = self._check_queries(queries)
        excl = None if exclude_rows is None else self._check_rows(exclude_rows, q.shape[0], allow_none=True)
        k = K.check_k(k, len(self), K.has_exclusion(excl))
        parts = []
        for a, b in K.query_blocks(q.shape[0], len(self)):
            qb = q[a:b]
            approx = K.mask_rows(self._scan(qb), None if excl is None else excl[a:b])  # (B, N)
            parts.append(K.filtered_topk(approx, k, self._eps(qb), lambda rows, qb=qb: self._rescore(qb, rows),
                                         lambda qb=qb: self._dense(qb)))
        scores, rows = torch.cat([s for s, _ in parts]), torch.cat([r for _, r in parts])
        return (scores[0], rows[0]) if single else (scores, rows)

    def rank_of(self, queries: torch.Tensor, rows: Any, exclude_rows: Any = None) -> torch.Tensor:
        """Exact 1-based rank (int64, (Q,)) of rows[q] for query q, even far beyond any top-k.

        Same exclusion and tie rule as `topk`: 1 + the rows scoring higher + the rows scoring
        the same with a lower gallery row.
        """
        q, single = self._check_queries(queries)
        target = self._check_rows(rows, q.shape[0])
        excl = None if exclude_rows is None else self._check_rows(exclude_rows, q.shape[0], allow_none=True)
        if excl is not None and bool((excl == target).any()):
            raise ValueError("a query's target row is also its excluded row")
        target_scores = self._rescore_pairs(q, torch.arange(q.shape[0], device=self.device), target)  # (Q,)
        ranks = []
        for a, b in K.query_blocks(q.shape[0], len(self)):
            qb = q[a:b]
            approx = K.mask_rows(self._scan(qb), None if excl is None else excl[a:b])  # (B, N)
            ranks.append(K.filtered_ranks(approx, target_scores[a:b], self._eps(qb),
                                          lambda qi, ri, qb=qb: self._rescore_pairs(qb, qi, ri),
                                          target[a:b], lambda qb=qb: self._dense(qb),
                                          max_pairs=max(1, self._step_elems // self.dim)))
        ranks = torch.cat(ranks)
        return ranks[0] if single else ranks

    def scores_of(self, queries: torch.Tensor, rows: Any) -> torch.Tensor:
        """Canonical fp32 scores (Q, R) of the given rows (R,) for every query ((R,) for a 1-D query)."""
        q, single = self._check_queries(queries)
        r = self._check_rows(rows)
        scores = self._rescore(q, r.expand(q.shape[0], -1))  # (Q, R)
        return scores[0] if single else scores

    def subset_ranking(self, query: torch.Tensor, rows: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank a subset (e.g. a CIRR img_set minus the reference) for one (D,) query.

        Returns (rows (R,) int64, their scores (R,) float32), ordered as in the full ranking:
        score descending, then gallery row ascending.
        """
        if query.ndim != 1:
            raise ValueError("subset_ranking takes one (D,) query")
        r = self._check_rows(rows)
        scores, ordered = K.order_by_rule(self.scores_of(query, r)[None], r[None])  # (1, R) each
        return ordered[0], scores[0]

    # ---- internals ------------------------------------------------------------------------
    def _scan(self, q: torch.Tensor) -> torch.Tensor:
        """Approximate scores (B, N) of the whole gallery in the scan dtype."""
        qc = q.to(self.compute_dtype)
        if self._out_dtype() == torch.float32 and self.compute_dtype != torch.float32:
            return torch.mm(qc, self._matrix.T, out_dtype=torch.float32)
        return qc @ self._matrix.T  # (B, N); a 1-row matmul beats torch.mv for bf16 on CPUs

    def _eps(self, q: torch.Tensor) -> torch.Tensor:
        """Bound (B,) on |scan - canonical score| for queries q (B, D); see `kernels.error_bound`."""
        cuda = self.device.type == "cuda"
        in_roundoff = None
        if cuda and self.compute_dtype == torch.float32:
            in_roundoff = _FP32_MATMUL_ROUNDOFF.get(torch.get_float32_matmul_precision(), 2.0 ** -7)
        return K.error_bound(q.norm(dim=1), self.dim, self.compute_dtype, self._out_dtype(),
                             _CUDA_SAFETY if cuda else 1.0, in_roundoff)

    def _rescore(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Canonical scores (B, C) of rows (B, C) for queries q (B, D), from the raw features."""
        out = torch.empty(rows.shape, device=self.device)  # (B, C)
        c_step = max(1, self._step_elems // self.dim)
        b_step = max(1, self._step_elems // (min(max(rows.shape[1], 1), c_step) * self.dim))
        for a in range(0, rows.shape[0], b_step):
            for c in range(0, rows.shape[1], c_step):
                r = rows[a:a + b_step, c:c + c_step]  # (b, c)
                out[a:a + b_step, c:c + c_step] = K.pair_scores(
                    self._raw[r], q[a:a + b_step, None, :], self._norms[r])  # (b, c, D) -> (b, c)
        return out

    def _rescore_pairs(self, q: torch.Tensor, q_idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Canonical scores (M,) of (query q_idx[m], gallery row rows[m]) pairs."""
        return K.pair_scores(self._raw[rows], q[q_idx], self._norms[rows])  # (M, D) -> (M,)

    def _dense(self, q: torch.Tensor) -> torch.Tensor:
        """Canonical scores (B, N) of every row, block by block (broadcast, no gather)."""
        out = torch.empty(q.shape[0], len(self), device=self.device)  # (B, N)
        s_step = max(1, min(len(self), self._step_elems // self.dim))
        b_step = max(1, self._step_elems // (s_step * self.dim))
        for a in range(0, q.shape[0], b_step):
            for c in range(0, len(self), s_step):
                out[a:a + b_step, c:c + s_step] = K.pair_scores(
                    self._raw[c:c + s_step], q[a:a + b_step, None, :], self._norms[c:c + s_step])  # (b, s)
        return out

    def _out_dtype(self) -> torch.dtype:
        """fp32 output from a reduced-precision scan when the backend supports it (CUDA), else the scan
        dtype; probed on first use, not at construction."""
        if self._out_dtype_probed is None:
            self._out_dtype_probed = self.compute_dtype
            if self.compute_dtype != torch.float32 and self.device.type == "cuda":
                try:
                    torch.mm(self._matrix[:1], self._matrix[:1].T, out_dtype=torch.float32)
                    self._out_dtype_probed = torch.float32
                except (RuntimeError, TypeError):
                    pass
        return self._out_dtype_probed

    def _check_queries(self, queries: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if not torch.is_tensor(queries) or queries.ndim not in (1, 2) or queries.shape[-1] != self.dim:
            raise ValueError(f"queries must be a (Q, {self.dim}) or ({self.dim},) tensor, got "
                             f"{tuple(queries.shape) if torch.is_tensor(queries) else type(queries).__name__}")
        q = queries.detach().to(self.device, torch.float32)
        if not bool(torch.isfinite(q).all()):
            raise ValueError("queries contain NaN or inf")
        return (q[None], True) if q.ndim == 1 else (q, False)

    def _check_rows(self, rows: Any, count: int | None = None, allow_none: bool = False) -> torch.Tensor:
        r = torch.as_tensor(rows, device=self.device).long().reshape(-1)
        if count is not None and r.numel() != count:
            raise ValueError(f"expected {count} rows (one per query), got {r.numel()}")
        low = -1 if allow_none else 0
        if r.numel() and (int(r.min()) < low or int(r.max()) >= len(self)):
            raise IndexError(f"row out of range for a gallery of {len(self)} (allowed {low}..{len(self) - 1})")
        return r
