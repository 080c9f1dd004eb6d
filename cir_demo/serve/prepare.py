"""Turn a validated deployment config into a serving ``Catalog``: world, models, indexes.

What a deployment needs but lacks is made once and cached: the synthetic world (only the splits
it serves), and each gallery's index, built with its own bundle's CLIP (with a progress bar). A
cached artifact is reused only while it provably matches: the world's ``synth.json`` must record
the same seed, size and drawn splits and every file must match the world's own record of names,
sizes and BLAKE2b digests (``files.json``); an index must be built by the bundle's model
(identity check) from the same image files (names, sizes and modification times hashed into the
manifest) and hold the bytes its ``content_hash`` records. Anything in the app's own cache that
fails is rebuilt (never a crash loop) and the reason logged; an index a user provides outside the
cache that fails its content check is refused with a message naming it and how to rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from cir_demo.config.files import atomic_write_text
from cir_demo.data.datasets import CIRDataset, open_dataset
from cir_demo.data.synth import WORLD_FORMAT
from cir_demo.data.transforms import Preprocess
from cir_demo.index import GalleryIndex, IndexFormatError, load_index
from cir_demo.model import WeightsUnavailableError, load_checkpoint, load_clip
from cir_demo.model.checkpoint import CheckpointError, read_checkpoint_config
from cir_demo.serve.catalog import Catalog
from cir_demo.serve.deploy import HUB_PREFIX, BundleSpec, Deployment, WorldSpec, read_config
from cir_demo.serve.engine import Engine

log = logging.getLogger(__name__)

Report = Callable[[str], None]
PRECISION_RECORD = "precision.json"  # which precision each bundle serves on this machine (cir_demo.serve.plan)


def load_deployment(deployment: Deployment | str | os.PathLike | None = None, *, device: Optional[str] = None,
                    progress: bool = True, report: Optional[Report] = None, **engine_kwargs) -> Catalog:
    """Everything a deployment serves, ready to query; ``report`` receives one line per step."""
    if not isinstance(deployment, Deployment):
        deployment = read_config(deployment)
    say = report or (lambda line: log.info("%s", line))
    start = time.perf_counter()
    if deployment.world is not None:
        ensure_world(deployment.world_dir, deployment.world, progress=progress, report=say)
    catalog = Catalog(title=deployment.title, public_url=deployment.public_url)
    for spec in deployment.bundles:
        clip, combiner = load_bundle_models(spec, deployment.cache_dir)
        engine_kwargs.setdefault("precision_record", deployment.cache_dir / PRECISION_RECORD)
        engine = catalog.add_bundle(Engine(clip, combiner, device=device, name=spec.name, **engine_kwargs))
        for gallery in spec.galleries:
            index_path = Path(gallery.index)
            owned = _inside(index_path, deployment.cache_dir)
            if gallery.milvus is not None:
                index = ensure_milvus_gallery(engine, Path(gallery.images), gallery.milvus, gallery.collection,
                                              progress=progress, report=say)
                catalog.add_gallery(spec.name, gallery.name, index, label=gallery.label)
                continue
            if gallery.images is not None:
                index = ensure_folder_index(engine, Path(gallery.images), index_path, progress=progress, report=say,
                                            owned=owned)
                catalog.add_gallery(spec.name, gallery.name, index, label=gallery.label)
                continue
            dataset = open_dataset(gallery.data, gallery.split, gallery.category)
            index = ensure_index(engine, dataset, index_path, progress=progress, report=say, owned=owned)
            catalog.add_gallery(spec.name, gallery.name, index, dataset=dataset, label=gallery.label)
    say(f"ready: {len(catalog.galleries())} galleries in {len(catalog.bundles)} bundles "
        f"({time.perf_counter() - start:.1f} s)")
    return catalog


def _inside(path: Path, folder: Path) -> bool:
    try:
        return Path(os.path.realpath(folder)) in Path(os.path.realpath(path)).parents
    except OSError:
        return False


def ensure_folder_index(engine: Engine, folder: Path, path: Path, *, progress: bool = True, report: Report = print,
                        owned: bool = True) -> GalleryIndex:
    """A folder's index at ``path``, brought up to date: only new or changed files are encoded."""
    from cir_demo.pipeline.folders import update_folder_index

    if owned and path.exists() and not (path / "manifest.json").is_file():
        shutil.rmtree(path, ignore_errors=True)  # ours and damaged: start over
    start = time.perf_counter()
    update = update_folder_index(engine.clip, folder, path, progress=progress,
                                 rebuild_command="delete the folder; the app rebuilds it on start")
    report(f"{folder}: {update.summary()} ({time.perf_counter() - start:.1f} s)")
    return update.index


def ensure_milvus_gallery(engine: Engine, folder: Path, uri: str, collection: str, *, progress: bool = True,
                          report: Report = print):
    """The folder's gallery in Milvus: the collection as it is when this model built it from this
    folder, else (re)written from the folder's images now (big galleries: ``cir_demo index --milvus``)."""
    from cir_demo.index.milvus import MilvusGallery, write_collection
    from cir_demo.pipeline.folders import encode_readable, folder_files
    from cir_demo.pipeline.indexing import index_manifest

    try:
        gallery = MilvusGallery(uri, collection, device=engine.device)
        if engine.index_mismatch(gallery) is None and gallery.manifest.get("image_root") == str(folder.resolve()):
            report(f"{uri} {collection}: {len(gallery)} images in Milvus")
            return gallery
    except FileNotFoundError:
        pass
    files = folder_files(folder)
    names = list(files)
    feats, rows, bad = encode_readable(engine.clip, [files[n][0] for n in names], progress=progress)
    kept = [names[r] for r in rows]
    if not kept:
        raise ValueError(f"no usable images under {folder}")
    write_collection(uri, collection, feats, kept, index_manifest(engine.clip, dataset=None, kind="folder",
                                                                   image_root=str(folder.resolve())))
    report(f"{uri} {collection}: wrote {len(kept)} images ({len(bad)} unreadable skipped)")
    return MilvusGallery(uri, collection, device=engine.device)


# ---- the synthetic world ------------------------------------------------------------------------
WORLD_RECORD = "files.json"


def world_files(world_dir: Path) -> dict[str, list]:
    """{relative path: [size, BLAKE2b]} of every file of the world (about 80 ms for 2,000 images)."""
    record = {}
    for path in sorted(world_dir.rglob("*")):
        if path.is_file() and path.name != WORLD_RECORD:
            data = path.read_bytes()
            record[path.relative_to(world_dir).as_posix()] = [len(data), hashlib.blake2b(data, digest_size=16).hexdigest()]
    return record


def world_is_current(world_dir: Path, spec: WorldSpec) -> Optional[str]:
    """None when ``world_dir`` holds the world ``spec`` asks for, file for file; else why not."""
    if not world_dir.exists():
        return "first start"
    for dataset in ("fashioniq", "cirr"):
        stamp = world_dir / dataset / "synth.json"
        try:
            meta = json.loads(stamp.read_text("utf-8"))
        except (OSError, ValueError):
            return f"{stamp} is missing or unreadable"
        if not isinstance(meta, dict) or (meta.get("seed"), meta.get("size")) != (spec.seed, spec.size):
            return f"{stamp} records another world (seed/size)"
        if meta.get("format") != WORLD_FORMAT:
            return f"{stamp} was drawn by another version of the generator"
        drawn = meta.get("drawn_splits", "all")
        if drawn != "all" and not set(spec.splits) <= set(drawn):
            return f"{stamp} lacks the images of splits {sorted(set(spec.splits) - set(drawn))}"
    try:
        recorded = json.loads((world_dir / WORLD_RECORD).read_text("utf-8"))
    except (OSError, ValueError):
        return "it has no record of its files"
    if recorded != world_files(world_dir):
        return "its files changed since it was drawn (added, removed or altered)"
    return None


def ensure_world(world_dir: Path, spec: WorldSpec, *, progress: bool = True, report: Report = print) -> None:
    """Draw the synthetic world's needed splits into ``world_dir`` unless it is already there."""
    from cir_demo.data.synth import generate_world

    why = world_is_current(world_dir, spec)
    if why is None:
        return
    report(f"drawing the built-in world ({', '.join(spec.splits)} images) into {world_dir} ({why})")
    summary = generate_world(world_dir, seed=spec.seed, size=spec.size, splits=spec.splits,
                             progress=progress, overwrite=True)
    record = json.dumps(world_files(world_dir), indent=0, sort_keys=True)  # before the record's temp file exists
    atomic_write_text(world_dir / WORLD_RECORD, record)
    report(f"world ready in {summary['seconds']:.1f} s")


# ---- models -------------------------------------------------------------------------------------
def resolve_source(source: str, cache_dir: Path) -> str:
    """A local path for ``hf://owner/repo/path`` (downloaded once, where a network exists); else as is."""
    if not source.startswith(HUB_PREFIX):
        return source
    parts = source[len(HUB_PREFIX):].split("/")
    if len(parts) < 3 or not all(parts):
        raise WeightsUnavailableError(f"{source!r}: a hub file is written hf://owner/repo/path/in/repo")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), cache_dir=str(cache_dir / "hub"))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise WeightsUnavailableError(
            f"cannot fetch {source}: {str(err).splitlines()[0]}. Without a network, download the file "
            f"elsewhere and give its local path in the config instead") from None


def _is_our_checkpoint(path: str) -> bool:
    if not path.endswith(".safetensors"):
        return False
    try:
        read_checkpoint_config(path)
        return True
    except CheckpointError:
        return False


def load_bundle_models(spec: BundleSpec, cache_dir: Path):
    """(ClipModel, Combiner or None) for one bundle spec; one file may hold both (our checkpoints)."""
    clip_src = resolve_source(spec.clip, cache_dir)
    ours = load_checkpoint(clip_src) if _is_our_checkpoint(clip_src) else None
    clip = ours.clip if ours is not None else None
    if clip is None:
        clip = load_clip(spec.clip_model or "RN50x4", clip_src, preprocess=spec.preprocess)
    elif spec.preprocess:
        clip.preprocess = Preprocess(spec.preprocess, clip.image_size)
    combiner = None
    if spec.combiner:
        comb_src = resolve_source(spec.combiner, cache_dir)
        if ours is not None and comb_src == clip_src and ours.combiner is not None:
            combiner = ours.combiner
        else:
            combiner = load_checkpoint(comb_src, model_name=spec.clip_model).combiner
        if combiner is None:
            raise CheckpointError(f"bundle {spec.name!r}: {spec.combiner} holds no Combiner")
    return clip, combiner


# ---- indexes ------------------------------------------------------------------------------------
def data_signature(dataset: CIRDataset) -> str:
    """Hash of the gallery's image names, file sizes and modification times (cheap: stat only)."""
    digest = hashlib.blake2b(digest_size=12)
    for name in dataset.image_names:
        stat = os.stat(dataset.image_path(name))
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def index_is_current(engine: Engine, index: GalleryIndex, dataset: CIRDataset, signature: str) -> Optional[str]:
    """None when ``index`` was built by ``engine``'s model from exactly these files; else why not."""
    why = engine.index_mismatch(index)
    if why is not None:
        return why
    if index.manifest.get("data_signature") != signature or index.names != dataset.image_names:
        return "the gallery's image files changed since it was built"
    return None


def ensure_index(engine: Engine, dataset: CIRDataset, path: Path, *, progress: bool = True,
                 report: Report = print, owned: bool = True) -> GalleryIndex:
    """The index at ``path`` if current, else rebuilt there (atomically) with ``engine``'s CLIP.

    ``owned``: the folder is the app's own cache, so a broken one is removed and rebuilt; an index
    a user provides that fails its content check is refused (``IndexFormatError``, naming it).
    """
    from cir_demo.pipeline.indexing import index_dataset

    signature = data_signature(dataset)
    try:
        index = load_index(path)
        why = index_is_current(engine, index, dataset, signature)
        if why is None and owned and "content_hash" not in index.manifest:
            why = "it predates content checks"
    except FileNotFoundError:
        why = "first start" if not path.exists() and not path.is_symlink() else "no index there"
    except IndexFormatError as err:
        if not owned:
            raise
        why = f"the cached index is damaged ({str(err).split(';')[0]})"
        shutil.rmtree(path, ignore_errors=True)  # ours: save_index would refuse a folder it cannot read
    if why is None:
        return index
    what = f"{dataset.dataset}/{dataset.category or ''}{'/' if dataset.category else ''}{dataset.split}"
    report(f"indexing {len(dataset.image_names)} images of {what} with bundle {engine.name!r}: {why}")
    start = time.perf_counter()
    index = index_dataset(engine.clip, dataset, path, progress=progress, data_signature=signature,
                          rebuild_command="delete the folder; the app rebuilds it on start")
    report(f"indexed in {time.perf_counter() - start:.1f} s -> {path}")
    return index
