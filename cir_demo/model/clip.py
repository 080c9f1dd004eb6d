"""CLIP through open_clip: one object with the model, its preprocessing and its tokenizer.

Loading from tags and files lives in ``cir_demo.model.factory`` (``load_clip``); choosing and
building the tokenizer a config names, in ``cir_demo.model.tokenizers``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import threading
from typing import Callable, Optional, Sequence, Union

import open_clip
import torch

from cir_demo.config import CLIP_MEAN, CLIP_STD, CONTEXT_LENGTH, MODEL_CONFIG_DIR
from cir_demo.config.runtime import optional_precision
from cir_demo.data.transforms import Preprocess
from cir_demo.model.tokenizers import make_tokenizer
from cir_demo.model.vocab import vocab_size

log = logging.getLogger(__name__)

# Register our own architectures (e.g. the small ``cir-tiny`` CLIP) the open_clip way.
open_clip.add_model_config(MODEL_CONFIG_DIR)

# Bumped whenever what the fingerprint covers changes, so old and new hashes never collide.
_FINGERPRINT_SCHEME = b"cir-demo-fingerprint/2"
# Top-level open_clip config keys that cannot change image features (text tower, training-only
# scalars, CoCa's text decoder). Every other key is hashed: unknown future keys count by default.
_TEXT_ONLY_KEYS = frozenset({"text_cfg", "custom_text", "init_logit_scale", "init_logit_bias",
                             "nonscalar_logit_scale", "output_dict", "multimodal_cfg"})



class ClipModel:
    """An open_clip model with its preprocessing and tokenizer.

    ``encode_image`` / ``encode_text`` return RAW (unnormalised) features, as the paper uses.
    ``model_config`` is the full open_clip config: enough to rebuild the architecture alone.
    The tokenizer is the one that config names (see ``make_tokenizer``), built on first use so
    image-only work never needs tokenizer files. ``vocabulary`` (kept BPE ids, see
    :mod:`cir_demo.model.vocab`) maps it onto a trimmed token table; None (every real CLIP) keeps
    open_clip's ids.
    """

    def __init__(self, model: torch.nn.Module, *, name: str, model_config: dict,
                 preprocess: str = "targetpad", source: Optional[str] = None,
                 vocabulary: Optional[Sequence[int]] = None):
        self.model = model.eval()
        self.name = name
        self.model_config = copy.deepcopy(model_config)
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.preprocess = Preprocess(preprocess, self.image_size)
        self.context_length = int(model_config.get("text_cfg", {}).get("context_length", CONTEXT_LENGTH))
        self.feature_dim = int(model_config["embed_dim"])
        self.source = source
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        rows = getattr(getattr(model, "token_embedding", None), "num_embeddings", None)
        if self.vocabulary is not None and rows is not None and rows != vocab_size(self.vocabulary):
            raise ValueError(f"a vocabulary of {len(self.vocabulary)} kept tokens needs {vocab_size(self.vocabulary)} "
                             f"token embedding rows; the model has {rows}")
        self._tokenizer: Optional[Callable] = None
        # One lock for building the tokenizer and for calling it: its BPE memo is shared state.
        self._token_lock = threading.Lock()
        self._weights_digest: tuple = (None, b"")  # (state key, digest) of the image tower

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

    @property
    def tokenizer(self) -> Callable:
        """The tokenizer this model's config names; raises WeightsUnavailableError if unobtainable."""
        with self._token_lock:
            if self._tokenizer is None:
                self._tokenizer = make_tokenizer(self.name, self.model_config, vocabulary=self.vocabulary)
            return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Callable) -> None:
        with self._token_lock:
            self._tokenizer = tokenizer

    def tokenize(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """Token ids (B, context_length), truncated as the paper does. Safe to call from threads."""
        if isinstance(texts, str):
            texts = [texts]
        tokenizer = self.tokenizer
        with self._token_lock:
            return tokenizer(list(texts))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features (B, D) from preprocessed pixels (B, 3, S, S)."""
        return self.model.encode_image(images.to(self.device, self.dtype))

    def encode_text(self, texts: Union[str, Sequence[str], torch.Tensor]) -> torch.Tensor:
        """Raw text features (B, D) from strings or token ids (B, L)."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        return self.model.encode_text(tokens.to(self.device))

    def fingerprint(self) -> str:
        """Hash of everything that makes image features: architecture, image-tower weights, preprocessing.

        Gallery indexes record it. The text tower is left out, so text-only fine-tuning (the
        paper's stage 1) keeps it and an index stays valid while the text encoder changes.
        Weights are hashed as fp16 bytes: fp32 and fp16 copies of the same weights agree.
        """
        digest = hashlib.blake2b(_FINGERPRINT_SCHEME, digest_size=12)
        digest.update(vision_architecture_json(self.model_config).encode())
        digest.update(json.dumps(self._preprocess_identity(), sort_keys=True).encode())
        digest.update(self._image_weights_digest())
        return digest.hexdigest()

    def identity(self) -> dict:
        """Human-readable identity for mismatch messages: name, fingerprint and its parts."""
        architecture = hashlib.blake2b(vision_architecture_json(self.model_config).encode(), digest_size=6)
        return {"fingerprint": self.fingerprint(), "model_name": self.name,
                "architecture": architecture.hexdigest(), "feature_dim": self.feature_dim,
                "image_size": self.image_size, "preprocess": self.preprocess.describe(), "source": self.source}

    def summary(self) -> str:
        """One line naming this model's identity, e.g. for "index built by X, loaded Y" messages."""
        ident = self.identity()
        pre = ident["preprocess"]
        return (f"{ident['model_name']} (architecture {ident['architecture']}, {ident['feature_dim']}-d features, "
                f"preprocess {pre['mode']} {pre['image_size']}px, fingerprint {ident['fingerprint']})")

    def _preprocess_identity(self) -> dict:
        # Pixel statistics are code constants today; hashing them keeps a future change honest.
        return {**self.preprocess.describe(), "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}

    def _image_weights_digest(self) -> bytes:
        """Digest of the image tower's tensors, recomputed only when one was replaced or modified."""
        state = sorted(self.model.visual.state_dict().items())
        if any(t.is_inference() for _, t in state):  # inference-mode tensors keep no version counter
            return _tensors_digest(state)
        # data_ptr changes when a tensor is replaced (.to, assignment), _version on in-place writes
        # (optimiser steps, load_state_dict), so the cached digest is never stale.
        key = tuple((name, t.data_ptr(), t._version, t.dtype) for name, t in state)
        if self._weights_digest[0] != key:
            self._weights_digest = (key, _tensors_digest(state))
        return self._weights_digest[1]

    def describe(self) -> dict:
        """JSON-able config that rebuilds this model (without weights)."""
        described = {"model_name": self.name, "model_config": self.model_config,
                     "preprocess": self.preprocess.describe(), "source": self.source}
        if self.vocabulary is not None:
            described["vocabulary"] = list(self.vocabulary)
        return described

    def __repr__(self) -> str:
        return (f"ClipModel({self.name!r}, dim={self.feature_dim}, image_size={self.image_size}, "
                f"preprocess={self.preprocess.mode!r}, source={self.source!r})")


def _tensors_digest(state: list) -> bytes:
    """Digest of (name, tensor) pairs, tensors as fp16 bytes so fp32 and fp16 copies agree."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in state:
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.digest()


def vision_architecture_json(model_config: dict) -> str:
    """Canonical JSON of the config parts that shape the image tower (text-only keys dropped).

    Settings equal to open_clip's defaults are dropped, so ``"quick_gelu": false`` and an absent
    key (or a ``vision_cfg`` spelling out a default) describe the same architecture.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(open_clip.CLIPVisionCfg)}
    vision = json.loads(json.dumps(model_config.get("vision_cfg", {})))  # tuples -> lists
    vision = {k: v for k, v in vision.items() if k not in defaults or v != defaults[k]}
    arch = {k: v for k, v in model_config.items() if k not in _TEXT_ONLY_KEYS and k != "vision_cfg"}
    arch["vision_cfg"] = vision
    if not arch.get("quick_gelu", False):
        arch.pop("quick_gelu", None)
    return json.dumps(arch, sort_keys=True, default=str)


# ---- configs and models ---------------------------------------------------------------------

def model_config_for(model_name: str) -> dict:
    """open_clip's config for a built-in or registered model name (raises if unknown)."""
    config = open_clip.get_model_config(model_name)
    if config is None:
        known = ", ".join(m for m in open_clip.list_models() if m.startswith(("RN", "ViT-B", "cir-")))
        raise ValueError(f"unknown open_clip model {model_name!r} (some known ones: {known}, ...)")
    return copy.deepcopy(config)


def build_model(model_config: dict) -> torch.nn.Module:
    """A randomly initialised open_clip model from a full config dict (no registration needed).

    A ``conv_tower`` entry (:mod:`cir_demo.model.grid_tower`) replaces the image tower open_clip
    would build from ``vision_cfg`` (only its ``image_size`` is read then)."""
    from cir_demo.model.grid_tower import CONFIG_KEY, GridConvTower

    config = copy.deepcopy(model_config)
    custom = config.pop("custom_text", False) or "hf_model_name" in config.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    tower = config.pop(CONFIG_KEY, None)
    if tower is None:
        return cls(**config)
    size = int(config.get("vision_cfg", {}).get("image_size", 224))
    config["vision_cfg"] = {"image_size": size, "patch_size": size, "layers": 1, "width": 8, "head_width": 8}
    model = cls(**config)  # a one-token placeholder ViT, replaced at once
    model.visual = GridConvTower(config["embed_dim"], size, **tower)
    return model


def openai_model_name(model_name: str) -> str:
    """OpenAI weights need QuickGELU: map ``RN50x4`` to ``RN50x4-quickgelu`` when it exists."""
    if model_name.endswith("-quickgelu"):
        return model_name
    candidate = f"{model_name}-quickgelu"
    return candidate if candidate in open_clip.list_models() else model_name
