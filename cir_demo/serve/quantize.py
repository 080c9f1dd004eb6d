"""Quantised stand-ins for ``nn.Linear`` on the CPU, and the swap that installs them.

- int8: ``DynamicInt8Linear``, int8 weights per output channel and activations quantised per
  call (fbgemm's dynamic int8 linear), a quarter of fp32's weight bytes. It is ours, not
  ``torch.ao``'s dynamic ``Linear``, because that one always quantises activations to 7 bits:
  cosine 0.9984 to fp32 for RN50x4's text tower (below the 0.999 bar) against 0.9995 with 8 bits,
  which this one uses where the kernels accumulate in int32; same speed (6.0 vs 6.2 ms).
- fp16w: torch's own ``quantize_dynamic`` with fp16 weights (fp32 activations and accumulation).
- ``SplitSelfAttention``: ``nn.MultiheadAttention`` rewritten with plain linears, so a text
  tower's attention projections can be quantised too.
They run on torch's quantised ops, which torch 2.10+ flags as deprecated (torchao replaces them);
they work in torch 2.14.1. ``cir_demo.serve.precision`` decides when they are used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class SplitSelfAttention(nn.Module):
    """``nn.MultiheadAttention`` self-attention rewritten with two plain ``nn.Linear`` layers
    (sharing ``mha``'s weight tensors, not copying them).

    The stock module keeps its input projection as a bare parameter and its output projection
    as a ``NonDynamicallyQuantizableLinear``, so ``quantize_linears`` cannot reach either; this
    equivalent form (same call signature, ``scaled_dot_product_attention`` inside) lets it.
    Supports what open_clip's text blocks use: key = value = query, an additive or boolean
    ``attn_mask``, no key padding mask, no bias_kv / zero_attn.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not splittable(mha):
            raise ValueError("this MultiheadAttention cannot be split (cross-attention or bias_kv)")
        self.num_heads, self.batch_first = mha.num_heads, mha.batch_first
        self.in_proj = _linear_of(mha.in_proj_weight, mha.in_proj_bias)  # (3E, E): q, k, v stacked
        self.out_proj = _linear_of(mha.out_proj.weight, mha.out_proj.bias)

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, key_padding_mask=None,
                **_ignored):
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise NotImplementedError("SplitSelfAttention does self-attention only")
        if key_padding_mask is not None or need_weights:
            raise NotImplementedError("SplitSelfAttention has no key padding mask or attention weights")
        x = query if self.batch_first else query.transpose(0, 1)  # (B, L, E)
        batch, length, dim = x.shape
        qkv = self.in_proj(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, d)
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # MHA: True = masked out
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if attn_mask is None else attn_mask.to(q.dtype))
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))  # (B, L, E)
        return (out if self.batch_first else out.transpose(0, 1)), None


def _linear_of(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    """An ``nn.Linear`` around existing tensors (shared, not copied; no random initialisation)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return linear


def splittable(mha: nn.Module) -> bool:
    return (type(mha) is nn.MultiheadAttention and mha._qkv_same_embed_dim and mha.bias_k is None
            and not mha.add_zero_attn)


class DynamicInt8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (symmetric, per output channel) and activations quantised
    per call (one scale per call, fbgemm's ``quantized::linear_dynamic``); fp32 in and out.

    ``reduce_range``: 7-bit activations, which AVX2 kernels need to avoid int16 saturation;
    full 8-bit range where the kernels accumulate in int32 (VNNI), found by ``full_range_int8_exact``.
    """

    def __init__(self, linear: nn.Linear, *, reduce_range: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.reduce_range = linear.in_features, linear.out_features, reduce_range
        weight = linear.weight.detach().float().cpu()  # (N, K)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()  # (N,) symmetric, per channel
        with _quiet():
            zero = torch.zeros_like(scale, dtype=torch.long)
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)  # (N, K) in [-127, 127]
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self._packed, self.reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, reduce_range={self.reduce_range}"


@contextlib.contextmanager
def _quiet():
    """torch >= 2.10 flags its quantised-tensor API as deprecated; it still works (2.14.1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


@functools.lru_cache(maxsize=1)
def full_range_int8_exact() -> bool:
    """Whether 8-bit (not 7-bit) activations are safe here: a worst case for int16 pair
    saturation (every activation and weight at the top of its range) must come out exact."""
    try:
        linear = nn.Linear(64, 8, bias=False)
        nn.init.constant_(linear.weight, 0.5)
        x = torch.full((2, 64), 3.0)
        out = DynamicInt8Linear(linear, reduce_range=False)(x)
        return bool(torch.allclose(out, linear(x), rtol=1e-3))
    except Exception as err:  # noqa: BLE001 - no quantised engine: the probe rejects int8 anyway
        log.info("int8 full-range probe failed: %s", err)
        return False


def quantize_linears(module: nn.Module, precision: str = "int8", *, split_attention: bool = False,
                     min_out_features: int = 8) -> nn.Module:
    """Swap ``module``'s ``nn.Linear`` layers, in place, for int8 (``DynamicInt8Linear``) or
    fp16-weight (torch's dynamic ``Linear``) ones; the module must be fp32 on the CPU.

    ``split_attention`` first rewrites splittable ``nn.MultiheadAttention`` modules as
    ``SplitSelfAttention`` so their projections are swapped too. Linear layers with fewer than
    ``min_out_features`` outputs stay float (nothing to gain; a Combiner keeps its lambda head,
    and so a float parameter that tells callers its input dtype).
    """
    if precision not in ("int8", "fp16w"):
        raise ValueError(f"quantize_linears: precision must be 'int8' or 'fp16w', got {precision!r}")
    if split_attention:
        for parent in list(module.modules()):
            for child_name, child in list(parent.named_children()):
                if splittable(child):
                    setattr(parent, child_name, SplitSelfAttention(child))
    if precision == "fp16w":
        from torch.ao.quantization import float16_dynamic_qconfig, quantize_dynamic

        names = {name: float16_dynamic_qconfig for name, child in module.named_modules()
                 if type(child) is nn.Linear and child.out_features >= min_out_features}
        with _quiet():
            return quantize_dynamic(module, names, dtype=torch.float16, inplace=True)
    reduce_range = not full_range_int8_exact()
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.out_features >= min_out_features:
                setattr(parent, child_name, DynamicInt8Linear(child, reduce_range=reduce_range))
    return module
