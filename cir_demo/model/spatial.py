"""Image features per location, in the joint space: what lets a page show where an image agrees with
a query (a heat map), for the attention-pooled ResNets and for ViTs.

* ``ModifiedResNet`` (RN50, RN50x4): the last feature map, each location passed through the
  attention pool's value and output projections with its positional embedding (the pool's
  output is a weighted sum of exactly these; MaskCLIP's reading of CLIP).
* ``VisionTransformer``: every patch token after the last block, normalised and projected as the
  class token is.
Both return (B, h, w, D) raw features; their cosine with a query is the map.
"""

from __future__ import annotations

import torch
from torch import nn


def spatial_features(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Raw per-location features (B, h, w, D) of preprocessed ``pixels`` (B, 3, S, S)."""
    if hasattr(visual, "attnpool") and hasattr(visual, "layer4"):
        return _resnet(visual, pixels)
    if hasattr(visual, "transformer") and hasattr(visual, "conv1") and hasattr(visual, "class_embedding"):
        return _vit(visual, pixels)
    raise TypeError(f"no per-location features for a {type(visual).__name__} image tower")


def _resnet(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    x = visual.stem(pixels)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)  # (B, C, h, w)
    batch, channels, h, w = x.shape
    pool = visual.attnpool
    tokens = x.flatten(2).transpose(1, 2) + pool.positional_embedding[1:].to(x.dtype)  # (B, hw, C)
    out = pool.c_proj(pool.v_proj(tokens))  # (B, hw, D)
    return out.reshape(batch, h, w, -1)


def _vit(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    if getattr(visual, "attn_pool", None) is not None:
        raise TypeError("no per-location features for an attention-pooled ViT")
    x = visual.conv1(pixels)  # (B, W, h, w)
    batch, width, h, w = x.shape
    x = x.reshape(batch, width, h * w).permute(0, 2, 1)  # (B, hw, W)
    cls = visual.class_embedding.to(x.dtype).expand(batch, 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1 + hw, W)
    x = visual.ln_pre(visual.patch_dropout(x))
    x = visual.transformer(x)
    tokens = visual.ln_post(x[:, 1:])  # (B, hw, W), normalised as the class token is
    if visual.proj is not None:
        tokens = tokens @ visual.proj  # (B, hw, D)
    return tokens.reshape(batch, h, w, -1)
