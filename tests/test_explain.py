"""Why a result ranks where it does: per-location features that are the image tower's own, a heat map
that peaks where a constructed pair of images differs, and the word naming the change weighing most."""

import pytest
import torch


from cir_demo.config import WEIGHTS_DIR
from cir_demo.data.synth.scenes import Group, Scene, ScenePhoto
from cir_demo.data.synth.scenes_draw import SS, _placements, render_scene
from cir_demo.index.store import GalleryIndex
from cir_demo.model import load_checkpoint, load_clip
from cir_demo.model.spatial import spatial_features
from cir_demo.serve.engine import Engine
from cir_demo.serve.explain import explain


def test_vit_locations_are_the_towers_own_tokens():
    """The tokens come out of the very pass the tower makes: its class token, normalised and
    projected the same way, is the tower's output."""
    torch.manual_seed(0)
    visual = load_clip("cir-tiny").model.visual.eval()
    pixels = torch.randn(2, 3, 64, 64)
    captured = {}
    handle = visual.transformer.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        local = spatial_features(visual, pixels)  # (2, 8, 8, 96)
        x = captured["x"]
        handle.remove()
        assert torch.allclose(visual.ln_post(x[:, 0]) @ visual.proj, visual(pixels), atol=1e-5)
        assert torch.allclose(local.reshape(2, 64, -1), visual.ln_post(x[:, 1:]) @ visual.proj, atol=1e-5)


def test_resnet_locations_are_the_attention_pools_values():
    """With query and key projections zeroed, the pool attends uniformly: its output is then the mean
    of the value path over the mean token and every location, i.e. of what spatial_features gives."""
    torch.manual_seed(0)
    visual = load_clip("RN50").model.visual.eval()
    pool = visual.attnpool
    for proj in (pool.q_proj, pool.k_proj):
        torch.nn.init.zeros_(proj.weight)
        torch.nn.init.zeros_(proj.bias)
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        local = spatial_features(visual, pixels)[0].reshape(-1, local_dim := pool.c_proj.out_features)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels)))))
        mean_token = x.flatten(2).mean(-1) + pool.positional_embedding[0]  # (1, C)
        first = pool.c_proj(pool.v_proj(mean_token))  # (1, D)
        want = (first + local.sum(0, keepdim=True)) / (local.shape[0] + 1)
        assert local.shape[1] == local_dim and torch.allclose(visual(pixels), want, atol=1e-4)


PHOTO = ScenePhoto(size=192, horizon=0.6, jitter=0)
SLOT = {"left": 0, "middle": 1, "right": 2}


def scene(colour=None, slot=1) -> Scene:
    """A grey room, empty or with one large ball of ``colour`` in ``slot``, as the world draws it."""
    slots = [None, None, None]
    if colour:
        slots[slot] = Group("ball", colour, "large", 1)
    return Scene("grey", tuple(slots))


def ball_centre(slot: int) -> tuple:
    """Where the world's renderer puts the ball of ``scene("red", slot)`` (fractions of the side)."""
    (x, y, r, _, _), = _placements(scene("red", slot), PHOTO)
    side = PHOTO.size * SS
    return x / side, (y - 0.5 * r) / side  # the ball stands on (x, y): its centre is above


@pytest.fixture(scope="module")
def scenes_engine():
    ckpt = load_checkpoint(WEIGHTS_DIR / "cirr.safetensors")
    engine = Engine(ckpt.clip, ckpt.combiner, device="cpu", text_precision="fp32", compose_precision="fp32")
    scenes = {"empty": scene(), **{where: scene("red", slot) for where, slot in SLOT.items()},
              "blue": scene("blue"), "red": scene("red"), "green": scene("green")}
    pictures = {name: render_scene(s, PHOTO) for name, s in scenes.items()}
    features = torch.cat([engine.image_features(p) for p in pictures.values()]).cpu()
    index = GalleryIndex(features=features.half(), names=list(pictures),
                         manifest={"model_fingerprint": ckpt.clip.fingerprint()})
    engine.add_gallery("constructed", index, exclude_reference=False)  # the words test scores the reference
    return engine, pictures


@pytest.mark.parametrize("hit", ["left", "middle", "right"])
def test_the_map_peaks_where_the_pair_differs(scenes_engine, hit):
    engine, pictures = scenes_engine
    at = ball_centre(SLOT[hit])
    # the caption says where: a model that reads position prefers one slot for a bare "add a red ball",
    # and then rightly maps a ball elsewhere as disagreeing with the query
    where = {"left": "on the left", "middle": "in the middle", "right": "on the right"}[hit]
    why = explain(engine, "constructed", reference="empty", caption=f"add a red ball {where}", hit=hit,
                  hit_image=pictures[hit])
    heat = torch.tensor(why.heat)  # (h, w) over the model's 64 px view (the square image is not padded)
    row, col = divmod(int(heat.argmax()), heat.shape[1])
    ball_row, ball_col = at[1] * heat.shape[0] - 0.5, at[0] * heat.shape[1] - 0.5  # the ball's centre, in cells
    assert abs(row - ball_row) <= 1.5 and abs(col - ball_col) <= 1.5, (row, col, ball_row, ball_col)
    assert heat.max() > heat.mean() + 0.02 and why.view.size == (64, 64)


@pytest.mark.parametrize("reference, hit, caption, word", [
    ("blue", "red", "make the ball red", "red"), ("blue", "green", "make the ball green", "green"),
    ("red", "blue", "turn the ball blue", "blue"), ("green", "red", "the ball should be red", "red")])
def test_the_word_naming_the_change_moves_the_score_most(scenes_engine, reference, hit, caption, word):
    engine, pictures = scenes_engine
    why = explain(engine, "constructed", reference=reference, caption=caption, hit=hit, hit_image=pictures[hit])
    assert [w for w, _ in why.words] == caption.split()
    assert max(why.words, key=lambda w: w[1])[0] == word, why.words
    # a word's weight is how much less the hit wins over the reference without it: by hand, from
    # two searches (the reference's own score is its score as a gallery image)
    def margin(text):
        scores = {h.name: h.score for h in engine.search("constructed", reference=reference, caption=text,
                                                          k=8).hits}
        return scores[hit] - scores[reference]

    assert dict(why.words)[word] == pytest.approx(margin(caption) - margin(caption.replace(f" {word}", "")),
                                                  abs=2e-3)
