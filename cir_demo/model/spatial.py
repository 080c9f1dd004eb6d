"""Image features per location, in the joint space: what lets a page show where an image agrees with
a query (a heat map), for the attention-pooled ResNets and for ViTs.

* ``ModifiedResNet`` (RN50, RN50x4): the last feature map, each location passed through the
  attention pool's value and output projections with its positional embedding (the pool's
  output is a weighted sum of exactly these; MaskCLIP's reading of CLIP).
* ``VisionTransformer``: every patch token after the last block, normalised and projected as the
  class token is.
Both return (B, h, w, D) raw features; their cosine with a query is the map.

The built-in world's ``GridConvTower`` reads its whole grid with one linear map, so no location
has a feature of its own in the joint space; :func:`location_map` explains it by occlusion instead
(how much the image's score drops when a window of it is hidden).
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


OCCLUSION_GRID = 8  # windows per side; each hides a square twice the grid step, centred on its cell


@torch.no_grad()
def location_map(visual: nn.Module, pixels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Where one preprocessed image (1, 3, S, S) agrees with a normalised ``query`` (D,): an (h, w) map.

    Towers with per-location features give their cosine with the query; a tower marked
    ``explain_by_occlusion`` gives, per cell of an 8 x 8 grid, the drop in the image's cosine with
    the query when a window centred on that cell (a quarter of the side) is filled, row by row, with
    the mean colour of that row of the image (which, on a backdrop, erases what stands in front).
    Either way, higher means "this part of the image matches the query".
    """
    query = query.float()
    if not getattr(visual, "explain_by_occlusion", False):
        local = spatial_features(visual, pixels)[0].float()  # (h, w, D)
        return torch.nn.functional.cosine_similarity(local, query[None, None], dim=-1)
    n, side = OCCLUSION_GRID, pixels.shape[-1]
    step = side / n
    fill = pixels.mean(dim=3, keepdim=True)  # (1, 3, S, 1): each row's mean colour
    masked = pixels.repeat(n * n, 1, 1, 1)  # (n*n, 3, S, S)
    for cell in range(n * n):
        cy, cx = (cell // n + 0.5) * step, (cell % n + 0.5) * step
        y0, y1 = max(0, round(cy - step)), min(side, round(cy + step))
        x0, x1 = max(0, round(cx - step)), min(side, round(cx + step))
        masked[cell, :, y0:y1, x0:x1] = fill[0, :, y0:y1]
    embedded = torch.nn.functional.normalize(visual(torch.cat([pixels, masked])).float(), dim=-1)
    scores = embedded @ query  # (1 + n*n,): the whole image, then each window hidden
    return (scores[0] - scores[1:]).view(n, n)
