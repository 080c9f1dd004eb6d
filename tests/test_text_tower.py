"""The serving text tower: exact truncation, every precision close to fp32, models without a
text projection, lazy CUDA graph capture (no CUDA work at construction), concurrent callers."""

import copy
import threading

import open_clip
import pytest
import torch
import torch.nn.functional as F

from cir_demo.model import load_clip
from cir_demo.serve import precision as P
from cir_demo.serve import quantize as Q
from cir_demo.serve import text_tower as T
from cir_demo.serve.text_tower import TextTower, encode_text_truncated, make_text_tower

CPU = torch.device("cpu")
CAPTIONS = ["red", "is darker and has orange lettering with long sleeves and a v-neck", "🙂 مرحبا", ""]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("cir-tiny")


@pytest.fixture(scope="module")
def tokens(clip):
    return clip.tokenize(CAPTIONS)


@pytest.fixture(scope="module")
def expected(clip, tokens):
    with torch.no_grad():
        return clip.model.encode_text(tokens)


def test_truncated_fp32_equals_encode_text(clip, tokens, expected):
    with torch.no_grad():
        assert torch.allclose(encode_text_truncated(clip.model, tokens), expected, atol=1e-5)
    tower = make_text_tower(clip.model, CPU, "fp32")
    assert tower.precision == "fp32" and not tower.choice.probed
    assert torch.allclose(tower(tokens), expected, atol=1e-5)
    for i in range(len(CAPTIONS)):  # batch 1 cuts to its own length
        assert torch.allclose(tower(tokens[i:i + 1]), expected[i:i + 1], atol=1e-5)


@pytest.mark.parametrize("precision, min_cos", [("bf16", 0.999), ("fp16w", 0.9999), ("int8", 0.99)])
def test_reduced_precision_towers_close_to_fp32(clip, tokens, expected, precision, min_cos):
    tower = make_text_tower(clip.model, CPU, precision)
    assert tower.precision == precision and tower.choice.name == precision
    assert next(clip.model.parameters()).dtype == torch.float32  # the shared model is untouched
    assert F.cosine_similarity(tower(tokens), expected).min() > min_cos
    if precision == "int8":  # attention projections too, not only the MLP
        block = tower.transformer.resblocks[0]
        assert isinstance(block.attn, Q.SplitSelfAttention) and isinstance(block.attn.in_proj, Q.DynamicInt8Linear)
        assert isinstance(block.mlp.c_fc, Q.DynamicInt8Linear)
        assert isinstance(clip.model.transformer.resblocks[0].attn, torch.nn.MultiheadAttention)


def fixed_times(ms_by_name):
    def time_call(name, call):
        call()
        return ms_by_name[name]
    return time_call


def test_auto_probes_on_cpu_and_takes_the_fastest_acceptable(clip, tokens, expected):
    fake = {"fp32": 30.0, "bf16": 50.0, "fp16w": 20.0, "int8": 15.0}
    # min_cosine 0.99: int8 passes also with AVX2's 7-bit activations (cir-tiny: ~0.9986 there)
    tower = make_text_tower(clip.model, CPU, "auto", min_cosine=0.99, time_call=fixed_times(fake))
    assert tower.choice.probed and tower.precision == "int8" and tower.choice.skipped == ["fp16w"]
    assert tower.choice.timings_ms == {name: ms for name, ms in fake.items() if name != "fp16w"}
    assert F.cosine_similarity(tower(tokens), expected).min() > 0.99
    strict = make_text_tower(clip.model, CPU, "auto", min_cosine=1.0 - 1e-12, time_call=fixed_times(fake))
    assert strict.precision == "fp32" and {"bf16", "int8"} <= set(strict.choice.rejected)
    assert "fp16w" in strict.choice.cosine  # int8 rejected: fp16w was tried


def test_auto_probe_with_real_timings_gives_a_working_tower(clip, tokens, expected):
    tower = make_text_tower(clip.model, CPU, "auto", probe_tokens=[clip.tokenize([c]) for c in P.PROBE_CAPTIONS])
    assert tower.choice.probed and tower.precision in P.CPU_CANDIDATES
    choice = tower.choice
    assert set(choice.timings_ms) | set(choice.rejected) | set(choice.skipped) == set(P.CPU_CANDIDATES)
    assert F.cosine_similarity(tower(tokens), expected).min() > 0.99


def test_text_projection_none(clip):
    config = copy.deepcopy(clip.model_config)
    config["text_cfg"]["proj_type"] = "none"  # open_clip: no final text projection
    torch.manual_seed(3)
    model = open_clip.CLIP(**config).eval()
    assert model.text_projection is None and T.supports_truncation(model)
    tokens = clip.tokenize(CAPTIONS)
    with torch.no_grad():
        expected = model.encode_text(tokens)  # (B, width): the pooled output
        assert expected.shape == (len(CAPTIONS), config["text_cfg"]["width"])
        assert torch.allclose(encode_text_truncated(model, tokens), expected, atol=1e-5)
    for precision, min_cos in (("fp32", 0.999999), ("bf16", 0.999), ("int8", 0.99)):
        tower = make_text_tower(model, CPU, precision)
        assert F.cosine_similarity(tower(tokens), expected).min() > min_cos


def test_untruncatable_model_falls_back_to_its_own_encode_text(clip, tokens, expected):
    model = copy.deepcopy(clip.model)
    model.text_pool_type = "last"  # not EOT-pooled: truncation would change the result
    assert not T.supports_truncation(model) and T.text_candidates(model, CPU) == ("fp32",)
    tower = make_text_tower(model, CPU, "auto")
    assert tower.full is model and tower.precision == "fp32" and not tower.choice.probed
    with torch.no_grad():
        assert torch.allclose(tower(tokens), model.encode_text(tokens), atol=1e-6)


class _FakeGraph:
    """Stands in for a captured CUDA graph: runs the eager tower on the static buffers."""

    def __init__(self, tower, bucket):
        self.tower, self.bucket, self.replays = tower, bucket, 0
        self.static_in = torch.zeros(1, bucket, dtype=torch.long)
        self.static_out = torch.zeros(1, tower.positional_embedding.shape[1])

    def replay(self, tokens, length):
        self.replays += 1
        self.static_in.zero_()
        self.static_in[:, :length] = tokens[:, :length]
        self.static_out = T.encode_fixed_length(self.tower, self.static_in).float()
        return self.static_out.clone()


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend the tower is on CUDA and record captures (no GPU here: the logic, not the kernels)."""
    captured = []

    def capture(tower, bucket):
        captured.append(bucket)
        return _FakeGraph(tower, bucket)

    monkeypatch.setattr(T, "_capture", capture)
    monkeypatch.setattr(TextTower, "_graphable", lambda self: self.cuda_graphs)
    return captured


def test_lazy_capture_does_nothing_at_construction(clip, tokens, expected, fake_cuda):
    tower = make_text_tower(clip.model, CPU, "fp32", cuda_graphs=True)  # capture="lazy" is the default
    assert tower.capture == "lazy" and tower._graphs == {} and fake_cuda == []
    first = tower(tokens[1:2])  # 16 tokens or fewer: the 16 bucket, captured on first use
    assert fake_cuda == [16] and set(tower._graphs) == {16}
    assert torch.allclose(first, expected[1:2], atol=1e-5)
    assert torch.allclose(tower(tokens[1:2]), first) and fake_cuda == [16] and tower._graphs[16].replays == 2
    tower(tokens[0:1])  # "red": the 8 bucket
    assert fake_cuda == [16, 8]
    tower(tokens)  # batches run eager, never captured
    assert fake_cuda == [16, 8]


def test_eager_capture_takes_every_bucket_at_start(clip, fake_cuda):
    tower = make_text_tower(clip.model, CPU, "fp32", cuda_graphs=True, capture="eager")
    context = clip.model.positional_embedding.shape[0]
    assert fake_cuda == [b for b in T.GRAPH_BUCKETS if b <= context]
    tower(clip.tokenize(["is red"]))
    assert len(fake_cuda) == len([b for b in T.GRAPH_BUCKETS if b <= context])  # nothing captured later
    with pytest.raises(ValueError, match="capture must be one of"):
        TextTower(clip.model, capture="sometimes")


def test_int8_tower_never_graphs(clip, fake_cuda):
    tower = make_text_tower(clip.model, CPU, "int8", cuda_graphs=True)
    tower(clip.tokenize(["is red"]))
    assert not tower.cuda_graphs and fake_cuda == []


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_concurrent_callers_get_their_own_answers(clip, precision):
    tower = make_text_tower(clip.model, CPU, precision)
    captions = [f"caption number {i} is {'very ' * (i % 5)}long" for i in range(8)]
    alone = [tower(clip.tokenize([c])) for c in captions]
    results, errors = [None] * len(captions), []

    def work(i):
        try:
            for _ in range(3):
                results[i] = tower(clip.tokenize([captions[i]]))
        except Exception as err:  # noqa: BLE001 - an error in a thread must fail the test
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(captions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for got, want in zip(results, alone):
        assert torch.allclose(got, want, atol=1e-6)


def _cuda_devices():
    return [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("capture", ["lazy", "eager"])
def test_cuda_graph_replay_equals_eager(clip, index, capture):
    devices = _cuda_devices()
    if index >= len(devices):
        pytest.skip("needs a second GPU")
    device = devices[index]
    model = load_clip("cir-tiny").model.to(device).eval()
    for precision, atol in (("fp32", 1e-4), ("fp16", 2e-2)):
        graphed = make_text_tower(model, device, precision, cuda_graphs=True, capture=capture)
        eager = make_text_tower(model, device, precision, cuda_graphs=False)
        assert (graphed._graphs == {}) == (capture == "lazy")
        for caption in ["red", "is darker and has orange lettering", "make the background blue " * 3]:
            tokens = clip.tokenize([caption])
            out = graphed(tokens)
            assert out.device == device and torch.allclose(out, eager(tokens), atol=atol)
            assert torch.allclose(graphed(tokens), out)  # a second replay of the same bucket
        assert graphed._graphs and all(entry.graph is not None for entry in graphed._graphs.values())
        assert all(entry.static_in.device == device for entry in graphed._graphs.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_auto_on_cuda_is_fp16_without_probe(clip, monkeypatch):
    monkeypatch.setattr(T, "choose_precision", lambda *a, **k: pytest.fail("probed on CUDA"))
    tower = make_text_tower(load_clip("cir-tiny").model.cuda(), torch.device("cuda"), "auto")
    assert tower.precision == "fp16" and not tower.choice.probed and tower._graphs == {}
