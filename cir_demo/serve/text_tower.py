"""A faster, exact text tower for short captions.

CLIP's text transformer is causal and pools the end-of-text (EOT) token, so positions after
the last EOT of a batch cannot influence the result. Running only the first
``L = last EOT + 1`` positions (instead of all 77) gives the same features for a fraction of
the work: a relative caption is typically 8-20 tokens. Models whose text tower is not a
causal, EOT-pooled open_clip ``CLIP`` fall back to their own ``encode_text``.

``TextTower`` holds a copy of the text half in its own precision without touching the image
tower: fp32, bf16, fp16, "fp16w" or "int8" (fp32 activations, linear layers with fp16 / int8
weights). Which one
is fastest depends on the machine, not on its CPU flags, so ``make_text_tower(precision="auto")``
on a CPU builds the candidates and keeps the fastest whose features stay within a cosine
threshold of fp32 (``cir_demo.serve.precision``); on CUDA "auto" is fp16.

On CUDA it can replay captured CUDA graphs for batch-1 queries, one per padded length bucket.
Capture is lazy by default (a bucket is captured on its first use), so building the tower does
no CUDA work: on ZeroGPU the GPU exists only inside ``@spaces.GPU`` calls.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from cir_demo.config.runtime import dtype_of
from cir_demo.serve.precision import (
    CPU_CANDIDATES,
    CPU_ONLY,
    PrecisionChoice,
    choose_precision,
    fixed_choice,
    precision_memo,
    resolve_precision,
    synthetic_tokens,
)
from cir_demo.serve.quantize import quantize_linears

log = logging.getLogger(__name__)

_TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
GRAPH_BUCKETS = (8, 16, 24, 32, 48, 64, 77)
CAPTURE_MODES = ("lazy", "eager")
_CAPTURE_LOCK = threading.Lock()  # CUDA allows one graph capture at a time per process


def supports_truncation(model: nn.Module) -> bool:
    """True for open_clip ``CLIP`` models with a causal mask and EOT (argmax) pooling."""
    return (getattr(model, "attn_mask", None) is not None and getattr(model, "text_pool_type", None) == "argmax"
            and all(hasattr(model, part) for part in _TEXT_PARTS))


def used_length(tokens: torch.Tensor) -> int:
    """Positions that matter: up to and including the last end-of-text token in the batch."""
    return int(tokens.argmax(dim=-1).max()) + 1


def encode_fixed_length(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Raw features (B, D) of tokens (B, L) already cut to a length holding every EOT (no host sync).

    ``model`` is an open_clip CLIP or a ``TextTower``; a tower's ``compute_dtype`` wins over
    the transformer's weight dtype (a quantised tower has no float weights to read it from).
    """
    length = tokens.shape[1]
    cast_dtype = getattr(model, "compute_dtype", None) or model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)  # (B, L, W)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)  # (B, L, W)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (B, W) at each EOT
    projection = model.text_projection
    if projection is None:  # open_clip proj_type "none": the pooled output is the feature
        return x
    if isinstance(projection, nn.Module):  # nn.Linear, or its dynamically quantised form
        return projection(x)
    return x @ projection  # (B, D)


def encode_text_truncated(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Raw text features (B, D), equal to ``model.encode_text(tokens)`` for causal CLIPs."""
    if not supports_truncation(model):
        return model.encode_text(tokens)
    return encode_fixed_length(model, tokens[:, :used_length(tokens)])


class TextTower(nn.Module):
    """The text half of an open_clip CLIP, copied so it can live in its own precision and device.

    ``precision``: "fp32" | "bf16" | "fp16" | "fp16w" | "int8" (the last two: fp32 activations,
    linear layers with fp16 / int8 weights; CPU only; see ``cir_demo.serve.precision``).
    ``capture``: "lazy" captures a CUDA graph bucket on its first batch-1 use, "eager" captures
    every bucket in ``make_text_tower``.

    Thread safety: the eager path only reads the weights and keeps no state, so concurrent
    callers are safe; a graph's static buffers are shared, so capture and replay hold a lock.
    """

    def __init__(self, model: nn.Module, *, dtype: Optional[torch.dtype] = None, precision: Optional[str] = None,
                 cuda_graphs: bool = False, capture: str = "lazy"):
        super().__init__()
        if capture not in CAPTURE_MODES:
            raise ValueError(f"capture must be one of {', '.join(CAPTURE_MODES)}, got {capture!r}")
        if precision is None:
            precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
        self.precision = precision
        self.compute_dtype = torch.float32 if precision in CPU_ONLY else dtype_of(precision, "text precision")
        self.full = None if supports_truncation(model) else model  # fallback: the whole model's encode_text
        if self.full is None:
            parts = {part: getattr(model, part) for part in _TEXT_PARTS}
            memo = precision_memo(list(parts.values()), precision, split_attention=True)  # copies made in precision
            for part, value in parts.items():
                setattr(self, part, copy.deepcopy(value, memo))
            self.register_buffer("attn_mask", model.attn_mask.to(self.compute_dtype, copy=True), persistent=False)
            self.text_pool_type = model.text_pool_type
            if precision in CPU_ONLY:
                quantize_linears(self, precision, split_attention=True)
            self.requires_grad_(False)  # serving only
        elif precision != "fp32":
            log.info("text tower of %s cannot be truncated: it runs as loaded, not in %s",
                     type(model).__name__, precision)
        self.cuda_graphs = cuda_graphs and self.full is None and precision not in CPU_ONLY
        self.capture = capture
        self.choice: Optional[PrecisionChoice] = None  # set by make_text_tower
        self._graphs: dict[int, GraphEntry] = {}  # bucket -> its captured graph (or a failed capture)
        self._lock = threading.Lock()  # one set of static buffers per bucket: one capture/replay at a time

    @property
    def device(self) -> torch.device:
        if self.full is not None:
            return next(self.full.parameters()).device
        return self.positional_embedding.device

    def _graphable(self) -> bool:
        return self.cuda_graphs and self.device.type == "cuda"

    def capture_graphs(self) -> None:
        """Capture every length bucket now (``capture="eager"``: at start-up, outside requests)."""
        if not self._graphable():
            return
        context = self.positional_embedding.shape[0]
        with self._lock:
            for bucket in GRAPH_BUCKETS:
                if bucket <= context and bucket not in self._graphs:
                    self._graphs[bucket] = _capture(self, bucket)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw features (B, D) float32; ``tokens`` (B, L) on the CPU or the tower's device."""
        if self.full is not None:
            return self.full.encode_text(tokens.to(self.device)).float()
        length = used_length(tokens)
        device = self.device
        if tokens.shape[0] == 1 and self._graphable():
            out = self._replay(tokens, length)
            if out is not None:
                return out
        return encode_fixed_length(self, tokens[:, :length].to(device)).float()

    def _replay(self, tokens: torch.Tensor, length: int) -> Optional[torch.Tensor]:
        """Batch-1 features through the bucket's graph (captured now if lazy); None: run eager."""
        context = min(tokens.shape[1], self.positional_embedding.shape[0])
        bucket = next((b for b in GRAPH_BUCKETS if length <= b <= context), None)
        if bucket is None:
            return None
        with self._lock:
            entry = self._graphs.get(bucket)
            if entry is None:
                if self.capture != "lazy":
                    return None  # eager mode captures at start-up only
                entry = self._graphs[bucket] = _capture(self, bucket)
            return entry.replay(tokens, length)  # None if its capture failed (logged once)


@dataclass
class GraphEntry:
    """One captured batch-1 graph: its static input (1, bucket) and output (1, D) buffers."""

    static_in: torch.Tensor
    static_out: Optional[torch.Tensor]
    graph: Optional[torch.cuda.CUDAGraph]  # None: capture failed, run eager

    def replay(self, tokens: torch.Tensor, length: int) -> Optional[torch.Tensor]:
        """Features (1, D) float32 of ``tokens`` (caller holds the tower's lock); None if not captured."""
        if self.graph is None:
            return None
        with torch.cuda.device(self.static_in.device):
            self.static_in.zero_()  # padding after the EOT: invisible to the causal EOT output
            self.static_in[:, :length].copy_(tokens[:, :length])
            self.graph.replay()
            return self.static_out.float().clone()


def _capture(tower: TextTower, bucket: int) -> GraphEntry:
    """Capture one batch-1 graph of ``bucket`` positions on the tower's device."""
    with torch.inference_mode():
        return _capture_inference(tower, bucket)


def _capture_inference(tower: TextTower, bucket: int) -> GraphEntry:
    device = tower.device
    with _CAPTURE_LOCK, torch.cuda.device(device):  # streams, the graph and its memory pool all on the tower's device
        static_in = torch.zeros(1, bucket, dtype=torch.long, device=device)
        static_in[0, 1] = tower.token_embedding.num_embeddings - 1  # any valid ids; the largest marks the EOT
        try:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm up kernels and the allocator on the capture stream
                    encode_fixed_length(tower, static_in)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: serving threads may run eager CUDA work on other streams meanwhile
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                static_out = encode_fixed_length(tower, static_in)
            torch.cuda.current_stream(device).wait_stream(stream)
            return GraphEntry(static_in, static_out, graph)
        except RuntimeError as err:  # capture is an optimisation: fall back to eager, say why once
            log.warning("CUDA graph capture failed for %d tokens on %s, using eager: %s", bucket, device, err)
            return GraphEntry(static_in, None, None)


def text_candidates(model: nn.Module, device: torch.device) -> tuple[str, ...]:
    """Precisions worth probing for this model on this device."""
    if device.type != "cpu" or not supports_truncation(model):
        return ("fp32",)
    return CPU_CANDIDATES


def make_text_tower(model: nn.Module, device: torch.device, precision: str = "auto",
                    cuda_graphs: Optional[bool] = None, *, capture: str = "lazy",
                    probe_tokens: Optional[Sequence[torch.Tensor]] = None, **probe_options) -> TextTower:
    """The text tower in ``precision`` ("auto" | "fp32" | "bf16" | "fp16" | "fp16w" | "int8") on ``device``.

    "auto": fp16 on CUDA; on a CPU, the fastest of fp32 / bf16 / fp16w / int8 whose features keep a
    cosine >= ``min_cosine`` (0.999) to fp32 on ``probe_tokens`` (batch-1 token tensors;
    synthetic captions of a few lengths if None). ``tower.choice`` tells what was chosen and why.
    ``probe_options`` go to ``choose_precision`` (repeats, min_cosine, margin, time_call).
    """
    device = torch.device(device)
    graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs

    def build(name: str) -> TextTower:
        tower = TextTower(model, precision=name, cuda_graphs=graphs, capture=capture)
        return tower.to(device)

    name = resolve_precision(precision, device, "text precision")
    candidates = text_candidates(model, device)
    if name == "auto" and len(candidates) == 1:
        name = candidates[0]  # nothing to choose between (e.g. an untruncatable tower): no probe
    if name != "auto":
        choice = fixed_choice(name, build(name))
    else:
        if probe_tokens is None:
            vocab = model.token_embedding.num_embeddings
            context = int(model.positional_embedding.shape[0])
            probe_tokens = synthetic_tokens(vocab, context)
        inputs = [(t.to(device),) for t in probe_tokens]
        choice = choose_precision(build, inputs, candidates=candidates, **probe_options)
    tower = choice.module
    tower.choice = choice
    if capture == "eager":
        tower.capture_graphs()
    return tower
