"""Which precision a bundle serves in on a CPU: fp32 unless fp32 misses the latency budget, decided
once per machine and model and kept in a record, so restarts (and load at start-up) never change it.

Why: a reduced precision moves scores slightly, so the rank a visitor sees would differ from
``eval``'s fp32 figures, and a choice re-made by the wall clock at every start would make served
results depend on the machine's load at that moment. Reduced precision is used only where a user
feels it: when the caption tower and the Combiner in fp32 together take longer than
``LATENCY_BUDGET_MS`` per query, measured in CPU time on one thread (RN50x4: about 60 ms); then the probe of
``cir_demo.serve.precision`` picks the fastest precision within cosine 0.999 of fp32. The built-in
model takes about 1 ms in fp32 and is served in fp32.

The record is a small JSON file (the app keeps it in its cache folder) keyed by the machine
(CPU model and flags, torch version, threads) and the model (CLIP fingerprint, Combiner weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from cir_demo.config.files import atomic_write_text
from cir_demo.config.runtime import cpu_description

log = logging.getLogger(__name__)

LATENCY_BUDGET_MS = 20.0  # caption tower + Combiner per query; the scan and the page take the rest of ~30 ms
TIMING_REPEATS = 7        # the minimum of a few calls: robust to other work on the machine


def module_fingerprint(module: Optional[nn.Module]) -> str:
    """A short digest of a module's tensors (names, shapes, dtypes and a sample of the values)."""
    if module is None:
        return "none"
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1).float().cpu()
        sample = torch.cat([flat[:512], flat[-512:]]) if flat.numel() > 1024 else flat
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def record_key(model_id: str) -> str:
    """The machine and the model, as one key."""
    machine = {**cpu_description(), "torch": torch.__version__}
    return hashlib.blake2b(json.dumps([machine, model_id], sort_keys=True).encode(), digest_size=12).hexdigest()


def read_record(path: Optional[Path], key: str) -> Optional[dict]:
    """The recorded plan for ``key`` ({"text", "compose", ...}), or None."""
    if path is None:
        return None
    try:
        entry = json.loads(Path(path).read_text("utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(entry, dict) and isinstance(entry.get("text"), str) and isinstance(entry.get("compose"), str):
        return entry
    return None


def write_record(path: Optional[Path], key: str, entry: dict) -> None:
    """Add ``entry`` under ``key`` to the record file (atomically; other keys are kept)."""
    if path is None:
        return
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    data[key] = entry
    try:
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError as err:  # a read-only cache: the plan is still used, just re-measured next start
        log.warning("could not record the serving precision in %s: %s", path, err)


def fastest_ms(call: Callable[[], object], repeats: int = TIMING_REPEATS) -> float:
    """The fastest of ``repeats`` calls, in ms of this thread's CPU time, on one torch thread.

    CPU time of one thread does not grow when other work shares the machine (wall time does, and
    a multi-threaded op can slow down a hundredfold when one of its threads is descheduled), so the
    decision does not depend on the load at start-up. One thread is never faster than several, so
    a model within the budget here is within it when served.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            call()
            best = float("inf")
            for _ in range(repeats):
                start = time.thread_time()
                call()
                best = min(best, (time.thread_time() - start) * 1000)
    finally:
        torch.set_num_threads(threads)
    return best


def fp32_cost_ms(text_call: Callable[[torch.Tensor], torch.Tensor], probe_tokens: Sequence[torch.Tensor],
                 combiner: Optional[nn.Module]) -> dict:
    """fp32 ms per query of the caption tower (mean over the probe captions) and of the Combiner."""
    text_ms = sum(fastest_ms(lambda t=t: text_call(t)) for t in probe_tokens) / max(1, len(probe_tokens))
    compose_ms = 0.0
    if combiner is not None:
        with torch.inference_mode():
            features = text_call(probe_tokens[0]).float()  # (1, D): any realistic row
        compose_ms = fastest_ms(lambda: combiner.combine_features(features, features))
    return {"text": round(text_ms, 3), "compose": round(compose_ms, 3)}
