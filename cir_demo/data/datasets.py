"""Loaders for FashionIQ and CIRR folders in their official layouts (real or synthetic).

One split of one dataset (one FashionIQ category, or CIRR) is a :class:`CIRDataset`: its triplets
as :class:`~cir_demo.data.records.Triplet` records, its gallery (``image_names``) and where each
image lives. Loading validates cheaply and fails with a :class:`DatasetError` that names the file
(and, for JSON, the line / column / character position or the entry index)::

    FashionIQ root/  captions/cap.{cat}.{split}.json   image_splits/split.{cat}.{split}.json
                     images/{name}.jpg (.png / .jpeg accepted)
    CIRR root/       cirr/captions/cap.rc2.{split}.json   cirr/image_splits/split.rc2.{split}.json
                     train/<k>/, dev/, test1/ (paths taken from the split file)

An optional ``absolute_captions.json`` ({name: caption}) at the root, written by the synthetic
world generator, is served by :meth:`CIRDataset.absolute_captions`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from PIL import Image

from cir_demo.data.records import Triplet

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
FASHIONIQ_SPLITS = ("train", "val", "test")
CIRR_SPLITS = ("train", "val", "test1")
ABSOLUTE_CAPTIONS = "absolute_captions.json"
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg")  # FashionIQ ships .jpg; .png is accepted too


class DatasetError(ValueError):
    """Bad or missing dataset data; the message names the file (and position or entry)."""


class UnknownImageError(DatasetError, KeyError):
    """An image name that is not in the split's gallery."""

    __str__ = BaseException.__str__  # KeyError would quote the whole message


def read_json(path: Path):
    """Parse a JSON file; any failure is a :class:`DatasetError` naming the file and position."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno} "
                           f"(char {err.pos}): {err.msg}") from None


class DirectoryListing:
    """File names per folder, listed once: checking 100k images by ``stat`` would be slow."""

    def __init__(self):
        self._dirs = {}

    def names(self, folder: Path) -> set:
        key = str(folder)
        if key not in self._dirs:
            self._dirs[key] = set(os.listdir(folder)) if folder.is_dir() else set()
        return self._dirs[key]

    def exists(self, path: Path) -> bool:
        return path.name in self.names(path.parent)


class CIRDataset:
    """One split of one dataset: triplets, gallery names and image locations."""

    def __init__(self, *, dataset: str, split: str, category: Optional[str], root: Path, triplets: list,
                 image_paths: dict):
        self.dataset, self.split, self.category, self.root = dataset, split, category, Path(root)
        self.triplets = triplets
        self.image_names = list(image_paths)
        self._paths = image_paths
        self._absolute = None

    def __len__(self) -> int:
        return len(self.triplets)

    def __repr__(self) -> str:
        what = f"{self.dataset}/{self.category}" if self.category else self.dataset
        return f"CIRDataset({what}, {self.split}: {len(self.triplets)} triplets, {len(self.image_names)} images)"

    def image_path(self, name: str) -> Path:
        """Path of gallery image ``name``; :class:`UnknownImageError` (a KeyError) if not in the split."""
        try:
            return self._paths[name]
        except (KeyError, TypeError):
            raise UnknownImageError(f"{name!r} is not an image of {self!r}") from None

    def open_image(self, name: str) -> Image.Image:
        """Gallery image ``name`` as an RGB PIL image (decoded now, file closed)."""
        path = self.image_path(name)
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except Exception as err:  # OSError, DecompressionBombError, SyntaxError, ValueError, MemoryError...
            raise DatasetError(f"{path}: cannot read image: {err or type(err).__name__}") from None

    def absolute_captions(self) -> dict:
        """``{name: caption}`` for this split's images from ``absolute_captions.json``; {} if absent."""
        if self._absolute is None:
            path = self.root / ABSOLUTE_CAPTIONS
            data = read_json(path) if path.is_file() else {}
            if not isinstance(data, dict):
                raise DatasetError(f"{path}: expected a JSON object {{image name: caption}}")
            self._absolute = {n: data[n] for n in self.image_names if isinstance(data.get(n), str)}
        return dict(self._absolute)


def _require(entry, index: int, path: Path, key: str, kind):
    """``entry[key]`` checked to be of ``kind``; else a DatasetError naming file and entry."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: entry {index} is not a JSON object")
    if key not in entry:
        raise DatasetError(f"{path}: entry {index} lacks the key {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{path}: entry {index}: {key!r} should be {getattr(kind, '__name__', kind)}, "
                           f"got {value!r}")
    return value


def _check_member(name: str, gallery: dict, path: Path, index: int, key: str, split_file: Path) -> None:
    if name not in gallery:
        raise DatasetError(f"{path}: entry {index}: {key} image {name!r} is not in the split file {split_file}")


def _choose(value: str, options, what: str) -> None:
    if not isinstance(value, str) or value not in options:
        raise DatasetError(f"unknown {what} {value!r}; expected one of {', '.join(options)}")


def unsafe_relative_path(rel) -> bool:
    """True if ``rel`` could leave the folder it is relative to: absolute, or with a ``..`` part
    (``/`` and ``\\`` both count as separators, so a Windows-style name cannot sneak one in)."""
    if not isinstance(rel, str):
        return True
    parts = rel.replace("\\", "/").split("/")
    return rel.startswith(("/", "\\")) or Path(rel).is_absolute() or ".." in parts or "\0" in rel


def _fashioniq_gallery(root: Path, split_file: Path) -> dict:
    names = read_json(split_file)
    if not isinstance(names, list):
        raise DatasetError(f"{split_file}: expected a JSON list of image names")
    folder, listing, gallery = root / "images", DirectoryListing(), {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{split_file}: entry {i} is not an image name: {name!r}")
        if unsafe_relative_path(name):  # would resolve outside images/ (CIRR refuses these too)
            raise DatasetError(f"{split_file}: entry {i}: bad image name {name!r} (absolute or with '..')")
        found = next((folder / (name + ext) for ext in IMAGE_EXTENSIONS if listing.exists(folder / (name + ext))), None)
        if found is None:
            raise DatasetError(f"{folder / (name + '.jpg')}: image file not found (entry {i} of {split_file})")
        gallery[name] = found
    return gallery


def load_fashioniq(root, category: str, split: str) -> CIRDataset:
    """FashionIQ ``category`` / ``split``; triplets keep both raw captions; test may lack targets."""
    _choose(category, FASHIONIQ_CATEGORIES, "FashionIQ category")
    _choose(split, FASHIONIQ_SPLITS, "FashionIQ split")
    root = Path(root)
    split_file = root / "image_splits" / f"split.{category}.{split}.json"
    gallery = _fashioniq_gallery(root, split_file)
    cap_file = root / "captions" / f"cap.{category}.{split}.json"
    entries = read_json(cap_file)
    if not isinstance(entries, list):
        raise DatasetError(f"{cap_file}: expected a JSON list of triplets")
    triplets = []
    for i, entry in enumerate(entries):
        reference = _require(entry, i, cap_file, "candidate", str)
        target = None
        if split != "test" or "target" in entry:  # FashionIQ's test captions may hide targets
            target = _require(entry, i, cap_file, "target", str)
            _check_member(target, gallery, cap_file, i, "target", split_file)
        _check_member(reference, gallery, cap_file, i, "candidate", split_file)
        captions = _require(entry, i, cap_file, "captions", list)
        if len(captions) != 2 or not all(isinstance(c, str) for c in captions):
            raise DatasetError(f"{cap_file}: entry {i}: 'captions' should be 2 strings, got {captions!r}")
        triplets.append(Triplet("fashioniq", split, reference, target, tuple(captions), category=category))
    return CIRDataset(dataset="fashioniq", split=split, category=category, root=root, triplets=triplets,
                      image_paths=gallery)


def _cirr_gallery(root: Path, split_file: Path) -> dict:
    mapping = read_json(split_file)
    if not isinstance(mapping, dict):
        raise DatasetError(f"{split_file}: expected a JSON object {{image name: relative path}}")
    listing, gallery = DirectoryListing(), {}
    for name, rel in mapping.items():
        if unsafe_relative_path(rel):
            raise DatasetError(f"{split_file}: image {name!r}: bad relative path {rel!r}")
        path = root / Path(rel)
        if not listing.exists(path):
            raise DatasetError(f"{path}: image file not found (image {name!r} of {split_file})")
        gallery[name] = path
    return gallery


def _cirr_triplet(entry, i: int, cap_file: Path, split: str, gallery: dict, split_file: Path) -> Triplet:
    pair_id = _require(entry, i, cap_file, "pairid", int)
    reference = _require(entry, i, cap_file, "reference", str)
    caption = _require(entry, i, cap_file, "caption", str)
    members = _require(_require(entry, i, cap_file, "img_set", dict), i, cap_file, "members", list)
    _check_member(reference, gallery, cap_file, i, "reference", split_file)
    target = None
    if split != "test1":
        target = _require(entry, i, cap_file, "target_hard", str)
        _check_member(target, gallery, cap_file, i, "target_hard", split_file)
    for m in members:
        if not isinstance(m, str):
            raise DatasetError(f"{cap_file}: entry {i}: img_set member {m!r} is not an image name")
        _check_member(m, gallery, cap_file, i, "img_set member", split_file)
    return Triplet("cirr", split, reference, target, (caption,), pair_id=pair_id, group=tuple(members))


def load_cirr(root, split: str) -> CIRDataset:
    """CIRR ``split`` (train / val / test1); test1 triplets have ``target=None``."""
    _choose(split, CIRR_SPLITS, "CIRR split")
    root = Path(root)
    split_file = root / "cirr" / "image_splits" / f"split.rc2.{split}.json"
    gallery = _cirr_gallery(root, split_file)
    cap_file = root / "cirr" / "captions" / f"cap.rc2.{split}.json"
    entries = read_json(cap_file)
    if not isinstance(entries, list):
        raise DatasetError(f"{cap_file}: expected a JSON list of queries")
    triplets, seen = [], {}
    for i, entry in enumerate(entries):
        triplet = _cirr_triplet(entry, i, cap_file, split, gallery, split_file)
        if triplet.pair_id in seen:
            raise DatasetError(f"{cap_file}: entry {i}: pairid {triplet.pair_id} repeats entry {seen[triplet.pair_id]}")
        seen[triplet.pair_id] = i
        triplets.append(triplet)
    return CIRDataset(dataset="cirr", split=split, category=None, root=root, triplets=triplets,
                      image_paths=gallery)


def detect_layout(root) -> str:
    """``"fashioniq"`` if ``root/captions/cap.*.json`` exist, ``"cirr"`` if ``root/cirr/captions`` is a
    folder; else a DatasetError."""
    root = Path(root)
    if (root / "captions").is_dir() and any((root / "captions").glob("cap.*.json")):
        return "fashioniq"
    if (root / "cirr" / "captions").is_dir():
        return "cirr"
    raise DatasetError(f"{root}: neither a FashionIQ folder (captions/cap.*.json) nor a CIRR folder (cirr/captions/)")


def open_dataset(root, split: str, category: Optional[str] = None) -> CIRDataset:
    """Load ``split`` of whichever dataset ``root`` holds; FashionIQ needs ``category``."""
    if detect_layout(root) == "cirr":
        return load_cirr(root, split)
    if category is None:
        raise DatasetError(f"{root} is a FashionIQ folder: give a category ({', '.join(FASHIONIQ_CATEGORIES)})")
    return load_fashioniq(root, category, split)
