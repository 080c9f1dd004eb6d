"""CLIP through open_clip: one object with the model, its preprocessing and its tokenizer.

``load_clip(model_name, pretrained)`` accepts any open_clip model name (``RN50x4``,
``ViT-B-32``, ``local-dir:/path``, our own ``cir-tiny``) and, for ``pretrained``, a tag
(``openai``, ``laion2b_...``), a local weights file (open_clip, OpenAI/CLIP4Cir
``{"epoch", "CLIP"}``, or our safetensors checkpoint), or None for random weights.
Without a network a tag that is not cached fails within seconds with what to do instead.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import socket
from pathlib import Path
from typing import Optional, Sequence, Union
from urllib.parse import urlparse

import open_clip
import torch

from cir_demo.config import CONTEXT_LENGTH, MODEL_CONFIG_DIR, hub_offline
from cir_demo.data.transforms import Preprocess

log = logging.getLogger(__name__)

# Register our own architectures (e.g. the small ``cir-tiny`` CLIP) the open_clip way.
open_clip.add_model_config(MODEL_CONFIG_DIR)

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
        dtype = _PRECISIONS[precision] if precision else None
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


def load_clip(model_name: str = "RN50x4", pretrained: Optional[str] = None, *, device: str = "cpu",
              preprocess: Optional[str] = None, precision: str = "fp32",
              cache_dir: Optional[str] = None) -> ClipModel:
    """Load a CLIP model; see the module docstring for what ``pretrained`` may be.

    ``preprocess``: ``targetpad`` (default), ``squarepad`` or ``clip``; None keeps what a
    checkpoint of ours recorded.
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    if model_name.startswith(("local-dir:", "hf-hub:")):
        clip = _load_schema_model(model_name, preprocess or "targetpad", cache_dir)
    elif pretrained is None:
        log.warning("no pretrained weights given for %s: using random initialisation", model_name)
        config = model_config_for(model_name)
        clip = ClipModel(build_model(config), name=model_name, model_config=config,
                         preprocess=preprocess or "targetpad", source="random")
    elif os.path.isfile(pretrained) or os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors")):
        from cir_demo.model.checkpoint import load_clip_weights_file

        clip = load_clip_weights_file(pretrained, model_name, preprocess=preprocess)
    else:
        clip = _load_tagged(model_name, pretrained, preprocess or "targetpad", cache_dir)
    return clip.to(device, precision if precision != "fp32" else None)


def _load_tagged(model_name: str, tag: str, preprocess: str, cache_dir: Optional[str]) -> ClipModel:
    if tag == "openai":
        mapped = openai_model_name(model_name)
        if mapped != model_name:
            log.info("OpenAI weights use QuickGELU: loading %s instead of %s", mapped, model_name)
        model_name = mapped
    tag_cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise WeightsUnavailableError(
            f"{tag!r} is neither a pretrained tag of {model_name} (known tags: {', '.join(tags) or 'none'}) "
            f"nor an existing weights file")
    cached = _cached_weights(tag_cfg, cache_dir)
    if cached is None:
        _require_network(f"{model_name} weights {tag!r}", tag_cfg)
        model = open_clip.create_model(model_name, pretrained=tag, cache_dir=cache_dir)
    else:
        log.info("using cached weights %s", cached)
        model = open_clip.create_model(model_name, pretrained=cached)
    return ClipModel(model, name=model_name, model_config=model_config_for(model_name),
                     preprocess=preprocess, source=f"{model_name}:{tag}")


def _load_schema_model(model_name: str, preprocess: str, cache_dir: Optional[str]) -> ClipModel:
    if model_name.startswith("hf-hub:"):
        cached = None
        _require_network(model_name, {"hf_hub": model_name[len("hf-hub:"):]})
        config = open_clip.get_model_config(model_name)
    else:
        folder = Path(model_name[len("local-dir:"):]).expanduser()
        config_file = folder / "open_clip_config.json"
        if not config_file.is_file():
            raise WeightsUnavailableError(f"{config_file} is missing: a local-dir: folder needs open_clip_config.json")
        import json

        config = json.loads(config_file.read_text())["model_cfg"]
        cached = str(folder)
    model = open_clip.create_model(model_name, cache_dir=cache_dir)
    return ClipModel(model, name=model_name, model_config=config, preprocess=preprocess,
                     source=cached or model_name)


def _cached_weights(tag_cfg: dict, cache_dir: Optional[str]) -> Optional[str]:
    """Path of already-downloaded weights for a tag, or None."""
    repo = (tag_cfg.get("hf_hub") or "").strip("/")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        parts = repo.split("/")
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = tag_cfg.get("url") or ""
    if url:
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(urlparse(url).path)
        if local.is_file():
            return str(local)
    return None


def _require_network(what: str, tag_cfg: dict, timeout: float = 3.0) -> None:
    """Fail fast, with advice, when a download is needed and cannot happen."""
    advice = (f"Cannot download {what}: {{why}}. Either run once with network access (the weights are "
              f"then cached), or pass a local weights file (pretrained='/path/to/weights.pt' or "
              f".safetensors, or an official CLIP4Cir checkpoint), or use the built-in offline model "
              f"in weights/ (the default).")
    if hub_offline():
        raise WeightsUnavailableError(advice.format(why="HF_HUB_OFFLINE=1 is set and they are not cached"))
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    if not tag_cfg.get("hf_hub") and tag_cfg.get("url"):
        host = urlparse(tag_cfg["url"]).hostname or host
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            pass
    except OSError as err:
        raise WeightsUnavailableError(advice.format(why=f"{host} is unreachable ({err})")) from None
