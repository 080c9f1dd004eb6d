"""The trimmed vocabulary: open_clip's tokens remapped, stored in the checkpoint, real models untouched."""

import json

import open_clip
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cir_demo.model import CheckpointError, load_checkpoint, save_checkpoint
from cir_demo.model.clip import ClipModel, build_model, model_config_for
from cir_demo.model.tokenizers import make_tokenizer
from cir_demo.model.vocab import TrimmedTokenizer, vocab_size, vocabulary_of
from cir_demo.train.pretrain import new_clip

TEXTS = ["make it red", "a fitted dark red long-sleeved knee-length dress with white dots and a v-neck",
         "remove the cubes and add two more balls", "has a floral pattern"]


@pytest.fixture(scope="module")
def base():
    return open_clip.SimpleTokenizer(context_length=32)


def test_ids_map_one_to_one_onto_the_kept_tokens(base):
    kept = vocabulary_of(base, TEXTS[:3])
    trimmed = TrimmedTokenizer(base, kept)
    original, mapped = base(TEXTS), trimmed(TEXTS)
    k = len(kept)
    assert trimmed.vocab_size == vocab_size(kept) == k + 4
    assert int(mapped.max()) == k + 3 < trimmed.vocab_size
    for row_o, row_m in zip(original.tolist(), mapped.tolist()):
        for o, m in zip(row_o, row_m):
            if o == 0:
                assert m == 0                                 # padding stays padding
            elif o == base.sot_token_id:
                assert m == k + 2
            elif o == base.eot_token_id:
                assert m == k + 3
            elif o in kept:
                assert kept[m - 1] == o                       # a kept token maps back to itself
            else:
                assert m == k + 1                             # "floral" was never read: unknown
    # CLIP pools the text at the end-of-text token, found as the largest id: still true.
    assert torch.equal(mapped.argmax(dim=1), original.argmax(dim=1))


def test_a_trimmed_checkpoint_rebuilds_its_tokenizer_alone(tmp_path):
    clip = new_clip("cir-tiny", device="cpu", trim_from=TEXTS)
    assert clip.model.token_embedding.num_embeddings == len(clip.vocabulary) + 4 < 100
    path = save_checkpoint(tmp_path / "trimmed.safetensors", clip=clip)
    loaded = load_checkpoint(path).clip
    assert loaded.vocabulary == clip.vocabulary
    assert torch.equal(loaded.tokenize(TEXTS), clip.tokenize(TEXTS))
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(TEXTS), clip.encode_text(TEXTS))
    # the same model with open_clip's 49,408 rows of 64 floats is 12.6 MB larger
    full = save_checkpoint(tmp_path / "full.safetensors", clip=new_clip("cir-tiny", device="cpu"))
    saved = full.stat().st_size - path.stat().st_size
    rows = (49408 - clip.model.token_embedding.num_embeddings) * 64 * 4
    assert abs(saved - rows) < 10_000  # the dropped rows, up to the header (which now lists the kept ids)


def test_real_models_tokenize_exactly_as_open_clip(base):
    config = model_config_for("RN50x4")
    ours = make_tokenizer("RN50x4", config)
    assert torch.equal(ours(TEXTS), open_clip.get_tokenizer("RN50x4")(TEXTS))
    model = build_model(model_config_for("cir-tiny"))
    assert ClipModel(model, name="cir-tiny", model_config=model_config_for("cir-tiny")).vocabulary is None


def test_a_vocabulary_that_does_not_fit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="token embedding rows"):
        ClipModel(build_model(model_config_for("cir-tiny")), name="cir-tiny",
                  model_config=model_config_for("cir-tiny"), vocabulary=[1, 2, 3])
    clip = new_clip("cir-tiny", device="cpu", trim_from=TEXTS)
    path = save_checkpoint(tmp_path / "ok.safetensors", clip=clip)
    with safe_open(str(path), framework="pt") as handle:
        config = json.loads(handle.metadata()["cir_demo"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    for bad, message in [([5, 5, 7], "distinct"), (["a"], "integer"), ([0, 1], "within"),
                         (clip.vocabulary[:-1], "rows")]:
        config["clip"]["vocabulary"] = bad
        broken = tmp_path / "broken.safetensors"
        save_file(tensors, str(broken), metadata={"cir_demo": json.dumps(config)})
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(broken)
