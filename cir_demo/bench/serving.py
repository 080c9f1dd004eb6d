"""Benchmarks of the serving path (``python -m cir_demo bench``): one JSON line per measurement.

Timing does not depend on weights, so the model is a random-initialised open_clip
architecture (RN50x4 by default, the paper's) and galleries are random features. Measured
in one run on one machine (described on the first line: CPU model, SIMD flags, versions):
the precisions the start-up probe chose for the caption tower and the Combiner (with its
timings), how far each reduced precision moves the top-k against the all-fp32 pipeline, query
latency (gallery reference, uploaded image) with a per-stage breakdown, our exact top-k
against FAISS ``IndexFlatIP`` and a plain matmul + sort, indexing throughput including JPEG
decoding, and peak memory. Overlaps measured on random weights say how sensitive the
pipeline is, not what trained weights would do.
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

from cir_demo.config.runtime import cpu_description
from cir_demo.index import GalleryIndex
from cir_demo.model import Combiner, load_clip
from cir_demo.model.composers import make_composer
from cir_demo.pipeline.indexing import index_folder, index_manifest
from cir_demo.serve.engine import Engine
from cir_demo.serve.precision import (
    CPU_CANDIDATES,
    PROBE_CAPTIONS,
    build_combiner_variant,
    choose_combiner_precision,
    combiner_input_dtype,
)
from cir_demo.serve.text_tower import TextTower, make_text_tower


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
    stages: list[dict] = []

    def fresh_caption_query():  # a caption never seen before: the text tower runs every time
        i = next(counter)
        result = engine.search(gallery, reference=names[i % len(names)], caption=f"is darker with {i} orange letters",
                               k=k)
        stages.append(result.timings_ms)

    emit("query_gallery_reference", **percentiles(timed(fresh_caption_query, queries, cuda=cuda)))
    emit("query_gallery_reference_cached_caption", **percentiles(timed(
        lambda: engine.search(gallery, reference=names[1], caption="is darker", k=k), queries, cuda=cuda)))
    upload = Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 400, 3), dtype=np.uint8))
    emit("query_uploaded_image", **percentiles(timed(
        lambda: engine.search(gallery, reference=upload, caption=f"has long sleeves {next(counter)}", k=k),
        max(5, queries // 2), cuda=cuda)))
    timed_stages = stages[-queries:]  # the timed fresh-caption queries, not their warm-up
    emit("stage_breakdown_gallery_reference", statistic="median over the timed fresh-caption queries",
         n=len(timed_stages), **{f"{s}_ms": round(float(np.median([t.get(s, 0.0) for t in timed_stages])), 3)
                                 for s in timed_stages[0]})


def timed_interleaved(fns: dict, repeats: int, warmup: int = 3, cuda: bool = False) -> dict:
    """ms samples per function, timed in turns (one call each per round) so that load from
    elsewhere hits every contender alike; each call gets the round number."""
    samples = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(r)
            if cuda:
                torch.cuda.synchronize()
            if r >= warmup:
                samples[name].append((time.perf_counter() - start) * 1000)
    return samples


def bench_topk(engine: Engine, gallery: str, *, k: int, repeats: int, use_faiss: bool, emit: Callable) -> None:
    """Our exact top-k against a plain fp32 matmul + sort and FAISS ``IndexFlatIP``, timed in
    turns on the same queries (gallery rows plus noise, as composed queries are)."""
    entry = engine.galleries[gallery].gallery
    cuda = engine.device.type == "cuda"
    gen = torch.Generator().manual_seed(2)
    picks = torch.randint(len(entry), (8,), generator=gen)
    raw = entry.raw_features(picks.to(engine.device)).float().cpu()
    queries = torch.nn.functional.normalize(raw + 0.5 * raw.norm(dim=-1, keepdim=True) / entry.dim ** 0.5
                                            * torch.randn(raw.shape, generator=gen), dim=-1).to(engine.device)
    unit32 = torch.nn.functional.normalize(entry.raw_features(torch.arange(len(entry), device=engine.device))
                                           .float(), dim=-1)  # (N, D) fp32, the naive layout
    fns = {"ours": lambda r: entry.topk(queries[r % 8][None], k),
           "matmul_sort_fp32": lambda r: torch.sort(queries[r % 8][None] @ unit32.T, dim=-1,
                                                    descending=True)[1][:, :k]}
    faiss = None
    if use_faiss:
        try:
            import faiss
        except ImportError:
            faiss = None
    if faiss is not None:
        flat = faiss.IndexFlatIP(entry.dim)
        flat.add(unit32.cpu().numpy())
        q_np = queries.cpu().numpy()
        fns["faiss_flat_ip_cpu"] = lambda r: flat.search(q_np[r % 8][None], k)
    stats = {name: percentiles(ms) for name, ms in timed_interleaved(fns, repeats, cuda=cuda).items()}
    record = {**stats,
              "ratio_ours_vs_matmul_sort": round(stats["ours"]["p50_ms"] / stats["matmul_sort_fp32"]["p50_ms"], 3)}
    if "faiss_flat_ip_cpu" in stats:
        record["ratio_ours_vs_faiss"] = round(stats["ours"]["p50_ms"] / stats["faiss_flat_ip_cpu"]["p50_ms"], 3)
    emit("topk", k=k, timing="interleaved rounds, 8 queries near gallery rows", **record)


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


# Relative captions for the precision comparison: varied words and lengths (3 to ~20 tokens).
_COLOURS = ("red", "dark blue", "light green", "black", "white", "orange", "pale yellow", "grey")
_THINGS = ("sleeves", "collar", "stripes", "logo", "buttons", "pattern", "lettering", "background")
_TEMPLATES = ("is {c}", "has {c} {t}", "is darker and has {c} {t}", "has no {t} and is {c}",
              "make the {t} {c} and add a small {c} dog next to it", "is shorter with {c} {t} and a v-neck")


def bench_captions(count: int) -> list[str]:
    """``count`` distinct relative captions (deterministic)."""
    out = []
    for i in range(count):
        template = _TEMPLATES[i % len(_TEMPLATES)]
        caption = template.format(c=_COLOURS[(i // len(_TEMPLATES)) % len(_COLOURS)],
                                  t=_THINGS[(i * 3 + i // 7) % len(_THINGS)])
        out.append(caption if i < len(_TEMPLATES) * len(_COLOURS) else f"{caption} ({i})")
    return out


def choose_precisions(engine: Engine, clip, combiner: Combiner, *, text_precision: str, compose_precision: str,
                      emit: Callable) -> dict:
    """Probe (or take as given) the caption tower's and the Combiner's precisions, as serving at
    start-up would, install them in ``engine`` and emit what was chosen with the probe's timings."""
    probe_tokens = [clip.tokenize([c]) for c in PROBE_CAPTIONS]
    start = time.perf_counter()
    tower = make_text_tower(clip.model, engine.device, text_precision, probe_tokens=probe_tokens)
    text_s = time.perf_counter() - start
    with torch.inference_mode():
        probe_text = engine.text_tower(torch.cat(probe_tokens))  # (3, D) fp32: real-looking Combiner inputs
    start = time.perf_counter()
    compose = choose_combiner_precision(combiner, engine.device, compose_precision, text_features=probe_text)
    compose_s = time.perf_counter() - start
    emit("precision_choice", stage="text", requested=text_precision, wall_s=round(text_s, 3),
         **tower.choice.describe())
    emit("precision_choice", stage="compose", requested=compose_precision, wall_s=round(compose_s, 3),
         **compose.describe())
    engine.text_tower = tower
    engine.combiner = compose.module
    engine.composers["combiner"] = make_composer("combiner", compose.module)
    engine.clear_caches()
    return {"text_precision": tower.choice.name, "compose_precision": compose.name}


def precision_variants(device: torch.device) -> tuple[str, ...]:
    """Reduced precisions whose effect on results is measured on this device."""
    return tuple(p for p in CPU_CANDIDATES if p != "fp32") if device.type == "cpu" else ("fp16", "bf16")


class PrecisionEffect:
    """How far reduced precisions move results from the all-fp32 pipeline, query by query as
    served (batch 1): the mean fraction of fp32's top-k also in the variant's top-k, and the
    cosine of the query features. Caption features are computed once for every gallery."""

    def __init__(self, engine: Engine, clip, reference_tower, reference_combiner, *, queries: int):
        self.engine, self.device = engine, engine.device
        self.tokens = [clip.tokenize([c]) for c in bench_captions(queries)]
        self.text = {"fp32": self._encode(reference_tower)}  # precision -> (Q, D) caption features
        for name in precision_variants(self.device):
            self.text[name] = self._encode(TextTower(clip.model, precision=name).to(self.device))
        self.served_text = self._encode(engine.text_tower)
        self.combiners = {"fp32": reference_combiner}
        for name in precision_variants(self.device):
            self.combiners[name] = build_combiner_variant(reference_combiner, name, self.device)

    @torch.inference_mode()
    def _encode(self, tower) -> torch.Tensor:
        return torch.cat([tower(t) for t in self.tokens])  # batch-1 calls, as served

    @torch.inference_mode()
    def _compose(self, combiner, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        dtype = combiner_input_dtype(combiner)
        return torch.cat([combiner.combine_features(image[i:i + 1].to(dtype), text[i:i + 1].to(dtype)).float()
                          for i in range(len(image))])  # (Q, D) normalised

    @torch.inference_mode()
    def measure(self, gallery: str, *, k: int, emit: Callable, served: dict) -> None:
        entry = self.engine.galleries[gallery].gallery
        rows = torch.arange(len(self.tokens), device=self.device) * max(1, len(entry) // len(self.tokens))
        image = entry.raw_features(rows % len(entry)).float()  # (Q, D) gallery references
        k = min(k, len(entry))
        reference = self._compose(self.combiners["fp32"], image, self.text["fp32"])
        ref_top = entry.topk(reference, k)[1].tolist()
        pipelines = [(f"text={name}", self.combiners["fp32"], self.text[name]) for name in self.text if name != "fp32"]
        pipelines += [(f"compose={name}", comb, self.text["fp32"]) for name, comb in self.combiners.items()
                      if name != "fp32"]
        pipelines.append((f"served (text={served['text_precision']}, compose={served['compose_precision']})",
                          self.engine.combiner, self.served_text))
        for label, combiner, text in pipelines:
            query = self._compose(combiner, image, text)
            top = entry.topk(query, k)[1].tolist()
            overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(ref_top, top)])
            cosine = torch.nn.functional.cosine_similarity(query.double(), reference.double()).cpu().numpy()
            emit("precision_effect", variant=label, k=k, n=len(overlap),
                 top_k_overlap_mean=round(float(overlap.mean()), 4), top_k_overlap_min=round(float(overlap.min()), 4),
                 query_cosine_mean=round(float(cosine.mean()), 6), query_cosine_min=round(float(cosine.min()), 6))


def run_bench(*, model: str = "RN50x4", pretrained: Optional[str] = None, device: str = "cpu",
              sizes: Sequence[int] = (10_000, 100_000), queries: int = 30, k: int = 50, index_images: int = 64,
              batch_size: int = 64, num_workers: int = 2, use_faiss: bool = True, text_precision: str = "auto",
              compose_precision: str = "auto", precision_effect: bool = True, emit_line=print) -> None:
    """Every measurement as one JSON line through ``emit_line``; the first line describes the machine."""
    dev = torch.device(device)
    clip = load_clip(model, pretrained, device=device)
    combiner = Combiner.for_feature_dim(clip.feature_dim).eval()
    machine = machine_description(dev)
    base = {"model": clip.name, "device": machine["device"], "cpu": machine["cpu"],
            "torch_threads": torch.get_num_threads()}

    def emit(measure, **fields):
        emit_line(json.dumps({"measure": measure, **base, **fields}))

    emit("machine", requested_text_precision=text_precision, requested_compose_precision=compose_precision,
         **{key: value for key, value in machine.items() if key not in base})
    engine = Engine(clip, combiner, device=device, text_precision="fp32", compose_precision="fp32")
    reference_tower, reference_combiner = engine.text_tower, engine.combiner  # the all-fp32 pipeline
    served = choose_precisions(engine, clip, combiner, text_precision=text_precision,
                               compose_precision=compose_precision, emit=emit)
    base.update(served)
    effect = (PrecisionEffect(engine, clip, reference_tower, reference_combiner, queries=queries)
              if precision_effect else None)
    for size in sizes:
        engine.add_gallery(f"n{size}", random_gallery(clip, size))
        base["gallery"] = size
        bench_queries(engine, f"n{size}", queries=queries, k=k, emit=emit)
        if effect is not None:
            effect.measure(f"n{size}", k=k, emit=emit, served=served)
        bench_topk(engine, f"n{size}", k=k, repeats=max(queries, 20), use_faiss=use_faiss, emit=emit)
        if use_faiss:
            bench_approx(engine, f"n{size}", k=k, repeats=max(queries, 20), emit=emit)
        del engine.galleries[f"n{size}"]
    base.pop("gallery", None)
    if index_images:
        bench_indexing(clip, images=index_images, batch_size=batch_size, num_workers=num_workers, emit=emit)
    emit("memory", **peak_memory(dev))


def machine_description(device: torch.device) -> dict:
    """The CPU's model name and SIMD flags (which decide the fast precisions), the accelerator, versions."""
    import open_clip

    out = dict(cpu_description())
    out["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {out['cpu']}"
    out["torch"], out["open_clip"] = torch.__version__, open_clip.__version__
    out["quantized_engine"] = torch.backends.quantized.engine
    return out
