"""Serving precision chosen by what is fast on this machine, checked against fp32.

CPU flags do not tell which precision is fastest: on an AVX2-only EPYC a bf16 text tower is
slower than fp32 (52 vs 33 ms for RN50x4) while int8 dynamic quantisation halves it, and on
CPUs with AVX512-BF16 the order changes again. So "auto" on a CPU builds each candidate
variant of a module, checks its outputs against the fp32 reference on representative inputs
(min cosine >= a threshold, else rejected), times batch-1 calls and keeps the fastest
acceptable one. On CUDA "auto" is fp16 and nothing is probed; an explicit precision is
always taken as given.

At batch 1 these modules are bound by reading their weights (RN50x4's text tower: 236 MB in
fp32), so fewer weight bytes is most of the speed. Precisions:
- "fp32", "bf16", "fp16": the module cast to that dtype;
- "fp16w" (CPU): fp32 activations and accumulation, ``nn.Linear`` weights stored in fp16
  (fbgemm's dynamic fp16 linear): half the bytes at fp32's accuracy, where bf16 is emulated;
- "int8" (CPU): ``nn.Linear`` weights int8 per output channel, activations quantised per call
  (fbgemm's dynamic int8 linear), a quarter of the bytes; the text tower's attention
  projections are included (``SplitSelfAttention``).
The int8 / fp16w layers use torch's quantised ops (``quantized::linear_dynamic``), which torch
2.10+ flags as deprecated in favour of torchao; they work in torch 2.14.1, and where they do
not, the probe rejects the candidate with the reason and serving goes on without it.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from cir_demo.config.runtime import PRECISIONS
from cir_demo.serve.quantize import quantize_linears, splittable

log = logging.getLogger(__name__)

CPU_ONLY = ("fp16w", "int8")
PRECISION_NAMES = (*PRECISIONS, *CPU_ONLY)
CPU_CANDIDATES = ("fp32", "bf16", "fp16w", "int8")  # ties go to the earlier one
ONLY_IF_REJECTED = {"fp16w": "int8"}  # fp16w is tried only where int8 is rejected (see choose_precision)
QUIET_ROUND_FACTOR = 1.5  # timed rounds slower than this times the fastest round are not counted
# Relative captions of typical lengths (3 to ~25 tokens): what the engine can tokenise for the probe.
PROBE_CAPTIONS = ("is darker",
                  "has long sleeves and a v-neck and is light blue",
                  "the dog is now lying on a red sofa next to two cats and the room has a large window behind it")

TimeCall = Callable[[str, Callable[[], Any]], float]


@dataclass
class PrecisionChoice:
    """What a probe chose, and the evidence: median batch-1 ms and min cosine to the reference."""

    name: str
    timings_ms: dict = field(default_factory=dict)   # candidate -> median ms (timed candidates only)
    cosine: dict = field(default_factory=dict)       # candidate -> min cosine to the reference outputs
    rejected: dict = field(default_factory=dict)     # candidate -> why it was not eligible
    skipped: list = field(default_factory=list)      # candidates not built: their faster alternative passed
    probed: bool = False                             # False: precision given explicitly (or fp16 on CUDA)
    probe_s: float = 0.0                             # wall time of the whole probe, builds included
    module: Any = field(default=None, repr=False, compare=False)  # the chosen built variant

    def describe(self) -> dict:
        """JSON-able summary (no module)."""
        return {"precision": self.name, "probed": self.probed,
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
                "cosine": {k: round(v, 6) for k, v in self.cosine.items()},
                "rejected": dict(self.rejected), "skipped": list(self.skipped), "probe_s": round(self.probe_s, 3)}


def resolve_precision(precision: Union[str, torch.dtype, None], device: Union[str, torch.device],
                      what: str = "precision") -> str:
    """A checked precision name, or "auto" where a probe must decide (a CPU).

    "auto" (or None) on CUDA is "fp16"; "int8" is refused off the CPU.
    """
    device = torch.device(device)
    if isinstance(precision, torch.dtype):
        names = {dtype: name for name, dtype in PRECISIONS.items()}
        if precision not in names:
            raise ValueError(f"{what}: unsupported dtype {precision}")
        precision = names[precision]
    if precision in (None, "auto"):
        return "fp16" if device.type == "cuda" else "auto"
    if precision not in PRECISION_NAMES:
        raise ValueError(f"{what} must be 'auto' or one of {', '.join(PRECISION_NAMES)}, got {precision!r}")
    if precision in CPU_ONLY and device.type != "cpu":
        raise ValueError(f"{what} {precision!r} (dynamic quantisation) runs on the CPU only, not on {device}")
    return precision


def fixed_choice(name: str, module: Any) -> PrecisionChoice:
    """A choice made without probing (an explicit precision)."""
    return PrecisionChoice(name=name, probed=False, module=module)


def wall_time_ms(name: str, call: Callable[[], Any]) -> float:
    """Default probe timer: wall-clock ms of one call (CPU work; CUDA is never probed)."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def choose_precision(build: Callable[[str], Callable], example_inputs: Sequence[Sequence[Any]], *,
                     candidates: Sequence[str] = CPU_CANDIDATES, reference: str = "fp32",
                     min_cosine: float = 0.999, repeats: int = 15, min_repeats: int = 3, budget_ms: float = 400.0,
                     margin: float = 0.05, only_if_rejected: Optional[dict] = None,
                     time_call: Optional[TimeCall] = None) -> PrecisionChoice:
    """Build each candidate, keep those close to ``reference``, return the fastest of them.

    ``build(name)`` returns a callable (e.g. a module); ``example_inputs`` is a list of argument
    tuples, each one batch-1 call. Every candidate first runs every example (its outputs give
    the cosine check and warm it up), then ``repeats`` timed rounds interleave the acceptable
    candidates (one call each per round, the order rotating) so background load hits all alike.
    Rounds go on to ``repeats`` or, after ``min_repeats``, until the timed calls add up to
    ``budget_ms`` (cheap modules get more rounds; a loaded machine does not stall start-up).
    Rounds whose total exceeds ``QUIET_ROUND_FACTOR`` times the fastest round's are dropped (a
    burst of load from elsewhere slows every candidate in it). The fastest median wins; the
    reference is kept when within ``margin`` of it (exact beats marginally faster).
    ``time_call(name, call) -> ms`` replaces the wall clock (tests); given its answers the
    choice is deterministic. A candidate whose build or run raises is rejected with the
    reason; the reference must work.
    ``only_if_rejected`` ({candidate: other}, default ``ONLY_IF_REJECTED``): build and try
    ``candidate`` only when ``other`` is rejected (or not a candidate). fp16w runs the same
    fbgemm kernels as int8 with twice the weight bytes: measured no faster than int8 here, also
    with fbgemm forced to AVX2, so it matters only where int8 is not accurate enough (7-bit
    activations on AVX2), and each is costly to build (weight packing, ~0.4-0.8 s per 60M weights).
    """
    if not example_inputs:
        raise ValueError("choose_precision needs at least one example input")
    time_call = time_call or wall_time_ms
    start = time.perf_counter()
    names = list(dict.fromkeys([reference, *candidates]))
    conditional = dict(ONLY_IF_REJECTED if only_if_rejected is None else only_if_rejected)
    names.sort(key=lambda n: (n != reference, n in conditional))  # reference, then the unconditional ones
    built: dict[str, Callable] = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    rejected: dict[str, str] = {}
    skipped: list[str] = []
    for name in names:
        other = conditional.get(name)
        if other is not None and other in names and other not in rejected:
            skipped.append(name)  # the faster alternative passed: not worth building
            continue
        try:
            fn = build(name)
            with torch.inference_mode():
                outputs[name] = [_as_rows(fn(*args)) for args in example_inputs]
            cos = _min_cosine(outputs[reference], outputs[name])
            if not cos >= min_cosine and name != reference:  # NaN fails too
                rejected[name] = f"cosine {cos:.6f} < {min_cosine}"
            else:
                built[name] = fn  # (a rejected variant is dropped now: a large tower's takes hundreds of MB)
        except Exception as err:  # a candidate that cannot run is simply not chosen
            if name == reference:
                raise
            rejected[name] = f"failed: {type(err).__name__}: {err}"
            log.info("precision %s not usable here: %s", name, err)
    acceptable = [n for n in candidates if n in built]
    if not acceptable:
        acceptable = [reference]
    timings: dict[str, float] = {}
    if len(acceptable) > 1:
        rounds: list[dict[str, float]] = []
        spent = 0.0
        with torch.inference_mode():
            for r in range(max(repeats, 1)):
                if r >= min_repeats and spent >= budget_ms:
                    break
                args = example_inputs[r % len(example_inputs)]
                shift = r % len(acceptable)
                times = {}
                for name in acceptable[shift:] + acceptable[:shift]:
                    fn = built[name]
                    times[name] = time_call(name, lambda fn=fn, args=args: fn(*args))
                rounds.append(times)
                spent += sum(times.values())
        # A burst of load from elsewhere slows a whole round: drop rounds far slower than the best.
        best = min(sum(t.values()) for t in rounds)
        calm = [t for t in rounds if sum(t.values()) <= QUIET_ROUND_FACTOR * best]
        timings = {n: statistics.median(t[n] for t in calm) for n in acceptable}
    chosen = min(acceptable, key=lambda n: (timings.get(n, 0.0), acceptable.index(n)))
    if reference in acceptable and timings and timings[reference] <= timings[chosen] * (1 + margin):
        chosen = reference
    module = built[chosen]
    built.clear()  # let the other variants go
    cosine = {name: _min_cosine(outputs[reference], outs) for name, outs in outputs.items()}
    choice = PrecisionChoice(name=chosen, timings_ms=timings, cosine=cosine, rejected=rejected, probed=True,
                             skipped=skipped, probe_s=time.perf_counter() - start, module=module)
    log.info("precision probe chose %s: %s", chosen, choice.describe())
    return choice


def _as_rows(output: Any) -> torch.Tensor:
    """The first tensor of an output, as float32 rows (B, -1) on the CPU."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    output = output.detach().float().cpu()
    return output.reshape(output.shape[0], -1) if output.dim() > 1 else output.reshape(1, -1)


def _min_cosine(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> float:
    cos = [F.cosine_similarity(r.double(), o.double(), dim=-1).min() for r, o in zip(reference, outputs)]
    return float(torch.stack(cos).min())


def precision_memo(roots: Sequence[Any], precision: str, *, device: Union[str, torch.device, None] = None,
                   split_attention: bool = False, min_out_features: int = 8) -> dict:
    """A ``copy.deepcopy`` memo that makes the copy of ``roots`` (modules, parameters) directly
    in ``precision``: one cast copy per parameter (not a copy, then a cast), and no copy at all
    of the weights ``quantize_linears`` will replace (int8 / fp16w), which it reads and drops.
    Every parameter of the copy is a new ``nn.Parameter`` without grad: the originals, their
    dtypes and ``requires_grad`` flags stay as they were.
    """
    dtype = torch.float32 if precision in CPU_ONLY else PRECISIONS[precision]
    shared: set[int] = set()
    modules = [m for root in roots if isinstance(root, nn.Module) for m in root.modules()]
    if precision in CPU_ONLY:
        for module in modules:
            if type(module) is nn.Linear and module.out_features >= min_out_features:
                shared.update(id(p) for p in module.parameters(recurse=False))
            elif split_attention and splittable(module):
                shared.update(id(p) for p in (module.in_proj_weight, module.in_proj_bias, module.out_proj.weight,
                                              module.out_proj.bias) if p is not None)
    params = [r for r in roots if isinstance(r, nn.Parameter)]
    params += [p for m in modules for p in m.parameters(recurse=False)]
    memo: dict = {}
    for param in params:
        if id(param) in memo:
            continue
        if id(param) in shared:
            data = param.detach()
        else:
            data = param.detach().to(device=device if device is not None else param.device,
                                     dtype=dtype if param.is_floating_point() else param.dtype, copy=True)
        memo[id(param)] = nn.Parameter(data, requires_grad=False)
    return memo


# ---- the Combiner ----------------------------------------------------------------------------
def build_combiner_variant(combiner: nn.Module, name: str, device: Union[str, torch.device, None] = None) -> nn.Module:
    """A serving copy of ``combiner`` in precision ``name`` (the original is left untouched)."""
    device = torch.device(device) if device is not None else next(combiner.parameters()).device
    name = resolve_precision(name, device, "compose precision")
    if name == "auto":
        raise ValueError("build_combiner_variant needs a concrete precision, not 'auto'")
    target = torch.device("cpu") if name in CPU_ONLY else device
    variant = copy.deepcopy(combiner, precision_memo([combiner], name, device=target)).eval()
    if name in CPU_ONLY:
        quantize_linears(variant, name)
    return variant


def combiner_input_dtype(combiner: nn.Module) -> torch.dtype:
    """The dtype the Combiner's inputs must be cast to (fp32 for int8 / fp16w)."""
    return next((p.dtype for p in combiner.parameters() if p.is_floating_point()), torch.float32)


def choose_combiner_precision(combiner: nn.Module, device: Union[str, torch.device], precision: str = "auto", *,
                              image_features: Optional[torch.Tensor] = None,
                              text_features: Optional[torch.Tensor] = None, **probe_options) -> PrecisionChoice:
    """The Combiner in ``precision`` ("auto" probes on a CPU; fp16 on CUDA); ``choice.module`` is it.

    The probe feeds batch-1 (image, text) pairs: rows of the given raw features (N, D) when
    given, else seeded random ones; ``probe_options`` go to ``choose_precision``.
    """
    device = torch.device(device)
    name = resolve_precision(precision, device, "compose precision")
    if name != "auto":
        return fixed_choice(name, build_combiner_variant(combiner, name, device))
    dim = int(combiner.clip_feature_dim)
    gen = torch.Generator().manual_seed(0)
    image = image_features if image_features is not None else torch.randn(3, dim, generator=gen)
    text = text_features if text_features is not None else torch.randn(3, dim, generator=gen)
    rows = min(len(image), len(text), 4)
    inputs = [(image[i:i + 1].float().to(device), text[i:i + 1].float().to(device)) for i in range(rows)]
    choice = choose_precision(lambda name: _CombineCall(build_combiner_variant(combiner, name, device)), inputs,
                              **{"candidates": CPU_CANDIDATES, **probe_options})
    choice.module = choice.module.combiner
    return choice


class _CombineCall:
    """A Combiner variant as the probe calls it: raw features in, normalised query features out."""

    def __init__(self, combiner: nn.Module):
        self.combiner, self.dtype = combiner, combiner_input_dtype(combiner)

    def __call__(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.combiner.combine_features(image.to(self.dtype), text.to(self.dtype))


def synthetic_tokens(vocab_size: int, context_length: int, lengths: Sequence[int] = (4, 12, 26),
                     seed: int = 0) -> list[torch.Tensor]:
    """Batch-1 token tensors (1, context) of a few caption lengths: SOT, random words, EOT.

    Stands in for tokenised ``PROBE_CAPTIONS`` where no tokenizer is at hand (open_clip's
    tokenizer puts SOT = vocab - 2 and EOT = vocab - 1, the largest id).
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for length in lengths:
        length = max(2, min(length, context_length))
        tokens = torch.zeros(1, context_length, dtype=torch.long)
        tokens[0, 0] = vocab_size - 2
        tokens[0, 1:length - 1] = torch.randint(1, max(2, vocab_size - 2), (length - 2,), generator=gen)
        tokens[0, length - 1] = vocab_size - 1
        out.append(tokens)
    return out
