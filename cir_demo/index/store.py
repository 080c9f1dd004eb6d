"""The gallery index artifact: a folder of raw fp16 features, row-aligned names and a manifest.

Layout (format ``cir-index/1``)::

    <folder>/features.safetensors   key "features": raw (UNnormalised) CLIP image features, fp16 (N, D)
    <folder>/names.json             list of N unique image names, row-aligned with the features
    <folder>/manifest.json          {"format", "count", "dim", "model_fingerprint", "model_name",
                                     "preprocess", "image_root", "dataset", "split", "category",
                                     "created_by", "content_hash", optional "rebuild_command", ...}

``content_hash`` is a BLAKE2b digest of the fp16 feature bytes and the names, written with the
index and checked on load (``verify=True``, the default: about 0.3 s per 100k x 640 rows), so a
file changed in place -- zeroed blocks, a bit flip, edited names -- is refused, not served.

Writes are atomic: the files go to a temp folder beside the target (created with the umask's
permissions, 0755 typically), which then takes the target's place in one step. On Linux that
step is ``renameat2(RENAME_EXCHANGE)``, swapping the new folder and the old index in a single
atomic operation, so a reader -- or a run killed at any point -- always finds a complete index,
old or new, at the path; the old one is then deleted. Where the exchange is unsupported (other
systems, some network file systems) the old index is renamed aside and the new one renamed in:
a kill between those two renames leaves the previous index at ``.<name>.old-*`` (``load_index``
names it). Litter of killed runs (``.<name>.tmp-*`` / ``.<name>.old-*`` whose process is gone) is
removed by the next save. A ``--out`` that is a symlink is kept: the index replaces its target.

Loads validate everything and refuse an index built by a different model. Bad input raises
``IndexFormatError`` (its subclass ``IndexDataError`` for features or names that cannot make an
index) or ``IndexMismatchError``, all ``ValueError`` s; a missing folder ``FileNotFoundError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from cir_demo.config.files import fsync_dir, litter, remove_litter, sibling, swap_into_place, umask
from cir_demo.config.text import shown

logger = logging.getLogger(__name__)

FORMAT = "cir-index/1"
FEATURES_FILE, NAMES_FILE, MANIFEST_FILE = "features.safetensors", "names.json", "manifest.json"
DEFAULT_REBUILD = "python -m cir_demo index ..."


class IndexFormatError(ValueError):
    """The folder is not a readable, self-consistent gallery index (missing, truncated, corrupt)."""


class IndexDataError(IndexFormatError):
    """Features or names that cannot make a gallery index (NaN / inf, wrong shape, bad names)."""


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
        self.names = check_names(self.names, int(self.features.shape[0]))
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
    command = manifest.get("rebuild_command") if isinstance(manifest, Mapping) else None
    return f"rebuild it with: {command if isinstance(command, str) and command else DEFAULT_REBUILD}"


def _as_fp16(features: Any) -> torch.Tensor:
    try:
        tensor = torch.from_numpy(np.asarray(features)) if not torch.is_tensor(features) else features
    except (TypeError, ValueError, RuntimeError) as err:  # ragged lists, objects, strings
        raise IndexDataError(f"features must be a numeric (N, D) matrix ({err})") from None
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise IndexDataError(f"features must be a non-empty (N, D) matrix, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise IndexDataError(f"features must be floating point, got {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        raise IndexDataError("features contain NaN or inf (the model that made them is broken)")
    out = tensor.detach().to("cpu", torch.float16).contiguous()  # (N, D)
    if not bool(torch.isfinite(out).all()):
        raise IndexDataError("features hold values beyond the fp16 range (|x| > 65504); the index stores fp16")
    return out


def check_names(names: Iterable[str], rows: int) -> list[str]:
    """Validate a row-aligned name list (strings, unique, one per row); returns it as a list.

    Anything else -- not a list, non-string or empty entries (lists, numbers, None), repeats, a
    count that differs from ``rows`` -- raises ``IndexDataError`` naming the first bad entry.
    """
    if isinstance(names, (str, bytes, Mapping)) or not isinstance(names, Iterable):
        raise IndexDataError(f"names must be a list of strings, got {type(names).__name__}")
    names = list(names)
    if len(names) != rows:
        raise IndexDataError(f"{len(names)} names for {rows} feature rows")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise IndexDataError(f"names must be non-empty strings; entry {i} is {shown(name, 80)}")
        if name in seen:
            raise IndexDataError(f"names must be unique; {shown(name, 80)} appears more than once")
        seen.add(name)
    return names


def save_index(path: str | os.PathLike, features: Any, names: Sequence[str],
               manifest: Mapping[str, Any]) -> Path:
    """Write an index folder atomically and return its path.

    features: raw (N, D) float tensor/array (stored as fp16, not normalised); names: N unique
    strings; manifest: must contain "model_fingerprint"; "format", "count" and "dim" are filled
    in. An existing index (or empty folder) at `path` is replaced in one atomic step; any other
    existing path is refused (FileExistsError). If `path` is a symlink, its target is replaced and
    the link kept. On any failure nothing is left behind and a previous index stays intact.
    """
    given = path = Path(path)
    if path.is_symlink():  # keep the link: replace what it points to
        path = Path(os.path.realpath(path))
    feats = _as_fp16(features)
    names = check_names(names, feats.shape[0])
    if not isinstance(manifest, Mapping):
        raise IndexDataError(f"manifest must be a mapping, got {type(manifest).__name__}")
    meta = dict(manifest)
    if not isinstance(meta.get("model_fingerprint"), str):
        raise IndexDataError("manifest needs a 'model_fingerprint' string (the model that made the features)")
    meta.update(format=FORMAT, count=int(feats.shape[0]), dim=int(feats.shape[1]),
                content_hash=content_hash(feats, names))
    meta.setdefault("created_by", "cir_demo")
    if (path.exists() or path.is_symlink()) and not _replaceable(path):
        raise FileExistsError(f"{path} exists and is not a gallery index; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_litter(path)
    tmp = sibling(path, "tmp")
    os.mkdir(tmp)  # 0777 less the umask, like any folder the user makes (mkdtemp would make 0700)
    try:
        _write_files(tmp, feats, names, meta)
        swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved gallery index %s (%d x %d)", path, feats.shape[0], feats.shape[1])
    return given


def content_hash(features: torch.Tensor, names: Sequence[str]) -> str:
    """BLAKE2b (16 bytes, hex) of fp16 ``features`` (N, D) and the row-aligned ``names``."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(features.detach().to("cpu", torch.float16).contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(list(names), ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def _write_files(folder: Path, feats: torch.Tensor, names: list[str], meta: dict) -> None:
    from safetensors.torch import save_file

    save_file({"features": feats}, str(folder / FEATURES_FILE), metadata={"format": FORMAT})
    _write_json(folder / NAMES_FILE, names)
    _write_json(folder / MANIFEST_FILE, meta)
    mode = 0o666 & ~umask()  # safetensors writes 0600; every file gets what open() would give
    for name in (FEATURES_FILE, NAMES_FILE, MANIFEST_FILE):
        os.chmod(folder / name, mode)
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(folder)


def _write_json(file: Path, obj: Any) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1, sort_keys=isinstance(obj, dict))


def _replaceable(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def load_index(path: str | os.PathLike, expected_fingerprint: str | None = None, *,
               expected_model_name: str | None = None, verify: bool = True) -> GalleryIndex:
    """Load and validate an index folder.

    With `expected_fingerprint`, an index built by another model raises IndexMismatchError
    (naming both models and the rebuild command) before the features are read. A missing,
    truncated or inconsistent folder raises IndexFormatError (FileNotFoundError if absent), and so
    does one whose content no longer matches its recorded ``content_hash`` (``verify=False``
    skips that check, for very large indexes; indexes written before it was recorded load as is).
    """
    path = Path(path)
    if not path.is_dir():
        left = sorted(p.name for p in litter(path) if (p / MANIFEST_FILE).is_file()) if not path.exists() else []
        hint = f"; an interrupted save left the previous index at {path.parent / left[0]}" if left else ""
        raise FileNotFoundError(f"no gallery index folder at {path}{hint}; build one with: {DEFAULT_REBUILD}")
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
        if not bool(torch.isfinite(feats).all()):
            raise ValueError("features contain NaN or inf")
        recorded = meta.get("content_hash")
        if verify and recorded is not None and content_hash(feats, names) != recorded:
            raise ValueError("its content no longer matches the content_hash its manifest records "
                             "(a file was changed after it was written)")
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
