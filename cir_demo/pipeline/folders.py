"""A gallery from any folder of images, indexed incrementally: a later run encodes only the files
that are new or changed (by size and modification time) and drops the ones that are gone.

Names are paths relative to the folder ('/'-separated). Only regular image files inside the
folder count: hidden files and folders, and symlinks that lead out of the folder, are left out,
so nothing outside it is ever indexed (or served). Files that cannot be read as images are
skipped and counted, never a crash. The manifest keeps each file's size and mtime, so the next run
knows what it can reuse; another model (a different fingerprint) re-encodes everything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader

from cir_demo.index import GalleryIndex, IndexFormatError, load_index, save_index
from cir_demo.model.clip import ClipModel
from cir_demo.pipeline.encode import ImageFiles, ImageReadError, autocast_for, check_finite, open_image

log = logging.getLogger(__name__)

FOLDER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclass
class FolderUpdate:
    """What one indexing run of a folder did."""
    index: GalleryIndex
    kept: int = 0        # rows reused from the previous index
    encoded: int = 0     # new or changed files encoded now
    removed: int = 0     # rows of files that are gone (or now unreadable)
    skipped: list = field(default_factory=list)  # names of files that are not usable images

    def summary(self) -> str:
        text = f"{self.index.count} images: {self.kept} kept, {self.encoded} encoded, {self.removed} removed"
        return text + (f", {len(self.skipped)} unreadable skipped" if self.skipped else "")


def folder_files(root: str | Path) -> dict[str, tuple[Path, int, int]]:
    """{relative name: (path, size, mtime_ns)} of the image files under ``root``, sorted by name."""
    root = Path(root).resolve()
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() not in FOLDER_SUFFIXES:
                continue
            try:
                real, stat = path.resolve(strict=True), path.stat()
            except OSError:
                continue
            if root not in real.parents or not path.is_file():  # a symlink out of the folder
                continue
            found[path.relative_to(root).as_posix()] = (path, stat.st_size, stat.st_mtime_ns)
    return dict(sorted(found.items()))


class _Readable(ImageFiles):
    """(pixels or None, row, error or None): an unreadable file is reported, not raised. JPEGs are
    decoded reduced (DCT scaling, to no less than twice the model's input): a folder of 12 Mpx
    photos indexes several times faster, and an uploaded photo is decoded the same way."""

    def __getitem__(self, row: int):
        try:
            image = open_image(self.paths[row], draft=2 * self.preprocess.image_size)
            return self.preprocess(image), row, None
        except ImageReadError as err:
            return None, row, str(err)


def _collate(items: list):
    good = [(pixels, row) for pixels, row, err in items if err is None]
    bad = [row for _, row, err in items if err is not None]
    pixels = torch.stack([p for p, _ in good]) if good else None
    return pixels, [row for _, row in good], bad


@torch.no_grad()
def encode_readable(clip: ClipModel, paths: list, *, batch_size: int = 64, num_workers: int = 0,
                    progress: bool = False) -> tuple[torch.Tensor, list[int], list[int]]:
    """(features (M, D) of the readable files, their rows in ``paths``, the rows that were not)."""
    loader = DataLoader(_Readable(paths, clip.preprocess), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="indexing", unit="batch", leave=False)
    feats, rows, bad = [], [], []
    for pixels, good, unreadable in loader:
        bad += unreadable
        if pixels is None:
            continue
        with autocast_for(clip.device):
            feats.append(check_finite(clip.encode_image(pixels.to(clip.device)).float().cpu(), "images"))
        rows += good
    return (torch.cat(feats) if feats else torch.empty(0, clip.feature_dim)), rows, bad


def update_folder_index(clip: ClipModel, root: str | Path, out: str | Path, *, batch_size: int = 64,
                        num_workers: int = 0, progress: bool = True, rebuild_command: Optional[str] = None
                        ) -> FolderUpdate:
    """Index the images under ``root`` into ``out``, reusing what a previous run of the same model
    encoded for files that did not change. Raises ``ValueError`` if the folder holds no usable image."""
    from cir_demo.pipeline.indexing import index_manifest

    root, out = Path(root).resolve(), Path(out)
    files = folder_files(root)
    previous = _previous(clip, out, root)
    known = previous.manifest.get("files", {}) if previous is not None else {}
    reuse = {name: previous.row_of[name] for name, (_, size, mtime) in files.items()
             if previous is not None and name in previous.row_of and known.get(name) == [size, mtime]}
    todo = [name for name in files if name not in reuse]
    feats, rows, bad = encode_readable(clip, [files[n][0] for n in todo], batch_size=batch_size,
                                       num_workers=num_workers, progress=progress)
    encoded = {todo[r]: feats[i] for i, r in enumerate(rows)}
    names = [n for n in files if n in reuse or n in encoded]
    if not names:
        raise ValueError(f"no usable images ({', '.join(FOLDER_SUFFIXES)}) under {root}")
    old = previous.features.float() if previous is not None else None
    matrix = torch.stack([old[reuse[n]] if n in reuse else encoded[n] for n in names])  # (N, D)
    manifest = index_manifest(clip, dataset=None, image_root=str(root), kind="folder",
                              files={n: [files[n][1], files[n][2]] for n in names},
                              rebuild_command=rebuild_command)
    save_index(out, matrix, names, manifest)
    removed = len(set(previous.names) - set(names)) if previous is not None else 0
    update = FolderUpdate(load_index(out, clip.fingerprint()), kept=len(reuse), encoded=len(encoded),
                          removed=removed, skipped=[todo[r] for r in bad])
    log.info("folder %s: %s", root, update.summary())
    return update


def _previous(clip: ClipModel, out: Path, root: Path) -> Optional[GalleryIndex]:
    """The index at ``out`` if it holds this folder encoded by this model; else None (start over)."""
    try:
        index = load_index(out)
    except (FileNotFoundError, IndexFormatError):
        return None
    same = index.fingerprint == clip.fingerprint() and index.manifest.get("image_root") == str(root)
    return index if same and isinstance(index.manifest.get("files"), dict) else None
