"""``index``: encode a dataset split or an image folder into a gallery index.

Under ``torchrun --nproc_per_node N -m cir_demo index ...`` each process encodes a share of
the images and rank 0 writes the one index, identical to a single-process build.
"""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a FashionIQ or CIRR folder")
    source.add_argument("--images", help="any folder of images (indexed recursively)")
    parser.add_argument("--split", default="val", help="dataset split (default val)")
    parser.add_argument("--category", default=None, help="FashionIQ category")
    parser.add_argument("--out", default=None, help="index folder to write (replaced atomically)")
    parser.add_argument("--milvus", default=None, metavar="URI",
                        help="write the features to Milvus instead (a server URI, or a local file: Milvus Lite)")
    parser.add_argument("--collection", default=None, help="the Milvus collection (with --milvus)")
    parser.add_argument("--milvus-index", default="FLAT", help="Milvus index type: FLAT (exact), IVF_FLAT, HNSW, ...")
    parser.add_argument("--clip", required=True, help="CLIP weights: our checkpoint, an official .pt, a file or a tag")
    parser.add_argument("--clip-model", default="RN50x4", help="open_clip name for tags and plain files")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    import json

    import torch

    from cir_demo.config.runtime import default_device
    from cir_demo.data.datasets import open_dataset
    from cir_demo.model import load_clip
    from cir_demo.pipeline.indexing import command_line, index_dataset, index_folder
    from cir_demo.config.processes import distributed

    rank, world = distributed()  # under torchrun: before anything touches a GPU, one device per rank
    device = default_device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    clip = load_clip(args.clip_model, args.clip, device=str(device))  # fp32 weights; autocast fp16 on CUDA
    progress = not args.no_progress and rank == 0
    kwargs = {"batch_size": args.batch_size, "num_workers": args.num_workers, "progress": progress,
              "rebuild_command": command_line(sys.argv[1:] if sys.argv[0].endswith("__main__.py") else [])}
    if args.milvus:
        return _to_milvus(args, clip, kwargs, rank)
    if not args.out:
        raise SystemExit("index: give --out FOLDER (or --milvus URI --collection NAME)")
    if args.data:
        index = index_dataset(clip, open_dataset(args.data, args.split, args.category), args.out, **kwargs)
    else:
        index = index_folder(clip, args.images, args.out, **kwargs)
    if rank == 0:  # one report for the one index
        print(json.dumps({"index": str(index.path), "count": index.count, "dim": index.dim,
                          "model_fingerprint": index.fingerprint}))
    return 0


def _to_milvus(args, clip, kwargs, rank: int) -> int:
    import json
    from pathlib import Path

    from cir_demo.pipeline.folders import folder_files
    from cir_demo.pipeline.indexing import index_to_milvus

    if not args.images or not args.collection:
        raise SystemExit("index --milvus: give --images FOLDER and --collection NAME")
    files = folder_files(args.images)
    names = [n for n in files if _header_ok(files[n][0])]  # rows stay contiguous but for files that fail later
    count = index_to_milvus(clip, names, [files[n][0] for n in names], args.milvus, args.collection,
                            index_type=args.milvus_index, dataset=None, kind="folder",
                            image_root=str(Path(args.images).resolve()), **kwargs)
    if rank == 0:
        print(json.dumps({"milvus": args.milvus, "collection": args.collection, "count": count,
                          "model_fingerprint": clip.fingerprint()}))
    return 0


def _header_ok(path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size[0] > 0 and image.size[1] > 0
    except Exception:  # noqa: BLE001 - anything Pillow cannot open is not indexed
        return False
