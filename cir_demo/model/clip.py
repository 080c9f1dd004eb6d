"""CLIP through open_clip: one object with the model, its preprocessing and its tokenizer.

Loading from tags and files lives in ``cir_demo.model.factory`` (``load_clip``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from typing import Optional, Sequence, Union

import open_clip
import torch

from cir_demo.config import CONTEXT_LENGTH, MODEL_CONFIG_DIR
from cir_demo.config.runtime import optional_precision
from cir_demo.data.transforms import Preprocess

log = logging.getLogger(__name__)

# Register our own architectures (e.g. the small ``cir-tiny`` CLIP) the open_clip way.
open_clip.add_model_config(MODEL_CONFIG_DIR)

class WeightsUnavailableError(RuntimeError):
    """Pretrained weights cannot be had here (no network, not cached, unknown tag or file)."""


class ClipModel:
    """An open_clip model with its preprocessing and tokenizer.

    ``encode_image`` / ``encode_text`` return RAW (unnormalised) features, as the paper uses.
    ``model_config`` is the full open_clip config: enough to rebuild the architecture alone.
    """

    def __init__(self, model: torch.nn.Module, *, name: str, model_config: dict,
                 preprocess: str = "targetpad", source: Optional[str] = None):
        self.model = model.eval()
        self.name = name
        self.model_config = copy.deepcopy(model_config)
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.preprocess = Preprocess(preprocess, self.image_size)
        self.context_length = int(model_config.get("text_cfg", {}).get("context_length", CONTEXT_LENGTH))
        self.tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length)
        self.feature_dim = int(model_config["embed_dim"])
        self.source = source
        self._fingerprint: Optional[str] = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: Union[str, torch.device], precision: Optional[str] = None) -> "ClipModel":
        dtype = optional_precision(precision)
        self.model.to(device=device, dtype=dtype)
        return self

    def tokenize(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """Token ids (B, context_length), truncated as the paper does."""
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features (B, D) from preprocessed pixels (B, 3, S, S)."""
        return self.model.encode_image(images.to(self.device, self.dtype))

    def encode_text(self, texts: Union[str, Sequence[str], torch.Tensor]) -> torch.Tensor:
        """Raw text features (B, D) from strings or token ids (B, L)."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        return self.model.encode_text(tokens.to(self.device))

    def fingerprint(self) -> str:
        """Hash of what makes image features: the image tower's weights and the preprocessing.

        Gallery indexes record it; text-only fine-tuning (the paper's stage 1) keeps it, so an
        index stays valid while the text encoder changes.
        """
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=12)
            digest.update(repr(sorted(self.preprocess.describe().items())).encode())
            for key, tensor in sorted(self.model.visual.state_dict().items()):
                digest.update(key.encode())
                # fp16 bytes: the same weights held in fp32 or fp16 give the same fingerprint
                digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> dict:
        """JSON-able config that rebuilds this model (without weights)."""
        return {"model_name": self.name, "model_config": self.model_config,
                "preprocess": self.preprocess.describe(), "source": self.source}

    def __repr__(self) -> str:
        return (f"ClipModel({self.name!r}, dim={self.feature_dim}, image_size={self.image_size}, "
                f"preprocess={self.preprocess.mode!r}, source={self.source!r})")


def model_config_for(model_name: str) -> dict:
    """open_clip's config for a built-in or registered model name (raises if unknown)."""
    config = open_clip.get_model_config(model_name)
    if config is None:
        known = ", ".join(m for m in open_clip.list_models() if m.startswith(("RN", "ViT-B", "cir-")))
        raise ValueError(f"unknown open_clip model {model_name!r} (some known ones: {known}, ...)")
    return copy.deepcopy(config)


def build_model(model_config: dict) -> torch.nn.Module:
    """A randomly initialised open_clip model from a full config dict (no registration needed)."""
    config = copy.deepcopy(model_config)
    custom = config.pop("custom_text", False) or "hf_model_name" in config.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    return cls(**config)


def openai_model_name(model_name: str) -> str:
    """OpenAI weights need QuickGELU: map ``RN50x4`` to ``RN50x4-quickgelu`` when it exists."""
    if model_name.endswith("-quickgelu"):
        return model_name
    candidate = f"{model_name}-quickgelu"
    return candidate if candidate in open_clip.list_models() else model_name
