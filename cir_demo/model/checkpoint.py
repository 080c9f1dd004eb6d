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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cir_demo.config.files import atomic_write
from cir_demo.model.clip import ClipModel, build_model, model_config_for, openai_model_name
from cir_demo.model.combiner import Combiner, ModelMismatchError, check_compatible, combiner_dims_from_state_dict
from cir_demo.model.vocab import BPE_VOCAB_SIZE, check_vocabulary

log = logging.getLogger(__name__)

FORMAT = "cir-demo-checkpoint/1"
METADATA_KEY = "cir_demo"
# Keys that OpenAI's CLIP state dicts may carry but that are not parameters.
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")
COMBINER_KEYS = ("clip_feature_dim", "projection_dim", "hidden_dim")

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
    A tensor with values the smaller type cannot hold (beyond +-65504 for fp16, which would turn
    into inf) is kept in its own precision instead, with a warning naming it.
    """
    if clip is None and combiner is None:
        raise ValueError("save_checkpoint needs a clip model, a combiner, or both")
    if clip is not None:
        check_compatible(clip, combiner)  # a bundle whose parts do not fit is never written
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
            cast = tensor.to(dtype)
            if bool(torch.isfinite(cast).all()) or not bool(torch.isfinite(tensor).all()):
                tensor = cast
            else:  # finite values that overflow the smaller type: keep this tensor as it is
                log.warning("%s%s holds values beyond the %s range (max |x| = %.4g); stored as %s instead",
                            prefix, key, dtype, float(tensor.abs().max()), tensor.dtype)
        out[prefix + key] = tensor.contiguous().clone()  # clone: safetensors refuses shared storage
    return out


def read_checkpoint_config(path: PathLike) -> dict:
    """The embedded config of one of our checkpoints, without reading its tensors.

    Its structure is checked: malformed metadata raises ``CheckpointError`` saying what is wrong.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: a safetensors file without our '{METADATA_KEY}' config; "
                              f"for plain open_clip weights pass it as pretrained= with a model name")
    try:
        config = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: its '{METADATA_KEY}' metadata is not valid JSON ({err})") from None
    problem = _config_problem(config)
    if problem:
        raise CheckpointError(f"{path}: malformed '{METADATA_KEY}' metadata: {problem}")
    return config


def _config_problem(config: object) -> Optional[str]:
    """What is structurally wrong with a checkpoint config, or None."""
    if not isinstance(config, dict):
        return f"expected a JSON object, found {type(config).__name__}"
    if not isinstance(config.get("provenance", {}), dict):
        return "'provenance' must be an object"
    if "clip" in config:
        clip = config["clip"]
        if not isinstance(clip, dict):
            return f"'clip' must be an object, found {type(clip).__name__}"
        if not isinstance(clip.get("model_config"), dict):
            return "'clip' lacks a 'model_config' object (the open_clip config that rebuilds it)"
        if not isinstance(clip.get("model_name"), str):
            return "'clip' lacks a 'model_name' string"
        if not isinstance(clip.get("preprocess", {}), dict):
            return "'clip.preprocess' must be an object"
        if clip.get("vocabulary") is not None:
            try:
                check_vocabulary(clip["vocabulary"], BPE_VOCAB_SIZE)
            except ValueError as err:
                return f"'clip.vocabulary': {err}"
    if "combiner" in config:
        return _combiner_dims_problem(config["combiner"])
    return None


def _combiner_dims_problem(dims: object) -> Optional[str]:
    if not isinstance(dims, dict):
        return f"'combiner' must be an object, found {type(dims).__name__}"
    unknown, missing = sorted(set(dims) - set(COMBINER_KEYS)), [k for k in COMBINER_KEYS if k not in dims]
    if unknown or missing:
        return f"'combiner' must have exactly {', '.join(COMBINER_KEYS)} (unknown: {unknown}, missing: {missing})"
    bad = [k for k in COMBINER_KEYS if isinstance(dims[k], bool) or not isinstance(dims[k], int) or dims[k] <= 0]
    if bad:
        return f"'combiner' sizes must be positive integers: {', '.join(f'{k}={dims[k]!r}' for k in bad)}"
    return None


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
    """Rebuild the models our checkpoint declares, after checking the stored shapes fit them.

    The check builds each model on the meta device (no memory), so a small file that declares a
    huge model is refused before anything is allocated.
    """
    config = read_checkpoint_config(path)
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {config.get('format')!r} (expected {FORMAT})")
    ckpt = Checkpoint(config=config)
    with safe_open(str(path), framework="pt") as handle:
        shapes: dict[str, dict] = {"clip": {}, "combiner": {}}
        for key in handle.keys():
            prefix, _, rest = key.partition(".")
            if prefix in shapes:
                shapes[prefix][rest] = tuple(handle.get_slice(key).get_shape())

        def tensors(prefix: str) -> dict:
            return {rest: handle.get_tensor(f"{prefix}.{rest}") for rest in shapes[prefix]}

        if "clip" in config:
            spec = config["clip"]
            _check_layer_count(spec["model_config"], len(shapes["clip"]), path)
            model = _build_checked(lambda: build_model(spec["model_config"]), shapes["clip"], path, "CLIP")
            load_state_strict(model, tensors("clip"), path, "CLIP")
            try:
                ckpt.clip = ClipModel(model, name=spec["model_name"], model_config=spec["model_config"],
                                      preprocess=spec.get("preprocess", {}).get("mode", "targetpad"),
                                      source=str(path), vocabulary=spec.get("vocabulary"))
            except ValueError as err:
                raise CheckpointError(f"{path}: {err}") from None
        if "combiner" in config:
            ckpt.combiner = _build_checked(lambda: Combiner(**config["combiner"]), shapes["combiner"], path,
                                           "Combiner")
            load_state_strict(ckpt.combiner, tensors("combiner"), path, "Combiner")
    if ckpt.clip is not None:
        try:
            check_compatible(ckpt.clip, ckpt.combiner)
        except ModelMismatchError as err:
            raise CheckpointError(f"{path}: {err}") from None
    return ckpt


def _check_layer_count(model_config: dict, stored_tensors: int, path: PathLike) -> None:
    """Refuse a declared depth no stored weights could fill (every layer has at least one tensor).

    Even on the meta device, building a million declared layers costs a million Python modules.
    """
    total = 0
    for tower in ("vision_cfg", "text_cfg"):
        cfg = model_config.get(tower)
        layers = cfg.get("layers", 0) if isinstance(cfg, dict) else 0
        layers = layers if isinstance(layers, (list, tuple)) else [layers]
        total += sum(n for n in layers if isinstance(n, int))
    tower = model_config.get("conv_tower")  # the built-in grid tower: one block of tensors per width
    widths = tower.get("widths", ()) if isinstance(tower, dict) else ()
    total += len(widths) if isinstance(widths, (list, tuple)) else 0
    if total > stored_tensors:
        raise CheckpointError(f"{path}: the CLIP config declares {total} layers but the file stores only "
                              f"{stored_tensors} CLIP tensors")


def _build_checked(build: Callable[[], torch.nn.Module], stored: dict, path: PathLike,
                   what: str) -> torch.nn.Module:
    """``build()`` for real, once a meta-device build showed its tensor shapes equal ``stored``."""
    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception as err:  # any failure to build from declared metadata means bad metadata
        raise CheckpointError(f"{path}: the declared {what} architecture cannot be built: "
                              f"{type(err).__name__}: {err}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = {k: v for k, v in stored.items() if k not in _NON_PARAMETER_KEYS}
    problems = [f"missing {k}" for k in sorted(expected.keys() - stored.keys())]
    problems += [f"unexpected {k}" for k in sorted(stored.keys() - expected.keys())]
    problems += [f"{k}: stored {list(stored[k])}, declared {list(expected[k])}"
                 for k in sorted(expected.keys() & stored.keys()) if stored[k] != expected[k]]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(f"{path}: the stored {what} tensors do not fit the declared architecture: "
                              f"{'; '.join(problems[:5])}{more}")
    return build()


def load_state_strict(module: torch.nn.Module, state_dict: dict, path: PathLike, what: str) -> None:
    """Load ``state_dict`` into ``module`` exactly (no missing or extra keys, same shapes).

    NaN in any tensor, or inf in a parameter, is refused naming the tensor: such weights only ever
    produce NaN features, which would fail far from their cause.
    """
    state_dict = {k: v for k, v in state_dict.items() if k not in _NON_PARAMETER_KEYS}
    parameters = {name for name, _ in module.named_parameters()}
    for key, tensor in state_dict.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            bad = torch.isnan(tensor) if key not in parameters else ~torch.isfinite(tensor)
            if bool(bad.any()):
                raise CheckpointError(f"{path}: the {what} tensor {key!r} holds {int(bad.sum())} NaN / inf "
                                      f"values; these weights are broken (a diverged or damaged model)")
    try:
        module.load_state_dict(state_dict, strict=True)  # copy_ casts fp16 storage back to fp32
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the {what} weights do not fit the architecture: {err}") from None


def safe_torch_load(path: PathLike) -> object:
    """``torch.load(weights_only=True)``; a pickle with arbitrary objects is refused clearly.

    The message says why (unpickling arbitrary objects can execute code) and what to do (re-save
    the weights as a plain state dict or as safetensors); it never suggests turning the safe
    loader off.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load: it holds pickled Python objects other than tensors and plain "
            f"containers{what}. Unpickling such objects can execute arbitrary code, so this loader "
            f"(torch.load with weights_only=True) accepts only weights. Re-save the weights alone, e.g. "
            f"torch.save({{'CLIP': model.state_dict()}}, file), or as safetensors.") from None
    except (RuntimeError, AttributeError, TypeError, ValueError, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise CheckpointError(f"checkpoint not found: {path}") from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "weights_only" in first:  # torch's own advice would be to turn the safe loader off
            first = type(err).__name__
        raise CheckpointError(f"{path}: refused to load: not a readable PyTorch checkpoint, it is damaged or "
                              f"truncated ({first[:200]})") from None


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
