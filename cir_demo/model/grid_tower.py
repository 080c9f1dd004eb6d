"""A small convolutional image tower that keeps *where* things are: the built-in world's CLIP eye.

The synthetic scenes ask "which shape stands on the left?". Measured on the built-in world's
scenes (3,600 training images, 480 validation), an image tower trained from scratch *only* to
name each slot's shape, colour and count reads them as follows on held-out images:

* open_clip's attention-pooled ``ModifiedResNet`` (widths 16 or 32, 64 or 128 px): shape 22-34 %
  after 5-8 epochs (chance 20 %), colour 11-78 %;
* this tower (four conv blocks, the last 4 x 4 map flattened into the projection): shape, colour
  and count 93-98 % after 3 epochs, 100 % after 5.

What differs is the read-out. A pool (attention or mean) mixes every location into one vector
before the projection, so "a star on the left" must be encoded by channels alone; here the
projection sees each location's features separately (one weight block per cell), so position
and content stay bound. The rest is a plain VGG-style stack (two 3x3 convolutions with batch norm
and ReLU per block, then a 2x2 max pool).

Used through the model config: a top-level ``"conv_tower": {"widths": [16, 32, 64, 64]}`` next to
an ordinary ``vision_cfg`` (which still gives ``image_size``). :func:`cir_demo.model.clip.build_model`
builds the open_clip ``CLIP`` and puts this tower in as its ``visual``; everything else (text
tower, logit scale, tokenizer, preprocessing, checkpoints) is open_clip's and ours as for any CLIP.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

CONFIG_KEY = "conv_tower"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2))


class GridConvTower(nn.Module):
    """Conv blocks halving the resolution each, then one linear map of the whole last feature map
    (C x h x w, flattened) to ``embed_dim``: ``forward`` (B, 3, S, S) -> (B, embed_dim) raw."""

    explain_by_occlusion = True  # no location has its own joint-space feature (see cir_demo.model.spatial)

    def __init__(self, embed_dim: int, image_size: int, widths: Sequence[int] = (16, 32, 64, 64)):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"conv_tower widths must be positive integers, got {widths}")
        side = int(image_size) >> len(widths)
        if side < 1 or side << len(widths) != int(image_size):
            raise ValueError(f"image_size {image_size} must be a multiple of 2**{len(widths)} (one halving per block)")
        self.image_size = int(image_size)
        self.grid = side
        self.blocks = nn.Sequential(*[_block(cin, cout) for cin, cout in zip([3] + widths[:-1], widths)])
        self.proj = nn.Linear(widths[-1] * side * side, embed_dim)
        self.output_dim = embed_dim

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """The last block's map (B, C, h, w)."""
        return self.blocks(pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.feature_map(pixels).flatten(1))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Nothing to checkpoint in a tower this small (kept for open_clip's interface)."""
