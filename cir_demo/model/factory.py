"""One factory for CLIP models: tags, local files of any kind, ``local-dir:`` / ``hf-hub:`` names.

``load_clip(model_name, pretrained)`` accepts any open_clip model name (``RN50x4``,
``ViT-B-32``, ``local-dir:/path``, our own ``cir-tiny``) and, for ``pretrained``, a tag
(``openai``, ``laion2b_...``), a local weights file (open_clip, OpenAI/CLIP4Cir
``{"epoch", "CLIP"}``, or our safetensors checkpoint), or None for random weights.
Without a network a tag that is not cached fails within seconds with what to do instead.
It sits above ``clip`` (the model object) and ``checkpoint`` (file formats), so neither
imports the other's loader.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlparse

import open_clip
from safetensors import safe_open

from cir_demo.config import hub_offline
from cir_demo.config.runtime import PRECISIONS
from cir_demo.data.transforms import Preprocess
from cir_demo.model.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    clip_from_state_dict,
    load_our_checkpoint,
    load_state_strict,
    safe_torch_load,
)
from cir_demo.model.clip import ClipModel, build_model, model_config_for, openai_model_name
from cir_demo.model.offline import WeightsUnavailableError, unreachable_reason

log = logging.getLogger(__name__)


def load_clip(model_name: str = "RN50x4", pretrained: Optional[str] = None, *, device: str = "cpu",
              preprocess: Optional[str] = None, precision: str = "fp32",
              cache_dir: Optional[str] = None) -> ClipModel:
    """Load a CLIP model; see the module docstring for what ``pretrained`` may be.

    ``preprocess``: ``targetpad`` (default), ``squarepad`` or ``clip``; None keeps what a
    checkpoint of ours recorded.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if model_name.startswith(("local-dir:", "hf-hub:")):
        clip = _load_schema_model(model_name, preprocess or "targetpad", cache_dir)
    elif pretrained is None:
        log.warning("no pretrained weights given for %s: using random initialisation", model_name)
        config = model_config_for(model_name)
        clip = ClipModel(build_model(config), name=model_name, model_config=config,
                         preprocess=preprocess or "targetpad", source="random")
    elif os.path.isfile(pretrained) or os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors")):
        clip = load_clip_weights_file(pretrained, model_name, preprocess=preprocess)
    else:
        clip = _load_tagged(model_name, pretrained, preprocess or "targetpad", cache_dir)
    return clip.to(device, precision if precision != "fp32" else None)


def load_clip_weights_file(path: Union[str, os.PathLike], model_name: Optional[str], *,
                           preprocess: Optional[str] = None) -> ClipModel:
    """CLIP from a local file: our checkpoint, an official ``{"CLIP": ...}`` file, or plain weights.

    ``preprocess`` None keeps what our checkpoint recorded (``targetpad`` for other files).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                ours = METADATA_KEY in (handle.metadata() or {})
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
        if ours:
            clip = load_our_checkpoint(path).clip
            if clip is None:
                raise CheckpointError(f"{path}: holds no CLIP weights (only a Combiner)")
            if preprocess:
                clip.preprocess = Preprocess(preprocess, clip.image_size)
            return clip
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        payload = safe_torch_load(path)
        if isinstance(payload, dict) and "CLIP" in payload:
            return clip_from_state_dict(payload["CLIP"], model_name, source=str(path),
                                        preprocess=preprocess or "targetpad")
        state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    if model_name is None:
        raise CheckpointError(f"{path}: plain weights need an open_clip model name")
    config = model_config_for(model_name)
    model = build_model(config)
    load_state_strict(model, {k.removeprefix("module."): v for k, v in state.items()}, path, "CLIP")
    return ClipModel(model, name=model_name, model_config=config, preprocess=preprocess or "targetpad",
                     source=str(path))


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
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not tag_cfg.get("hf_hub") and tag_cfg.get("url"):
        url = tag_cfg["url"]
    why = unreachable_reason(url, timeout)
    if why:
        raise WeightsUnavailableError(advice.format(why=why))
