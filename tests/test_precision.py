"""Serving precisions: each variant stays close to fp32; the probe picks the fastest acceptable one.

Timings are injected (``time_call``), so no test depends on this machine's speed.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cir_demo.model import Combiner
from cir_demo.model.composers import make_composer
from cir_demo.serve import precision as P
from cir_demo.serve import quantize as Q


@pytest.fixture(scope="module")
def combiner():
    torch.manual_seed(1)
    return Combiner(48, 96, 192).eval()


def fake_clock(ms_by_name, calls=None):
    """A ``time_call`` that runs the call and reports a fixed time per candidate."""
    def time_call(name, call):
        call()
        if calls is not None:
            calls.append(name)
        return ms_by_name[name]
    return time_call


def noisy_builder(noise_by_name, built=None):
    """Candidates that return the input plus a candidate-specific amount of noise."""
    def build(name):
        if built is not None:
            built.append(name)
        gen = torch.Generator().manual_seed(hash(name) % 1000)
        noise = noise_by_name[name]

        def candidate(x):
            return x + noise * torch.randn(x.shape, generator=gen)
        candidate.precision = name
        return candidate
    return build


EXAMPLES = [(torch.randn(1, 64, generator=torch.Generator().manual_seed(i)),) for i in range(3)]


@pytest.mark.parametrize("name", ["bf16", "fp16w", "int8"])
def test_combiner_variants_close_to_fp32(combiner, name):
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(5, 48, generator=gen), torch.randn(5, 48, generator=gen)
    with torch.no_grad():
        expected = combiner.combine_features(image, text)
        variant = P.build_combiner_variant(combiner, name, "cpu")
        dtype = P.combiner_input_dtype(variant)
        got = variant.combine_features(image.to(dtype), text.to(dtype)).float()
    assert F.cosine_similarity(got, expected).min() > 0.99
    assert next(combiner.parameters()).dtype == torch.float32  # the original is untouched
    assert not isinstance(combiner.combiner_layer, Q.DynamicInt8Linear)


def test_int8_combiner_serves_through_the_composer(combiner):
    variant = P.build_combiner_variant(combiner, "int8", "cpu")
    assert isinstance(variant.combiner_layer, Q.DynamicInt8Linear)
    assert P.combiner_input_dtype(variant) == torch.float32  # the tiny lambda head stays float
    composition = make_composer("combiner", variant).compose(torch.randn(2, 48), torch.randn(2, 48))
    assert composition.features.shape == (2, 48) and composition.lam.shape == (2, 1)
    assert torch.allclose(composition.features.norm(dim=-1), torch.ones(2), atol=1e-4)


def test_int8_weights_round_trip_exactly():
    """The int8 weights are round(w / scale) per output channel, with scale = max|w| / 127."""
    torch.manual_seed(1)
    linear = nn.Linear(40, 12)
    layer = Q.DynamicInt8Linear(linear)
    qweight, _ = torch.ops.quantized.linear_unpack(layer._packed)
    scale = linear.weight.detach().abs().amax(dim=1, keepdim=True).double() / 127
    want = torch.round(linear.weight.detach().double() / scale).clamp(-127, 127)
    assert torch.equal(qweight.int_repr().double(), want)
    assert torch.allclose(qweight.q_per_channel_scales(), scale[:, 0])


def test_quantized_linears_match_float():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(3, 5, 64)  # leading dims pass through, as the text tower's (B, L, W)
    with torch.no_grad():
        expected = linear(x)
        fp16w = Q.quantize_linears(nn.Sequential(copy.deepcopy(linear)), "fp16w")[0]
        assert type(fp16w).__module__.startswith("torch.ao")  # torch's own dynamic fp16 Linear
        layers = [Q.DynamicInt8Linear(linear), fp16w]
        if Q.full_range_int8_exact():  # 8-bit activations saturate on AVX2 kernels (int16 pair sums)
            layers.append(Q.DynamicInt8Linear(linear, reduce_range=False))
        for layer in layers:
            out = layer(x)
            assert out.shape == expected.shape and out.dtype == torch.float32
            assert F.cosine_similarity(out.flatten(), expected.flatten(), dim=0) > 0.999


def test_int8_uses_full_range_activations_only_where_exact():
    layer = Q.quantize_linears(nn.Sequential(nn.Linear(16, 16)))[0]
    assert isinstance(layer, Q.DynamicInt8Linear) and layer.reduce_range == (not Q.full_range_int8_exact())


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_attention_equals_multihead_attention(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    split = Q.SplitSelfAttention(mha).eval()
    x = torch.randn(2, 7, 32) if batch_first else torch.randn(7, 2, 32)
    causal = torch.full((7, 7), float("-inf")).triu(1)
    with torch.no_grad():
        for mask in (None, causal, causal.isinf()):
            expected = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
            assert torch.allclose(split(x, x, x, need_weights=False, attn_mask=mask)[0], expected, atol=1e-5)


def test_quantize_linears_reaches_attention_when_split():
    block = nn.Sequential(nn.MultiheadAttention(16, 2, batch_first=True))
    Q.quantize_linears(block, split_attention=True)
    assert isinstance(block[0], Q.SplitSelfAttention)
    assert isinstance(block[0].in_proj, Q.DynamicInt8Linear) and isinstance(block[0].out_proj, Q.DynamicInt8Linear)


def test_chooser_picks_the_fastest_acceptable_candidate():
    calls = []
    choice = P.choose_precision(noisy_builder({"fp32": 0.0, "bf16": 1e-3, "int8": 1e-3}), EXAMPLES,
                                candidates=("fp32", "bf16", "int8"), repeats=4,
                                time_call=fake_clock({"fp32": 10.0, "bf16": 6.0, "int8": 3.0}, calls))
    assert choice.name == "int8" and choice.probed and not choice.rejected
    assert choice.timings_ms == {"fp32": 10.0, "bf16": 6.0, "int8": 3.0}
    assert choice.cosine["fp32"] == pytest.approx(1.0) and choice.cosine["int8"] > 0.999
    assert len(calls) == 12 and calls[:3] == ["fp32", "bf16", "int8"] and calls[3:6] == ["bf16", "int8", "fp32"]
    assert choice.module.precision == "int8"  # the chosen variant itself, ready to serve


def test_chooser_rejects_a_candidate_below_the_cosine_threshold():
    choice = P.choose_precision(noisy_builder({"fp32": 0.0, "bf16": 1e-3, "int8": 1.0}), EXAMPLES,
                                candidates=("fp32", "bf16", "int8"), min_cosine=0.999,
                                time_call=fake_clock({"fp32": 10.0, "bf16": 6.0, "int8": 1.0}))
    assert choice.name == "bf16"
    assert "int8" in choice.rejected and "cosine" in choice.rejected["int8"]
    assert "int8" not in choice.timings_ms and choice.cosine["int8"] < 0.999


def test_chooser_keeps_the_reference_when_nearly_as_fast():
    choice = P.choose_precision(noisy_builder({"fp32": 0.0, "bf16": 1e-3}), EXAMPLES, candidates=("fp32", "bf16"),
                                margin=0.05, time_call=fake_clock({"fp32": 10.0, "bf16": 9.8}))
    assert choice.name == "fp32"
    choice = P.choose_precision(noisy_builder({"fp32": 0.0, "bf16": 1e-3}), EXAMPLES, candidates=("fp32", "bf16"),
                                margin=0.05, time_call=fake_clock({"fp32": 10.0, "bf16": 9.0}))
    assert choice.name == "bf16"


def test_chooser_rejects_a_candidate_that_fails_and_stops_at_the_budget():
    def build(name):
        if name == "int8":
            raise RuntimeError("no quantised engine here")
        return noisy_builder({"fp32": 0.0, "bf16": 1e-3})(name)

    calls = []
    choice = P.choose_precision(build, EXAMPLES, candidates=("fp32", "bf16", "int8"), repeats=50, min_repeats=3,
                                budget_ms=100.0, time_call=fake_clock({"fp32": 40.0, "bf16": 30.0}, calls))
    assert choice.name == "bf16" and "failed" in choice.rejected["int8"]
    assert len(calls) == 2 * 3  # 70 ms per round: the budget is reached after the third round


def test_fp16w_is_tried_only_where_int8_is_rejected():
    built = []
    fake = fake_clock({"fp32": 10.0, "fp16w": 5.0, "int8": 3.0})
    choice = P.choose_precision(noisy_builder({"fp32": 0.0, "fp16w": 1e-4, "int8": 1e-3}, built), EXAMPLES,
                                candidates=("fp32", "fp16w", "int8"), time_call=fake)
    assert choice.name == "int8" and choice.skipped == ["fp16w"] and built == ["fp32", "int8"]
    built.clear()
    choice = P.choose_precision(noisy_builder({"fp32": 0.0, "fp16w": 1e-4, "int8": 1.0}, built), EXAMPLES,
                                candidates=("fp32", "fp16w", "int8"), time_call=fake)
    assert choice.name == "fp16w" and "int8" in choice.rejected and built == ["fp32", "int8", "fp16w"]
    built.clear()
    choice = P.choose_precision(noisy_builder({"fp32": 0.0, "fp16w": 1e-4, "int8": 1e-3}, built), EXAMPLES,
                                candidates=("fp32", "fp16w", "int8"), only_if_rejected={}, time_call=fake)
    assert choice.name == "int8" and set(choice.timings_ms) == {"fp32", "fp16w", "int8"}


def test_rounds_slowed_by_outside_load_are_not_counted():
    script = iter([10.0, 6.0, 3.0,      # calm round
                   80.0, 90.0, 70.0,    # a burst of load: the whole round is slow, int8 worst
                   90.0, 95.0, 96.0,    # ... still
                   10.0, 6.0, 3.0])

    def time_call(name, call):
        call()
        return next(script)
    choice = P.choose_precision(noisy_builder({"fp32": 0.0, "bf16": 1e-3, "int8": 1e-3}), EXAMPLES,
                                candidates=("fp32", "bf16", "int8"), repeats=4, time_call=time_call)
    # rounds rotate the order: round 2 times bf16, int8, fp32 and round 3 int8, fp32, bf16
    assert choice.name == "int8" and choice.timings_ms == {"fp32": 10.0, "bf16": 6.0, "int8": 3.0}


def test_chooser_needs_a_working_reference():
    def build(name):
        raise RuntimeError("broken")
    with pytest.raises(RuntimeError, match="broken"):
        P.choose_precision(build, EXAMPLES, candidates=("fp32",), time_call=fake_clock({}))


def test_only_one_acceptable_candidate_is_not_timed():
    calls = []
    choice = P.choose_precision(noisy_builder({"fp32": 0.0, "bf16": 5.0}), EXAMPLES, candidates=("fp32", "bf16"),
                                time_call=fake_clock({"fp32": 1.0, "bf16": 1.0}, calls))
    assert choice.name == "fp32" and calls == [] and choice.timings_ms == {}


def test_explicit_precision_skips_the_probe(combiner, monkeypatch):
    monkeypatch.setattr(P, "choose_precision", lambda *a, **k: pytest.fail("probed an explicit precision"))
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("int8", torch.float32)):
        choice = P.choose_combiner_precision(combiner, "cpu", name)
        assert choice.name == name and not choice.probed and not choice.timings_ms
        assert P.combiner_input_dtype(choice.module) == dtype


def test_auto_probes_the_combiner_on_cpu(combiner):
    fake = {"fp32": 12.0, "bf16": 7.0, "fp16w": 6.0, "int8": 3.0}
    choice = P.choose_combiner_precision(combiner, "cpu", "auto", time_call=fake_clock(fake))
    assert choice.probed and choice.name == "int8" and set(choice.timings_ms) == set(fake) - {"fp16w"}
    assert choice.skipped == ["fp16w"]  # int8 passed: its slower sibling is not built
    assert isinstance(choice.module.combiner_layer, Q.DynamicInt8Linear)
    assert all(cos > 0.99 for cos in choice.cosine.values())
    assert set(choice.describe()) >= {"precision", "timings_ms", "cosine", "rejected", "probed"}


def test_resolve_precision():
    assert P.resolve_precision("auto", "cuda") == "fp16"
    assert P.resolve_precision(None, "cpu") == "auto"
    assert P.resolve_precision(torch.bfloat16, "cpu") == "bf16"
    assert P.resolve_precision("int8", "cpu") == "int8"
    with pytest.raises(ValueError, match="CPU only"):
        P.resolve_precision("int8", "cuda")
    with pytest.raises(ValueError, match="must be 'auto' or one of"):
        P.resolve_precision("int4", "cpu")
