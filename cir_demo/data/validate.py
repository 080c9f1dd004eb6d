"""Check a FashionIQ or CIRR folder against the official layout and list every problem found.

Unlike the loaders, which stop at the first error, :func:`validate_layout` goes through all files
and reports each problem as one line naming the file (and entry). Checked: every file of the
layout exists and parses; every required key is present with the right type; every referenced
image is in its split file and exists on disk; captions are non-empty; CIRR ``img_set`` s have 6
distinct members including the reference and target; ``pairid`` s are unique.
"""

from __future__ import annotations

from pathlib import Path

from cir_demo.data.datasets import (
    ABSOLUTE_CAPTIONS,
    CIRR_SPLITS,
    FASHIONIQ_CATEGORIES,
    FASHIONIQ_SPLITS,
    IMAGE_EXTENSIONS,
    DatasetError,
    DirectoryListing,
    read_json,
    unsafe_relative_path,
)

CIRR_FOLDERS = {"train": "./train/", "val": "./dev/", "test1": "./test1/"}
MAX_PER_FILE = 20  # beyond this a broken file would drown the others


class _Report:
    def __init__(self):
        self.problems, self._per_file = [], {}

    def add(self, path: Path, message: str) -> None:
        n = self._per_file[str(path)] = self._per_file.get(str(path), 0) + 1
        if n <= MAX_PER_FILE:
            self.problems.append(f"{path}: {message}")
        elif n == MAX_PER_FILE + 1:
            self.problems.append(f"{path}: more problems not listed")

    def load(self, path: Path, kind: type):
        """Parsed JSON of ``path`` if it is a ``kind``; None (and a problem) otherwise."""
        try:
            data = read_json(path)
        except DatasetError as err:
            self.problems.append(str(err))
            return None
        if not isinstance(data, kind):
            self.add(path, f"expected a JSON {'list' if kind is list else 'object'}")
            return None
        return data


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip(".?, "))


def _check_fashioniq_split(report: _Report, root: Path, category: str, split: str, listing) -> None:
    split_file = root / "image_splits" / f"split.{category}.{split}.json"
    names = report.load(split_file, list) or []
    gallery = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            report.add(split_file, f"entry {i} is not an image name: {name!r}")
        elif unsafe_relative_path(name):
            report.add(split_file, f"entry {i}: bad image name {name!r} (absolute or with '..')")
        elif name in gallery:
            report.add(split_file, f"entry {i}: {name!r} is listed twice")
        else:
            gallery.add(name)
            if not any(listing.exists(root / "images" / (name + ext)) for ext in IMAGE_EXTENSIONS):
                report.add(split_file, f"entry {i}: image file {root / 'images' / name}.jpg not found")
    cap_file = root / "captions" / f"cap.{category}.{split}.json"
    for i, entry in enumerate(report.load(cap_file, list) or []):
        if not isinstance(entry, dict):
            report.add(cap_file, f"entry {i} is not a JSON object")
            continue
        keys = ("candidate", "captions") + (("target",) if split != "test" or "target" in entry else ())
        for key in keys:
            if key not in entry:
                report.add(cap_file, f"entry {i} lacks the key {key!r}")
            elif key != "captions" and (not isinstance(entry[key], str) or entry[key] not in gallery):
                report.add(cap_file, f"entry {i}: {key} image {entry[key]!r} is not in {split_file.name}")
        captions = entry.get("captions")
        if "captions" in entry and (not isinstance(captions, list) or len(captions) != 2
                                    or not all(_text(c) for c in captions)):
            report.add(cap_file, f"entry {i}: 'captions' should be 2 non-empty strings, got {captions!r}")


def _check_fashioniq(report: _Report, root: Path) -> None:
    listing = DirectoryListing()
    for category in FASHIONIQ_CATEGORIES:
        for split in FASHIONIQ_SPLITS:
            _check_fashioniq_split(report, root, category, split, listing)


def _check_cirr_entry(report, cap_file, i, entry, split, gallery) -> None:
    required = {"pairid": int, "reference": str, "caption": str, "img_set": dict}
    if split != "test1":
        required.update(target_hard=str, target_soft=dict)
    for key, kind in required.items():
        if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
            report.add(cap_file, f"entry {i}: {key!r} missing or not a {kind.__name__}")
    if not _text(entry.get("caption")):
        report.add(cap_file, f"entry {i}: empty caption")
    members = entry.get("img_set", {}).get("members") if isinstance(entry.get("img_set"), dict) else None
    if not isinstance(members, list) or len(members) != 6 or len(set(map(str, members))) != 6:
        report.add(cap_file, f"entry {i}: img_set should have 6 distinct members, got {members!r}")
        members = members if isinstance(members, list) else []
    named = [entry.get("reference")] + ([entry.get("target_hard")] if split != "test1" else [])
    for name in named + list(members):
        if isinstance(name, str) and name not in gallery:
            report.add(cap_file, f"entry {i}: image {name!r} is not in the split file")
    for name in named:
        if members and isinstance(name, str) and name not in members:
            report.add(cap_file, f"entry {i}: {name!r} is not among the img_set members")


def _check_cirr(report: _Report, root: Path) -> None:
    listing, pair_ids = DirectoryListing(), {}
    for split in CIRR_SPLITS:
        split_file = root / "cirr" / "image_splits" / f"split.rc2.{split}.json"
        gallery = report.load(split_file, dict) or {}
        for name, rel in gallery.items():
            if not isinstance(rel, str) or not rel.startswith(CIRR_FOLDERS[split]) or unsafe_relative_path(rel):
                report.add(split_file, f"image {name!r}: path {rel!r} should start with {CIRR_FOLDERS[split]}")
            elif not listing.exists(root / rel):
                report.add(split_file, f"image {name!r}: file {root / rel} not found")
        cap_file = root / "cirr" / "captions" / f"cap.rc2.{split}.json"
        for i, entry in enumerate(report.load(cap_file, list) or []):
            if not isinstance(entry, dict):
                report.add(cap_file, f"entry {i} is not a JSON object")
                continue
            _check_cirr_entry(report, cap_file, i, entry, split, gallery)
            pid = entry.get("pairid")
            if not isinstance(pid, int) or isinstance(pid, bool):
                continue  # reported above; only whole numbers can repeat
            if pid in pair_ids:
                report.add(cap_file, f"entry {i}: pairid {pid} already used in {pair_ids[pid]}")
            pair_ids.setdefault(pid, f"{cap_file.name} entry {i}")


def _check_absolute(report: _Report, root: Path) -> None:
    path = root / ABSOLUTE_CAPTIONS
    if path.is_file():
        for name, caption in (report.load(path, dict) or {}).items():
            if not _text(caption):
                report.add(path, f"{name!r}: empty or non-text caption")


def _check_folder(report: _Report, folder: Path) -> bool:
    """Check ``folder`` if it is a CIRR or FashionIQ root; False if it is neither."""
    if (folder / "cirr" / "captions").is_dir():
        _check_cirr(report, folder)
    elif (folder / "captions").is_dir() or (folder / "image_splits").is_dir():
        _check_fashioniq(report, folder)
    else:
        return False
    _check_absolute(report, folder)
    return True


def validate_layout(root) -> list:
    """Problems found under ``root`` (a FashionIQ root, a CIRR root, or a folder holding
    ``fashioniq/`` and / or ``cirr/`` as the synthetic generator writes them); [] when all is well."""
    root = Path(root)
    report = _Report()
    found = _check_folder(report, root)
    if not found:  # a folder holding both datasets, as the generator writes them
        found = [sub for sub in ("fashioniq", "cirr") if _check_folder(report, root / sub)]
    if not found:
        return [f"{root}: no FashionIQ (captions/, image_splits/) or CIRR (cirr/captions/) layout found"]
    return report.problems
