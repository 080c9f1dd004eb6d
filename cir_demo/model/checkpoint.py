"""Checkpoints: our safetensors format, and the official CLIP4Cir ``.pt`` files.

Our format is one ``.safetensors`` file whose tensors are prefixed ``clip.`` and/or
``combiner.`` and whose metadata key ``cir_demo`` holds a JSON config that rebuilds the
models alone (open_clip config, dims, preprocessing, provenance). Writes are atomic.

Official files are ``torch.save({"epoch": e, "CLIP": state_dict})`` and
``{"epoch": e, "Combiner": state_dict}``; they are read with ``torch.load(weights_only=True)``
and any other pickled content is refused.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cir_demo.config.files import atomic_write
from cir_demo.model.clip import ClipModel, build_model, model_config_for, openai_model_name
from cir_demo.model.combiner import Combiner, combiner_dims_from_state_dict

log = logging.getLogger(__name__)

FORMAT = "cir-demo-checkpoint/1"
METADATA_KEY = "cir_demo"
# Keys that OpenAI's CLIP state dicts may carry but that are not parameters.
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says which file and why."""


@dataclass
class Checkpoint:
    """What a checkpoint file held: either model may be None."""

    clip: Optional[ClipModel] = None
    combiner: Optional[Combiner] = None
    config: dict = field(default_factory=dict)


def save_checkpoint(path: PathLike, *, clip: Optional[ClipModel] = None, combiner: Optional[Combiner] = None,
                    provenance: Optional[dict] = None, dtype: Optional[torch.dtype] = None) -> Path:
    """Write CLIP and/or Combiner weights with the config that rebuilds them.

    ``dtype`` (e.g. ``torch.float16``) shrinks floating-point storage; loading casts back to fp32.
    """
    if clip is None and combiner is None:
        raise ValueError("save_checkpoint needs a clip model, a combiner, or both")
    tensors, config = {}, {"format": FORMAT, "provenance": provenance or {}}
    if clip is not None:
        config["clip"] = clip.describe()
        tensors.update(_prefixed("clip.", clip.model.state_dict(), dtype))
    if combiner is not None:
        config["combiner"] = combiner.dims()
        tensors.update(_prefixed("combiner.", combiner.state_dict(), dtype))
    metadata = {METADATA_KEY: json.dumps(config, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _prefixed(prefix: str, state_dict: dict, dtype: Optional[torch.dtype]) -> dict:
    out = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[prefix + key] = tensor.contiguous().clone()  # clone: safetensors refuses shared storage
    return out


def read_checkpoint_config(path: PathLike) -> dict:
    """The embedded config of one of our checkpoints, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: a safetensors file without our '{METADATA_KEY}' config; "
                              f"for plain open_clip weights pass it as pretrained= with a model name")
    return json.loads(metadata[METADATA_KEY])


def load_checkpoint(path: PathLike, *, device: str = "cpu", model_name: Optional[str] = None) -> Checkpoint:
    """Load our ``.safetensors`` checkpoint or an official CLIP4Cir ``.pt`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        ckpt = load_our_checkpoint(path)
    else:
        ckpt = _load_official(path, model_name)
    if ckpt.clip is not None:
        ckpt.clip.to(device)
    if ckpt.combiner is not None:
        ckpt.combiner.to(device).eval()
    return ckpt


def load_our_checkpoint(path: Path) -> Checkpoint:
    config = read_checkpoint_config(path)
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {config.get('format')!r} (expected {FORMAT})")
    groups: dict[str, dict] = {"clip": {}, "combiner": {}}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            prefix, _, rest = key.partition(".")
            if prefix in groups:
                groups[prefix][rest] = handle.get_tensor(key)
    ckpt = Checkpoint(config=config)
    if "clip" in config:
        spec = config["clip"]
        model = build_model(spec["model_config"])
        load_state_strict(model, groups["clip"], path, "CLIP")
        ckpt.clip = ClipModel(model, name=spec["model_name"], model_config=spec["model_config"],
                              preprocess=spec.get("preprocess", {}).get("mode", "targetpad"), source=str(path))
    if "combiner" in config:
        ckpt.combiner = Combiner(**config["combiner"])
        load_state_strict(ckpt.combiner, groups["combiner"], path, "Combiner")
    return ckpt


def load_state_strict(module: torch.nn.Module, state_dict: dict, path: PathLike, what: str) -> None:
    state_dict = {k: v for k, v in state_dict.items() if k not in _NON_PARAMETER_KEYS}
    try:
        module.load_state_dict(state_dict, strict=True)  # copy_ casts fp16 storage back to fp32
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the {what} weights do not fit the architecture: {err}") from None


def safe_torch_load(path: PathLike) -> object:
    """``torch.load(weights_only=True)``; a pickle with arbitrary objects is refused clearly."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as err:
        raise CheckpointError(
            f"{path}: refused to load. Only tensors and plain containers are accepted "
            f"(torch.load with weights_only=True); this file holds other pickled Python objects or is "
            f"damaged. Details: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def _load_official(path: Path, model_name: Optional[str]) -> Checkpoint:
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or not ({"CLIP", "Combiner"} & payload.keys()):
        keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not an official CLIP4Cir checkpoint (expected a dict with 'CLIP' or "
                              f"'Combiner'; found {keys})")
    ckpt = Checkpoint(config={"format": "clip4cir-official", "provenance": {"epoch": payload.get("epoch"),
                                                                          "file": str(path)}})
    if "CLIP" in payload:
        ckpt.clip = clip_from_state_dict(payload["CLIP"], model_name, source=str(path))
    if "Combiner" in payload:
        state = payload["Combiner"]
        try:
            ckpt.combiner = Combiner(**combiner_dims_from_state_dict(state))
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from None
        load_state_strict(ckpt.combiner, state, path, "Combiner")
    return ckpt


# OpenAI CLIP's output width tells the ResNet apart when no model name is given.
_OPENAI_BY_DIM = {1024: "RN50-quickgelu", 640: "RN50x4-quickgelu", 768: "RN50x16-quickgelu"}


def clip_from_state_dict(state_dict: dict, model_name: Optional[str], *, source: str,
                         preprocess: str = "targetpad") -> ClipModel:
    """Build the QuickGELU open_clip model for an OpenAI-format CLIP state dict and load it."""
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if model_name is None:
        dim = int(state_dict["text_projection"].shape[1]) if "text_projection" in state_dict else -1
        if dim not in _OPENAI_BY_DIM:
            raise CheckpointError(f"{source}: cannot tell the CLIP architecture (output width {dim}); "
                                  f"pass the open_clip model name, e.g. RN50x4-quickgelu")
        model_name = _OPENAI_BY_DIM[dim]
    model_name = openai_model_name(model_name)
    config = model_config_for(model_name)
    model = build_model(config)
    load_state_strict(model, state_dict, source, "CLIP")
    return ClipModel(model, name=model_name, model_config=config, preprocess=preprocess, source=source)


def bundle_checkpoint(clip_file: PathLike, combiner_file: PathLike, out: PathLike, *,
                      dtype: Optional[torch.dtype] = torch.float16, provenance: Optional[dict] = None) -> Path:
    """One file holding a stage-1 CLIP and a stage-2 Combiner, with both provenances."""
    clip_ckpt, comb_ckpt = load_checkpoint(clip_file), load_checkpoint(combiner_file)
    if clip_ckpt.clip is None or comb_ckpt.combiner is None:
        raise CheckpointError(f"need a CLIP in {clip_file} and a Combiner in {combiner_file}")
    merged = {"clip": clip_ckpt.config.get("provenance", {}), "combiner": comb_ckpt.config.get("provenance", {}),
              **(provenance or {})}
    return save_checkpoint(out, clip=clip_ckpt.clip, combiner=comb_ckpt.combiner, provenance=merged, dtype=dtype)
