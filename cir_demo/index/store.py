"""The gallery index artifact: a folder of raw fp16 features, row-aligned names and a manifest.

Layout (format ``cir-index/1``)::

    <folder>/features.safetensors   key "features": raw (UNnormalised) CLIP image features, fp16 (N, D)
    <folder>/names.json             list of N unique image names, row-aligned with the features
    <folder>/manifest.json          {"format", "count", "dim", "model_fingerprint", "model_name",
                                     "preprocess", "image_root", "dataset", "split", "category",
                                     "created_by", optional "rebuild_command", ...}

Writes are atomic (a temp folder beside the target, then a rename); loads validate everything
and refuse an index built by a different model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

FORMAT = "cir-index/1"
FEATURES_FILE, NAMES_FILE, MANIFEST_FILE = "features.safetensors", "names.json", "manifest.json"
DEFAULT_REBUILD = "python -m cir_demo index ..."


class IndexFormatError(ValueError):
    """The folder is not a readable, self-consistent gallery index (missing, truncated, corrupt)."""


class IndexMismatchError(ValueError):
    """The index was built by a different model than the one it is loaded for."""


@dataclass
class GalleryIndex:
    """A loaded index: raw fp16 features (N, D) on the CPU, names, manifest and source folder."""

    features: torch.Tensor
    names: list[str]
    manifest: dict[str, Any]
    path: Path | None = None
    row_of: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.row_of = {name: i for i, name in enumerate(self.names)}

    @property
    def count(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def fingerprint(self) -> str | None:
        return self.manifest.get("model_fingerprint")


def rebuild_hint(manifest: Mapping[str, Any] | None) -> str:
    """The command that rebuilds this index (the manifest's "rebuild_command" if recorded)."""
    command = (manifest or {}).get("rebuild_command") or DEFAULT_REBUILD
    return f"rebuild it with: {command}"


def _as_fp16(features: Any) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(features)) if not torch.is_tensor(features) else features
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"features must be a non-empty (N, D) matrix, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"features must be floating point, got {tensor.dtype}")
    out = tensor.detach().to("cpu", torch.float16).contiguous()  # (N, D)
    if not bool(torch.isfinite(out).all()):
        raise ValueError("features contain NaN/inf (or values beyond the fp16 range)")
    return out


def check_names(names: Sequence[str], rows: int) -> list[str]:
    """Validate a row-aligned name list (strings, unique, one per row); returns it as a list."""
    names = list(names)
    if len(names) != rows:
        raise ValueError(f"{len(names)} names for {rows} feature rows")
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError("names must be non-empty strings")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"names must be unique; {name!r} appears more than once")
        seen.add(name)
    return names


def save_index(path: str | os.PathLike, features: Any, names: Sequence[str],
               manifest: Mapping[str, Any]) -> Path:
    """Write an index folder atomically and return its path.

    features: raw (N, D) float tensor/array (stored as fp16, not normalised); names: N unique
    strings; manifest: must contain "model_fingerprint"; "format", "count" and "dim" are filled
    in. An existing index (or empty folder) at `path` is replaced; any other existing path is
    refused. On any failure nothing is left behind and a previous index stays intact.
    """
    path = Path(path)
    feats = _as_fp16(features)
    names = check_names(names, feats.shape[0])
    meta = dict(manifest)
    if not isinstance(meta.get("model_fingerprint"), str):
        raise ValueError("manifest needs a 'model_fingerprint' string (the model that made the features)")
    meta.update(format=FORMAT, count=int(feats.shape[0]), dim=int(feats.shape[1]))
    meta.setdefault("created_by", "cir_demo")
    if path.exists() and not _replaceable(path):
        raise FileExistsError(f"{path} exists and is not a gallery index; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _write_files(tmp, feats, names, meta)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved gallery index %s (%d x %d)", path, feats.shape[0], feats.shape[1])
    return path


def _write_files(folder: Path, feats: torch.Tensor, names: list[str], meta: dict) -> None:
    from safetensors.torch import save_file

    save_file({"features": feats}, str(folder / FEATURES_FILE), metadata={"format": FORMAT})
    _write_json(folder / NAMES_FILE, names)
    _write_json(folder / MANIFEST_FILE, meta)
    for name in (FEATURES_FILE, NAMES_FILE, MANIFEST_FILE):
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())


def _write_json(file: Path, obj: Any) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1, sort_keys=isinstance(obj, dict))


def _replaceable(path: Path) -> bool:
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / MANIFEST_FILE).read_text("utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename tmp to path; an existing index is moved aside first and restored on failure."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_index(path: str | os.PathLike, expected_fingerprint: str | None = None, *,
               expected_model_name: str | None = None) -> GalleryIndex:
    """Load and validate an index folder.

    With `expected_fingerprint`, an index built by another model raises IndexMismatchError
    (naming both models and the rebuild command) before the features are read. A missing,
    truncated or inconsistent folder raises IndexFormatError (FileNotFoundError if absent).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no gallery index folder at {path}; build one with: {DEFAULT_REBUILD}")
    meta = _read_json(path / MANIFEST_FILE, None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFormatError(f"{path / MANIFEST_FILE} is not a {FORMAT} manifest; {rebuild_hint(meta)}")
    if expected_fingerprint is not None and meta.get("model_fingerprint") != expected_fingerprint:
        raise IndexMismatchError(
            f"gallery index {path} was built with model {meta.get('model_name', '?')!r} "
            f"(fingerprint {meta.get('model_fingerprint')}), but the loaded model is "
            f"{expected_model_name or '?'!r} (fingerprint {expected_fingerprint}); its features do not "
            f"match this model: {rebuild_hint(meta)}")
    names = _read_json(path / NAMES_FILE, meta)
    feats = _read_features(path / FEATURES_FILE, meta)
    try:
        if feats.shape != (meta.get("count"), meta.get("dim")):
            raise ValueError(f"features are {tuple(feats.shape)} but the manifest says "
                             f"count={meta.get('count')}, dim={meta.get('dim')}")
        if not isinstance(names, list):
            raise ValueError(f"{NAMES_FILE} must hold a list of names")
        names = check_names(names, feats.shape[0])
    except ValueError as err:
        raise IndexFormatError(f"inconsistent gallery index {path}: {err}; {rebuild_hint(meta)}") from None
    return GalleryIndex(features=feats, names=names, manifest=meta, path=path)


def _read_json(file: Path, meta: Mapping | None) -> Any:
    try:
        return json.loads(file.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"cannot read {file} ({err}); {rebuild_hint(meta)}") from None


def _read_features(file: Path, meta: Mapping) -> torch.Tensor:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(file))
    except Exception as err:  # SafetensorError, OSError: truncated or corrupt file
        raise IndexFormatError(f"cannot read {file}: truncated or corrupt ({err}); "
                               f"{rebuild_hint(meta)}") from None
    feats = tensors.get("features")
    if feats is None or feats.dtype != torch.float16 or feats.ndim != 2:
        raise IndexFormatError(f"{file} must hold a 2-D fp16 tensor 'features'; {rebuild_hint(meta)}")
    return feats
