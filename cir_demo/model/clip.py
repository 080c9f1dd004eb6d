"""CLIP through open_clip: one object with the model, its preprocessing and its tokenizer.

Loading from tags and files lives in ``cir_demo.model.factory`` (``load_clip``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, Sequence, Union
from urllib.parse import urlparse

import open_clip
import torch

from cir_demo.config import CLIP_MEAN, CLIP_STD, CONTEXT_LENGTH, MODEL_CONFIG_DIR, hub_offline
from cir_demo.config.runtime import optional_precision
from cir_demo.data.transforms import Preprocess
from cir_demo.model.vocab import TrimmedTokenizer, vocab_size

log = logging.getLogger(__name__)

# Register our own architectures (e.g. the small ``cir-tiny`` CLIP) the open_clip way.
open_clip.add_model_config(MODEL_CONFIG_DIR)

# Bumped whenever what the fingerprint covers changes, so old and new hashes never collide.
_FINGERPRINT_SCHEME = b"cir-demo-fingerprint/2"
# Top-level open_clip config keys that cannot change image features (text tower, training-only
# scalars, CoCa's text decoder). Every other key is hashed: unknown future keys count by default.
_TEXT_ONLY_KEYS = frozenset({"text_cfg", "custom_text", "init_logit_scale", "init_logit_bias",
                             "nonscalar_logit_scale", "output_dict", "multimodal_cfg"})
# SimpleTokenizer memoises the BPE of every word it sees; these bound that memo (see _BpeCache).
BPE_CACHE_SIZE = 10_000
BPE_CACHE_MAX_WORD = 64


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights (or a tokenizer) cannot be had here: no network, not cached, unknown."""


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


# ---- tokenizers -----------------------------------------------------------------------------

def make_tokenizer(model_name: str, model_config: dict, *, cache_dir: Optional[str] = None,
                   vocabulary: Optional[Sequence[int]] = None) -> Callable:
    """The tokenizer ``open_clip.get_tokenizer`` would give, chosen from a config dict.

    Ours, not a call to ``open_clip.get_tokenizer``: that needs a registered model name, while our
    checkpoints rebuild from the config they carry, and it would try downloads offline.

    Follows open_clip 3.3's rules without needing ``model_name`` registered (our checkpoints
    rebuild from a config): ``text_cfg.hf_tokenizer_name`` (or an ``hf-hub:`` name) -> HF
    tokenizer, a SigLIP name -> SigLIP tokenizer, else ``SimpleTokenizer``; ``tokenizer_kwargs``
    and ``context_length`` come from ``text_cfg``. Never downloads when offline: a tokenizer that
    is not available locally raises ``WeightsUnavailableError``. SimpleTokenizer's BPE memo is
    bounded (``BPE_CACHE_SIZE``). ``vocabulary`` wraps it in a :class:`~cir_demo.model.vocab.TrimmedTokenizer`.
    """
    text_cfg = model_config.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", CONTEXT_LENGTH))
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    hf_name = text_cfg.get("hf_tokenizer_name", "")
    if model_name.startswith("hf-hub:") and not hf_name:
        hf_name = model_name[len("hf-hub:"):]  # open_clip's fallback: the repo holds the tokenizer
    if vocabulary is not None and (hf_name or "siglip" in model_name.lower()):
        raise ValueError("a trimmed vocabulary maps open_clip's BPE tokenizer only, not a Hugging Face or SigLIP one")
    if hf_name:
        source = model_name[len("local-dir:"):] if model_name.startswith("local-dir:") else hf_name
        return _hf_tokenizer(source, context_length, text_cfg.get("tokenizer_mode"), kwargs, cache_dir)
    if not model_name.startswith(("hf-hub:", "local-dir:")) and "siglip" in model_name.lower():
        return _siglip_tokenizer(model_name, context_length)
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length, **kwargs)
    tokenizer.cache = _BpeCache(tokenizer.cache, BPE_CACHE_SIZE)
    return tokenizer if vocabulary is None else TrimmedTokenizer(tokenizer, vocabulary)


class _BpeCache(OrderedDict):
    """SimpleTokenizer's word -> BPE memo, bounded: oldest words go first past ``maxsize``.

    Unbounded, it grew by ~300 bytes per distinct word for ever (3,000 unique long captions:
    +91 MB). Words longer than ``BPE_CACHE_MAX_WORD`` are not memoised (rare in real captions,
    costly to keep). The entries it starts with (the special tokens) are pinned: ``bpe()`` only
    treats them as single tokens because it finds them here.
    """

    def __init__(self, pinned: dict, maxsize: int):
        self.pinned, self.maxsize = frozenset(pinned), max(int(maxsize), len(pinned) + 1)
        super().__init__(pinned)

    def __setitem__(self, key, value):
        if key not in self.pinned and len(key) > BPE_CACHE_MAX_WORD:
            return
        super().__setitem__(key, value)
        while len(self) > self.maxsize:
            old, kept = self.popitem(last=False)
            if old in self.pinned:
                super().__setitem__(old, kept)  # back to the young end


def _hf_tokenizer(source: str, context_length: int, mode: Optional[str], kwargs: dict,
                  cache_dir: Optional[str]) -> Callable:
    what = f"the Hugging Face tokenizer {source!r}"
    if not _has_transformers():
        raise WeightsUnavailableError(f"{what} needs the 'transformers' package, which is not installed")
    if not Path(source).is_dir():
        _require_tokenizer_download(what, source, cache_dir)
    from open_clip.tokenizer import HFTokenizer

    try:
        return HFTokenizer(source, context_length=context_length, cache_dir=cache_dir, tokenizer_mode=mode,
                           **kwargs)
    except (OSError, ValueError, ImportError) as err:  # transformers' can't-load/offline/missing-extra errors
        raise WeightsUnavailableError(f"cannot load {what}: {err}") from None


def _has_transformers() -> bool:
    return importlib.util.find_spec("transformers") is not None


def _require_tokenizer_download(what: str, repo_id: str, cache_dir: Optional[str]) -> None:
    """Return if the tokenizer is cached or downloadable now; else raise with what to do."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("tokenizer_config.json", "tokenizer.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir), str):
                return
        except ValueError:  # not a valid repo id
            break
    advice = (f"Cannot load {what}: {{why}}. Run once with network access (it is then cached), or use a "
              f"model whose tokenizer is built in (OpenAI CLIP BPE, e.g. RN50x4 or the bundled models).")
    if hub_offline():
        raise WeightsUnavailableError(advice.format(why="HF_HUB_OFFLINE=1 is set and it is not cached"))
    why = unreachable_reason(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    if why:
        raise WeightsUnavailableError(advice.format(why=why))


def _siglip_tokenizer(model_name: str, context_length: int) -> Callable:
    # open_clip fetches SigLIP vocabularies from Google storage on every build, uncached.
    variant = "gemma" if "siglip2" in model_name.lower() else "mc4" if "i18n" in model_name.lower() else "c4-en"
    from open_clip.tokenizer import SigLipTokenizer

    url = SigLipTokenizer.VOCAB_FILES[variant]
    what = f"the SigLIP tokenizer vocabulary {url}"
    if not _has_transformers():
        raise WeightsUnavailableError(f"{what} needs the 'transformers' package, which is not installed")
    why = "HF_HUB_OFFLINE=1 is set" if hub_offline() else unreachable_reason(url)
    if why:
        raise WeightsUnavailableError(f"cannot download {what}: {why}")
    return SigLipTokenizer(variant, context_length=context_length)


def unreachable_reason(url: str, timeout: float = 3.0) -> Optional[str]:
    """None when ``url``'s host answers on port 443 within ``timeout`` s, else why not (fast fail)."""
    host = urlparse(url).hostname or url
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as err:
        return f"{host} is unreachable ({err})"


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
