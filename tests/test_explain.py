"""Why a result ranks where it does: per-location features that are the image tower's own, a heat map
that peaks where a constructed pair of images differs, and the word naming the change weighing most."""

import pytest
import torch
from PIL import Image, ImageDraw

from cir_demo.config import WEIGHTS_DIR
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


def scene(ball=None, at=(0.5, 0.7)) -> Image.Image:
    """A wall and a floor, with a ball of colour ``ball`` centred at ``at`` (fractions of the side)."""
    image = Image.new("RGB", (192, 192), (200, 205, 215))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 110, 192, 192), fill=(150, 140, 130))
    if ball:
        x, y, r = at[0] * 192, at[1] * 192, 22
        draw.ellipse((x - r, y - r, x + r, y + r), fill=ball)
    return image


@pytest.fixture(scope="module")
def scenes_engine():
    ckpt = load_checkpoint(WEIGHTS_DIR / "cirr.safetensors")
    engine = Engine(ckpt.clip, ckpt.combiner, device="cpu", text_precision="fp32", compose_precision="fp32")
    pictures = {"empty": scene(), "left": scene((200, 30, 30), (0.22, 0.7)), "right": scene((200, 30, 30), (0.78, 0.7)),
                "middle": scene((200, 30, 30), (0.5, 0.72)), "blue": scene((30, 60, 200)), "red": scene((200, 30, 30)),
                "green": scene((30, 170, 40))}
    features = torch.cat([engine.image_features(p) for p in pictures.values()]).cpu()
    index = GalleryIndex(features=features.half(), names=list(pictures),
                         manifest={"model_fingerprint": ckpt.clip.fingerprint()})
    engine.add_gallery("constructed", index)
    return engine, pictures


@pytest.mark.parametrize("hit, at", [("left", (0.22, 0.7)), ("right", (0.78, 0.7)), ("middle", (0.5, 0.72))])
def test_the_map_peaks_where_the_pair_differs(scenes_engine, hit, at):
    engine, pictures = scenes_engine
    why = explain(engine, "constructed", reference="empty", caption="add a red ball", hit=hit,
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
    # a word's weight is the score drop without it: recompute one by hand
    without = caption.replace(f" {word}", "")
    result = engine.search("constructed", reference=reference, caption=without, k=7)
    score_without = next(h.score for h in result.hits if h.name == hit)
    assert dict(why.words)[word] == pytest.approx(why.score - score_without, abs=1e-5)
