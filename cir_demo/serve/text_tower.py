"""A faster, exact text tower for short captions.

CLIP's text transformer is causal and pools the end-of-text (EOT) token, so positions after
the last EOT of a batch cannot influence the result. Running only the first
``L = last EOT + 1`` positions (instead of all 77) gives the same features for a fraction of
the work: a relative caption is typically 8-20 tokens. Models whose text tower is not a
causal, EOT-pooled open_clip ``CLIP`` fall back to their own ``encode_text``.

``TextTower`` holds a copy of the text half in its own dtype (bf16 on CPUs with native bf16,
fp16 on CUDA) without touching the image tower, and on CUDA can replay captured CUDA graphs
for batch-1 queries, one per padded length bucket.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Optional

import torch
from torch import nn

from cir_demo.config.runtime import cpu_has_native_bf16, dtype_of

log = logging.getLogger(__name__)

_TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
GRAPH_BUCKETS = (8, 16, 24, 32, 48, 64, 77)


def supports_truncation(model: nn.Module) -> bool:
    """True for open_clip ``CLIP`` models with a causal mask and EOT (argmax) pooling."""
    return (getattr(model, "attn_mask", None) is not None and getattr(model, "text_pool_type", None) == "argmax"
            and all(hasattr(model, part) for part in _TEXT_PARTS))


def used_length(tokens: torch.Tensor) -> int:
    """Positions that matter: up to and including the last end-of-text token in the batch."""
    return int(tokens.argmax(dim=-1).max()) + 1


def encode_fixed_length(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Raw features (B, D) of tokens (B, L) already cut to a length holding every EOT (no host sync)."""
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)  # (B, L, W)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)  # (B, L, W)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (B, W) at each EOT
    projection = model.text_projection
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection  # (B, D)


def encode_text_truncated(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Raw text features (B, D), equal to ``model.encode_text(tokens)`` for causal CLIPs."""
    if not supports_truncation(model):
        return model.encode_text(tokens)
    return encode_fixed_length(model, tokens[:, :used_length(tokens)])


class TextTower(nn.Module):
    """The text half of an open_clip CLIP, copied so it can live in its own dtype and device."""

    def __init__(self, model: nn.Module, *, dtype: torch.dtype = torch.float32, cuda_graphs: bool = False):
        super().__init__()
        self.full = None if supports_truncation(model) else model  # fallback: the whole model's encode_text
        if self.full is None:
            for part in _TEXT_PARTS:
                setattr(self, part, copy.deepcopy(getattr(model, part)))
            self.register_buffer("attn_mask", model.attn_mask.clone(), persistent=False)
            self.text_pool_type = model.text_pool_type
            self.to(dtype)
            self.requires_grad_(False)  # serving only
        self.cuda_graphs = cuda_graphs and self.full is None
        self._graphs: dict[int, tuple] = {}
        self._lock = threading.Lock()  # one set of static buffers per bucket: one replay at a time

    def capture_graphs(self) -> None:
        """Capture every length bucket now (at start-up), not lazily while serving other requests."""
        if not (self.cuda_graphs and self.positional_embedding.device.type == "cuda"):
            return
        context = self.positional_embedding.shape[0]
        with self._lock:
            for bucket in GRAPH_BUCKETS:
                if bucket <= context and bucket not in self._graphs:
                    self._graphs[bucket] = _capture(self, bucket)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw features (B, D) float32; ``tokens`` (B, 77) on the CPU or the tower's device."""
        if self.full is not None:
            return self.full.encode_text(tokens.to(next(self.full.parameters()).device)).float()
        length = used_length(tokens)
        device = self.positional_embedding.device
        if self.cuda_graphs and device.type == "cuda" and tokens.shape[0] == 1:
            graphed = self._graphed(length, tokens.shape[1])
            if graphed is not None:
                return graphed(tokens)
        return encode_fixed_length(self, tokens[:, :length].to(device)).float()

    def _graphed(self, length: int, context: int):
        bucket = next((b for b in GRAPH_BUCKETS if length <= b <= context), None)
        if bucket is None or self._graphs.get(bucket, (None, None, None))[2] is None:
            return None  # not captured (see capture_graphs) or capture failed: eager
        static_in, static_out, graph = self._graphs[bucket]

        def run(tokens: torch.Tensor) -> torch.Tensor:
            with self._lock:
                static_in.zero_()  # padding after the EOT: invisible to the causal EOT output
                static_in[:, :length].copy_(tokens[:, :length], non_blocking=True)
                graph.replay()
                return static_out.float().clone()

        return run


def _capture(tower: TextTower, bucket: int):
    """Capture one batch-1 graph of ``bucket`` positions; (inputs, outputs, graph or None)."""
    with torch.inference_mode():
        return _capture_inference(tower, bucket)


def _capture_inference(tower: TextTower, bucket: int):
    device = tower.positional_embedding.device
    static_in = torch.zeros(1, bucket, dtype=torch.long, device=device)
    static_in[0, 1] = tower.token_embedding.num_embeddings - 1  # any valid ids; the largest marks the EOT
    try:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up kernels and the allocator outside the capture
                encode_fixed_length(tower, static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = encode_fixed_length(tower, static_in)
        return static_in, static_out, graph
    except RuntimeError as err:  # capture is an optimisation: fall back to eager, say why once
        log.warning("CUDA graph capture failed for %d tokens, using eager: %s", bucket, err)
        return static_in, None, None


def resolve_text_dtype(precision: str, device: torch.device) -> torch.dtype:
    """"auto": fp16 on CUDA, bf16 on CPUs with native bf16 support, else fp32."""
    if precision != "auto":
        return dtype_of(precision, "text precision ('auto' or a precision)")
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def make_text_tower(model: nn.Module, device: torch.device, precision: str = "auto",
                    cuda_graphs: Optional[bool] = None) -> TextTower:
    dtype = resolve_text_dtype(precision, device)
    graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
    tower = TextTower(model, dtype=dtype, cuda_graphs=graphs).to(device)
    tower.capture_graphs()
    return tower
