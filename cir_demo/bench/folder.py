"""Indexing a folder of your own images: images/s for the first run, and the incremental second run.

    python -m cir_demo.bench.folder [--images 5000] [--new 50] [--size 800x600] [--clip weights/fashioniq.safetensors]

Makes ``--images`` JPEGs (smooth photo-like fields, ``--size`` pixels) in a temporary folder,
indexes them with the bundled model, adds ``--new`` more and indexes again (only those are
encoded). Prints JSON lines with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cir_demo.config import WEIGHTS_DIR
from cir_demo.config.runtime import cpu_description


def make_photos(folder: Path, count: int, size: tuple[int, int], start: int = 0) -> None:
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    for i in range(start, start + count):
        rng = np.random.default_rng(i)
        a, b, c = rng.uniform(1, 8, 3)
        rgb = np.stack([np.sin(a * x + b * y), np.cos(b * y - c * x), np.sin(c * x * y + a)], -1) * 0.5 + 0.5
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"photo-{i:05d}.jpg", quality=85)


def main(argv=None) -> int:
    from cir_demo.model import load_checkpoint
    from cir_demo.pipeline.folders import update_folder_index

    parser = argparse.ArgumentParser(prog="python -m cir_demo.bench.folder", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--new", type=int, default=50)
    parser.add_argument("--size", default="800x600", help="WIDTHxHEIGHT of each JPEG")
    parser.add_argument("--clip", default=str(WEIGHTS_DIR / "fashioniq.safetensors"))
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    clip = load_checkpoint(args.clip).clip
    with tempfile.TemporaryDirectory(prefix="cir-folder-") as tmp:
        folder, out = Path(tmp) / "photos", Path(tmp) / "index"
        folder.mkdir()
        make_photos(folder, args.images, size)
        for run, count in (("first", args.images), ("incremental", args.new)):
            if run == "incremental":
                make_photos(folder, args.new, size, start=args.images)
            start = time.perf_counter()
            update = update_folder_index(clip, folder, out, num_workers=args.num_workers, progress=False)
            seconds = time.perf_counter() - start
            print(json.dumps({"bench": f"folder_index_{run}", "images": update.index.count, "encoded": update.encoded,
                              "kept": update.kept, "seconds": round(seconds, 2),
                              "encoded_per_s": round(update.encoded / seconds, 1), "jpeg_size": args.size,
                              "model": clip.name, **cpu_description()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
