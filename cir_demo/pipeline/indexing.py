"""Build gallery indexes: read images -> encode with CLIP -> write the index artifact.

A dataset split (FashionIQ category or CIRR) or any folder of images becomes an index
folder (see ``cir_demo.index.store``) whose manifest records the model fingerprint, so a
later load with another model is refused with the command that rebuilds it.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Optional, Sequence

from cir_demo.data.datasets import CIRDataset
from cir_demo.index import GalleryIndex, load_index, save_index
from cir_demo.model.clip import ClipModel
from cir_demo.pipeline.encode import encode_image_files

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def index_manifest(clip: ClipModel, **extra) -> dict:
    """The manifest fields that tie an index to the model that made it."""
    return {"model_fingerprint": clip.fingerprint(), "model_name": clip.name, "model_source": clip.source,
            "preprocess": clip.preprocess.describe(), **extra}


def build_index(clip: ClipModel, names: Sequence[str], paths: Sequence[Path], out: str | Path, *,
                batch_size: int = 64, num_workers: int = 0, progress: bool = True, **manifest) -> GalleryIndex:
    """Encode ``paths`` (row-aligned with ``names``) and write the index folder ``out``.

    Under torchrun every process encodes whole batches of a share of the images; rank 0 writes
    the one index (the same bytes as a single-process build) while the others wait for it.
    """
    from cir_demo.config.processes import barrier, encode_sharded, rank_world

    paths = list(paths)

    def encode(rows: list[int]):  # (n_r, D): this process's batches
        return encode_image_files(clip, [paths[r] for r in rows], batch_size=batch_size,
                                  num_workers=num_workers, progress=progress, desc="indexing")

    feats = encode_sharded(encode, len(paths), batch_size)  # (N, D) on every process
    if rank_world()[0] == 0:
        save_index(out, feats, list(names), index_manifest(clip, **manifest))
    barrier()  # nobody reads the index before it is complete
    return load_index(out, clip.fingerprint())


def index_to_milvus(clip: ClipModel, names: Sequence[str], paths: Sequence[Path], uri: str, collection: str, *,
                    batch_size: int = 64, num_workers: int = 0, progress: bool = True, index_type: str = "FLAT",
                    **manifest) -> int:
    """Encode ``paths`` into a Milvus collection; how many rows it holds. Under torchrun every process
    encodes whole batches of its share and inserts them itself (nothing is gathered: the features of
    a gallery past one machine never meet in one process); rank 0 creates and finally loads it.
    Unreadable files are left out (their rows stay unused)."""
    from cir_demo.config.processes import barrier, batch_shard, rank_world
    from cir_demo.index import milvus
    from cir_demo.pipeline.folders import encode_readable

    rank, world = rank_world()
    if rank == 0:
        milvus.create_collection(uri, collection, clip.feature_dim, index_manifest(clip, **manifest),
                                 count=len(paths), index_type=index_type)
    barrier()
    mine = batch_shard(len(paths), batch_size, rank, world)
    feats, kept, _ = encode_readable(clip, [paths[r] for r in mine], batch_size=batch_size, num_workers=num_workers,
                                     progress=progress)
    milvus.insert_rows(uri, collection, [mine[i] for i in kept], [names[mine[i]] for i in kept], feats)
    barrier()
    if rank == 0:
        milvus.finish_collection(uri, collection)
    return len(paths)


def index_dataset(clip: ClipModel, ds: CIRDataset, out: str | Path, *, rebuild_command: Optional[str] = None,
                  **kwargs) -> GalleryIndex:
    """Index a dataset split's gallery (FashionIQ: the category's split images; CIRR: all)."""
    paths = [ds.image_path(n) for n in ds.image_names]
    return build_index(clip, ds.image_names, paths, out, dataset=ds.dataset, split=ds.split,
                       category=ds.category, image_root=str(ds.root), rebuild_command=rebuild_command, **kwargs)


def folder_images(folder: str | Path) -> tuple[list[str], list[Path]]:
    """(names, paths) of every image under ``folder``; names are relative paths, '/'-separated."""
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return [p.relative_to(folder).as_posix() for p in paths], paths


def index_folder(clip: ClipModel, folder: str | Path, out: str | Path, *, rebuild_command: Optional[str] = None,
                 **kwargs) -> GalleryIndex:
    names, paths = folder_images(folder)
    return build_index(clip, names, paths, out, dataset=None, image_root=str(Path(folder).resolve()),
                       rebuild_command=rebuild_command, **kwargs)


def command_line(argv: Sequence[str]) -> str:
    return "python -m cir_demo " + " ".join(shlex.quote(a) for a in argv)
