"""Devices and dtypes, decided in one place: the default device, precision names, native bf16.

Every layer that needs "cuda if available", a precision name -> dtype table or "does this CPU
have fast bf16?" asks here, so the answers cannot drift apart.
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``device`` if given, else CUDA when present, else the CPU."""
    if device is not None and device != "":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtype_of(precision: Union[str, torch.dtype], what: str = "precision") -> torch.dtype:
    """torch dtype for "fp32" / "fp16" / "bf16" (a dtype passes through); ValueError otherwise."""
    if isinstance(precision, torch.dtype):
        return precision
    if precision not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when oneDNN reports native bf16 kernels (AVX512-BF16 or AMX) on this CPU."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_description() -> dict:
    """The CPU's model name and the SIMD flags that decide which precisions are fast."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")
    return {"cpu": model, "cpu_flags": [f for f in wanted if f in flags], "threads": torch.get_num_threads(),
            "native_bf16": cpu_has_native_bf16()}


def optional_precision(precision: Optional[str]) -> Optional[torch.dtype]:
    """None stays None (keep the model's dtype); a name becomes its dtype."""
    return None if precision is None else dtype_of(precision)
