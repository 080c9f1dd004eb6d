"""Benchmarks of the serving path (``python -m cir_demo bench``): one JSON line per measurement.

Timing does not depend on weights, so the model is a random-initialised open_clip
architecture (RN50x4 by default, the paper's) and galleries are random features. Measured
in one run on one machine: query latency (gallery reference, uploaded image), our exact
top-k against FAISS ``IndexFlatIP`` and a plain matmul + sort, indexing throughput including
JPEG decoding, and peak memory.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from cir_demo.index import GalleryIndex
from cir_demo.model import Combiner, load_clip
from cir_demo.pipeline.indexing import index_folder, index_manifest
from cir_demo.serve.engine import Engine


def percentiles(samples_ms: Sequence[float]) -> dict:
    arr = np.asarray(samples_ms)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p95_ms": round(float(np.percentile(arr, 95)), 3),
            "n": len(arr)}


def timed(fn: Callable, repeats: int, warmup: int = 3, cuda: bool = False) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        out.append((time.perf_counter() - start) * 1000)
    return out


def peak_memory(device: torch.device) -> dict:
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return out


def random_gallery(clip, size: int, seed: int = 0) -> GalleryIndex:
    """Clustered random features (many near-duplicates, as image embeddings have), stored fp16."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, size // 100), clip.feature_dim, generator=gen)  # (C, D)
    members = torch.randint(len(centres), (size,), generator=gen)
    feats = (centres[members] + 0.8 * torch.randn(size, clip.feature_dim, generator=gen)).half()  # (N, D)
    return GalleryIndex(features=feats, names=[f"g{i}" for i in range(size)],
                        manifest=index_manifest(clip, dataset="bench"))


def bench_queries(engine: Engine, gallery: str, *, queries: int, k: int, emit: Callable) -> None:
    cuda = engine.device.type == "cuda"
    names = engine.galleries[gallery].gallery.names
    counter = iter(range(10 ** 9))
    engine.clear_caches()

    def fresh_caption_query():  # a caption never seen before: the text tower runs every time
        i = next(counter)
        engine.search(gallery, reference=names[i % len(names)], caption=f"is darker with {i} orange letters", k=k)

    emit("query_gallery_reference", **percentiles(timed(fresh_caption_query, queries, cuda=cuda)))
    emit("query_gallery_reference_cached_caption", **percentiles(timed(
        lambda: engine.search(gallery, reference=names[1], caption="is darker", k=k), queries, cuda=cuda)))
    upload = Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 400, 3), dtype=np.uint8))
    emit("query_uploaded_image", **percentiles(timed(
        lambda: engine.search(gallery, reference=upload, caption=f"has long sleeves {next(counter)}", k=k),
        max(5, queries // 2), cuda=cuda)))
    stages = engine.search(gallery, reference=names[2], caption="one more unseen caption", k=k).timings_ms
    emit("stage_breakdown_gallery_reference", **{f"{s}_ms": round(v, 3) for s, v in stages.items()})


def bench_topk(engine: Engine, gallery: str, *, k: int, repeats: int, use_faiss: bool, emit: Callable) -> None:
    entry = engine.galleries[gallery].gallery
    cuda = engine.device.type == "cuda"
    query = torch.nn.functional.normalize(torch.randn(1, entry.dim, device=engine.device), dim=-1)
    ours = percentiles(timed(lambda: entry.topk(query, k), repeats, cuda=cuda))
    unit32 = torch.nn.functional.normalize(entry.raw_features(torch.arange(len(entry), device=engine.device))
                                           .float(), dim=-1)  # (N, D) fp32, the naive layout
    plain = percentiles(timed(lambda: torch.sort(query @ unit32.T, dim=-1, descending=True)[1][:, :k], repeats,
                              cuda=cuda))
    record = {"ours": ours, "matmul_sort_fp32": plain, "ratio_ours_vs_matmul_sort": round(
        ours["p50_ms"] / plain["p50_ms"], 3)}
    if use_faiss:
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is not None:
            flat = faiss.IndexFlatIP(entry.dim)
            flat.add(unit32.cpu().numpy())
            q = query.cpu().numpy()
            record["faiss_flat_ip_cpu"] = percentiles(timed(lambda: flat.search(q, k), repeats))
            record["ratio_ours_vs_faiss"] = round(ours["p50_ms"] / record["faiss_flat_ip_cpu"]["p50_ms"], 3)
    del unit32
    emit("topk", k=k, **record)


def bench_approx(engine: Engine, gallery: str, *, k: int, repeats: int, emit: Callable) -> None:
    """FAISS IVF (for galleries beyond a million): its recall@k against our exact search, and speed."""
    from cir_demo.index import FaissGallery, recall_at_k_vs_exact

    exact = engine.galleries[gallery].gallery
    raw = exact.raw_features(torch.arange(len(exact), device=engine.device)).float().cpu()
    start = time.perf_counter()
    approx = FaissGallery(raw, exact.names, kind="ivf")
    build_s = time.perf_counter() - start
    gen = torch.Generator().manual_seed(1)
    picks = torch.randint(len(exact), (100,), generator=gen)
    # queries near gallery items (as composed queries are), not uniform noise
    queries = torch.nn.functional.normalize(raw[picks] + 0.5 * torch.randn(100, exact.dim, generator=gen), dim=-1)
    nlist = approx.index.nlist
    for nprobe in sorted({max(1, nlist // 8), max(1, nlist // 4)}):
        approx.index.nprobe = nprobe
        recall = recall_at_k_vs_exact(approx, exact, queries.to(engine.device), k=k)
        emit("approx_faiss_ivf", k=k, recall_at_k_vs_exact=round(recall, 4), build_s=round(build_s, 2),
             nlist=nlist, nprobe=nprobe, **percentiles(timed(lambda: approx.topk(queries[:1], k), repeats)))


def bench_indexing(clip, *, images: int, batch_size: int, num_workers: int, emit: Callable) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        for i in range(images):
            array = rng.integers(0, 255, (500, 400, 3), dtype=np.uint8)
            Image.fromarray(array).save(folder / f"{i:06d}.jpg", quality=90)
        start = time.perf_counter()
        index_folder(clip, folder, Path(tmp) / "index", batch_size=batch_size, num_workers=num_workers,
                     progress=False)
        seconds = time.perf_counter() - start
    emit("indexing", images=images, seconds=round(seconds, 3), images_per_s=round(images / seconds, 1),
         batch_size=batch_size, num_workers=num_workers, jpeg="500x400 q90")


def run_bench(*, model: str = "RN50x4", pretrained: Optional[str] = None, device: str = "cpu",
              sizes: Sequence[int] = (10_000, 100_000), queries: int = 30, k: int = 50, index_images: int = 64,
              batch_size: int = 64, num_workers: int = 2, use_faiss: bool = True, emit_line=print) -> None:
    dev = torch.device(device)
    clip = load_clip(model, pretrained, device=device)
    combiner = Combiner.for_feature_dim(clip.feature_dim)
    engine = Engine(clip, combiner, device=device)
    base = {"model": clip.name, "device": device_name(dev), "torch_threads": torch.get_num_threads()}

    def emit(measure, **fields):
        emit_line(json.dumps({"measure": measure, **base, **fields}))

    for size in sizes:
        engine.add_gallery(f"n{size}", random_gallery(clip, size))
        base["gallery"] = size
        bench_queries(engine, f"n{size}", queries=queries, k=k, emit=emit)
        bench_topk(engine, f"n{size}", k=k, repeats=max(queries, 20), use_faiss=use_faiss, emit=emit)
        if use_faiss:
            bench_approx(engine, f"n{size}", k=k, repeats=max(queries, 20), emit=emit)
        del engine.galleries[f"n{size}"]
    base.pop("gallery", None)
    if index_images:
        bench_indexing(clip, images=index_images, batch_size=batch_size, num_workers=num_workers, emit=emit)
    emit("memory", **peak_memory(dev))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
