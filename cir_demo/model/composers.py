"""Composers: one interface that turns (reference image features, caption features) into a query.

Every composer takes RAW CLIP features (B, D) and returns a ``Composition`` whose
``features`` are L2-normalised (B, D); ``lam`` is the Combiner's dynamic scalar (B, 1)
or None. Names are the public vocabulary used by the CLI, the engine and the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from cir_demo.model.combiner import Combiner

COMPOSER_NAMES = ("combiner", "sum", "image", "text")


@dataclass(frozen=True)
class Composition:
    features: torch.Tensor  # (B, D), normalised
    lam: Optional[torch.Tensor] = None  # (B, 1) for the Combiner


class Composer:
    """Base class; subclasses implement ``compose``. Calling returns the features only."""

    name = "base"
    needs_image = True
    needs_text = True

    def compose(self, image_features: torch.Tensor, text_features: torch.Tensor) -> Composition:
        raise NotImplementedError

    def __call__(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.compose(image_features, text_features).features

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SumComposer(Composer):
    """``normalize(image + text)``: stage 1's objective and the paper's baseline."""

    name = "sum"

    def compose(self, image_features, text_features):
        return Composition(F.normalize(image_features + text_features, dim=-1))


class ImageOnlyComposer(Composer):
    """Ignores the caption: how far does the reference image alone get?"""

    name = "image"
    needs_text = False

    def compose(self, image_features, text_features=None):
        return Composition(F.normalize(image_features, dim=-1))


class TextOnlyComposer(Composer):
    """Ignores the reference image: how far does the caption alone get?"""

    name = "text"
    needs_image = False

    def compose(self, image_features=None, text_features=None):
        return Composition(F.normalize(text_features, dim=-1))


class CombinerComposer(Composer):
    """The trained Combiner (stage 2); reports the dynamic scalar lambda."""

    name = "combiner"

    def __init__(self, combiner: Combiner):
        self.combiner = combiner

    def compose(self, image_features, text_features):
        dtype = next(self.combiner.parameters()).dtype
        features, lam = self.combiner.combine_with_lambda(image_features.to(dtype), text_features.to(dtype))
        return Composition(features, lam)

    def __repr__(self) -> str:
        return f"CombinerComposer({self.combiner.dims()})"


def make_composer(name: str, combiner: Optional[Combiner] = None) -> Composer:
    """The composer called ``name`` (one of ``COMPOSER_NAMES``)."""
    if name == "combiner":
        if combiner is None:
            raise ValueError("the 'combiner' composer needs a trained Combiner; load a stage-2 checkpoint")
        return CombinerComposer(combiner)
    simple = {"sum": SumComposer, "image": ImageOnlyComposer, "text": TextOnlyComposer}
    if name not in simple:
        raise ValueError(f"unknown composer {name!r}; choose one of {', '.join(COMPOSER_NAMES)}")
    return simple[name]()
