"""Writing planned worlds in the official FashionIQ and CIRR layouts, and drawing their images.

Images are drawn by a pool of worker processes (each job is a pure function of its item, so the
bytes do not depend on the number of workers); JSON is written by the caller's process with a
fixed key order and no timestamps.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from tqdm import tqdm

from cir_demo.data.synth.attributes import ATTRIBUTES_FILE, record
from cir_demo.data.synth.lexicon import LEXICON_FILE, garment_lexicon, scene_lexicon
from cir_demo.data.synth.world import CIRR_SPLITS, FASHION_SPLITS

JPEG_QUALITY = 92
CIRR_IMAGE_DIRS = {"train": "train", "val": "dev", "test1": "test1"}
CIRR_TRAIN_FOLDER_SIZE = 300  # CIRR spreads its train images over numbered folders train/<k>/


def write_json(path: Path, obj) -> None:
    """UTF-8 JSON, two-space indent, trailing newline: stable bytes for a given object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _render_job(job) -> None:
    path, kind, content, photo = job
    if kind == "fashion":
        from cir_demo.data.synth.fashion_draw import render_garment
        render_garment(content, photo).save(path, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        from cir_demo.data.synth.scenes_draw import render_scene
        render_scene(content, photo).save(path, "PNG", compress_level=6)


def render_all(jobs: list, workers: int, progress: bool, desc: str) -> None:
    """Draw and save every ``(path, kind, content, photo)`` job, with a tqdm bar."""
    for folder in sorted({str(Path(job[0]).parent) for job in jobs}):
        Path(folder).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress)
    if workers <= 1:
        for job in jobs:
            _render_job(job)
            bar.update()
    else:
        # fork keeps start-up near zero; rendering touches no shared state.
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ctx.Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_job, jobs, chunksize=16):
                bar.update()
    bar.close()


def write_fashioniq(root: Path, world: dict) -> list:
    """Write captions/, image_splits/, absolute_captions.json, attributes.json and lexicon.json; return
    the image jobs."""
    jobs, absolute, attributes = [], {}, {}
    for category, splits in world.items():
        for split in FASHION_SPLITS:
            plan = splits[split]
            write_json(root / "image_splits" / f"split.{category}.{split}.json", [it.name for it in plan.items])
            write_json(root / "captions" / f"cap.{category}.{split}.json",
                       [{"target": q.target, "candidate": q.reference, "captions": list(q.captions)}
                        for q in plan.queries])
            for it in plan.items:
                absolute[it.name], attributes[it.name] = it.caption, record(it.content)
                jobs.append((str(root / "images" / f"{it.name}.jpg"), "fashion", it.content, it.photo))
    write_json(root / "absolute_captions.json", absolute)
    write_json(root / ATTRIBUTES_FILE, attributes)
    write_json(root / LEXICON_FILE, garment_lexicon())
    return jobs


def _cirr_entry(q, pair_id: int, with_target: bool) -> dict:
    img_set = {"id": q.set_id, "members": list(q.group), "reference_rank": q.group.index(q.reference)}
    if not with_target:  # the real test1 hides targets
        return {"pairid": pair_id, "reference": q.reference, "caption": q.captions[0], "img_set": img_set}
    img_set["target_rank"] = q.group.index(q.target)
    return {"pairid": pair_id, "reference": q.reference, "target_hard": q.target,
            "target_soft": {q.target: 1.0}, "caption": q.captions[0], "img_set": img_set}


def cirr_relative_path(split: str, index: int, name: str) -> str:
    """Image path as CIRR's split files write it: ``./dev/name.png``, ``./train/<k>/name.png``."""
    folder = CIRR_IMAGE_DIRS[split]
    if split == "train":
        folder = f"{folder}/{index // CIRR_TRAIN_FOLDER_SIZE}"
    return f"./{folder}/{name}.png"


def write_cirr(root: Path, world: dict) -> list:
    """Write cirr/captions/, cirr/image_splits/, absolute_captions.json, attributes.json and lexicon.json;
    return the image jobs."""
    jobs, absolute, attributes, pair_id = [], {}, {}, 0
    for split in CIRR_SPLITS:
        plan = world[split]
        paths = {it.name: cirr_relative_path(split, i, it.name) for i, it in enumerate(plan.items)}
        write_json(root / "cirr" / "image_splits" / f"split.rc2.{split}.json", paths)
        entries = []
        for q in plan.queries:
            entries.append(_cirr_entry(q, pair_id, with_target=split != "test1"))
            pair_id += 1
        write_json(root / "cirr" / "captions" / f"cap.rc2.{split}.json", entries)
        for it in plan.items:
            absolute[it.name], attributes[it.name] = it.caption, record(it.content)
            jobs.append((str(root / paths[it.name]), "scenes", it.content, it.photo))
    write_json(root / "absolute_captions.json", absolute)
    write_json(root / ATTRIBUTES_FILE, attributes)
    write_json(root / LEXICON_FILE, scene_lexicon())
    return jobs
