"""The paper's Combiner network, with the official CLIP4Cir state-dict names.

``Combiner(clip_feature_dim=D, projection_dim=P, hidden_dim=H)``; the paper uses P = 4D,
H = 8D (RN50x4: 640 / 2560 / 5120, 59,003,521 parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ModelMismatchError(ValueError):
    """Two models that must work together do not fit (e.g. a Combiner sized for another CLIP)."""


class Combiner(nn.Module):
    """Fuses a reference-image feature and a caption feature into a query feature.

    ``combine_features`` is the inference entry point; ``forward`` gives the training logits.
    Both take RAW (unnormalised) CLIP features: the residual mixes the raw features.
    """

    # A constant in the original, not a parameter (so it is absent from the state dict).
    logit_scale = 100.0

    def __init__(self, clip_feature_dim: int, projection_dim: int, hidden_dim: int, *, dropout: float = 0.5):
        super().__init__()
        for name, value in (("clip_feature_dim", clip_feature_dim), ("projection_dim", projection_dim),
                            ("hidden_dim", hidden_dim)):
            if int(value) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.clip_feature_dim, self.projection_dim, self.hidden_dim = clip_feature_dim, projection_dim, hidden_dim
        self.text_projection_layer = nn.Linear(clip_feature_dim, projection_dim)
        self.image_projection_layer = nn.Linear(clip_feature_dim, projection_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.combiner_layer = nn.Linear(projection_dim * 2, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, clip_feature_dim)
        self.dropout3 = nn.Dropout(dropout)
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(projection_dim * 2, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1), nn.Sigmoid(),
        )

    @classmethod
    def for_feature_dim(cls, clip_feature_dim: int) -> "Combiner":
        """The paper's sizing rule: P = 4D, H = 8D."""
        return cls(clip_feature_dim, 4 * clip_feature_dim, 8 * clip_feature_dim)

    def dims(self) -> dict:
        return {"clip_feature_dim": self.clip_feature_dim, "projection_dim": self.projection_dim,
                "hidden_dim": self.hidden_dim}

    def combine_with_lambda(self, image_features: torch.Tensor, text_features: torch.Tensor):
        """(normalised query features (B, D), dynamic scalar lambda (B, 1))."""
        text_proj = self.dropout1(F.relu(self.text_projection_layer(text_features)))  # (B, P)
        image_proj = self.dropout2(F.relu(self.image_projection_layer(image_features)))  # (B, P)
        raw = torch.cat((text_proj, image_proj), dim=-1)  # (B, 2P), text first as the original
        hidden = self.dropout3(F.relu(self.combiner_layer(raw)))  # (B, H)
        lam = self.dynamic_scalar(raw)  # (B, 1)
        out = self.output_layer(hidden) + lam * text_features + (1 - lam) * image_features  # (B, D)
        return F.normalize(out, dim=-1), lam

    def combine_features(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Normalised query features (B, D) from raw image (B, D) and raw text (B, D) features."""
        return self.combine_with_lambda(image_features, text_features)[0]

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                target_features: torch.Tensor) -> torch.Tensor:
        """Training logits (B, B'): ``100 * combined @ normalize(target).T``."""
        predicted = self.combine_features(image_features, text_features)  # (B, D)
        return self.logit_scale * predicted @ F.normalize(target_features, dim=-1).T


def combiner_dims_from_state_dict(state_dict: dict) -> dict:
    """Read (D, P, H) off a Combiner state dict, so official files load without telling sizes."""
    try:
        proj = state_dict["text_projection_layer.weight"]  # (P, D)
        hidden = state_dict["combiner_layer.weight"]  # (H, 2P)
    except KeyError as err:
        raise ValueError(f"not a Combiner state dict: missing {err.args[0]!r}") from None
    return {"clip_feature_dim": int(proj.shape[1]), "projection_dim": int(proj.shape[0]),
            "hidden_dim": int(hidden.shape[0])}


def check_compatible(clip, combiner: Combiner | None) -> None:
    """Raise ``ModelMismatchError`` unless ``combiner`` takes ``clip``'s features (None passes).

    ``clip`` is anything with ``feature_dim`` (a ``ClipModel``); the message names both widths.
    """
    if combiner is None:
        return
    expected, produced = int(combiner.dims()["clip_feature_dim"]), int(clip.feature_dim)
    if expected != produced:
        name = getattr(clip, "name", "the CLIP model")
        raise ModelMismatchError(
            f"the Combiner takes {expected}-dimensional CLIP features (clip_feature_dim={expected}) but "
            f"{name!r} produces {produced}-dimensional ones (feature_dim={produced}); use the Combiner "
            f"trained with this CLIP, or the CLIP it was trained with")
