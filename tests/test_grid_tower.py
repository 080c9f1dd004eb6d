"""The built-in world's image tower (a conv grid read out per location) and the attribute heads of
pre-training: built through our open_clip path, saved and reloaded, explained per location, and
trained with a loss equal to the per-attribute cross-entropy written out."""

import pytest
import torch
import torch.nn.functional as F

from cir_demo.cli import main
from cir_demo.model import load_checkpoint, load_clip, save_checkpoint
from cir_demo.model.clip import build_model, model_config_for, vision_architecture_json
from cir_demo.model.grid_tower import GridConvTower
from cir_demo.model.spatial import location_map, spatial_features


def test_the_config_puts_the_grid_tower_into_an_open_clip_model():
    torch.manual_seed(0)
    clip = load_clip("cir-tiny-grid")
    assert isinstance(clip.model.visual, GridConvTower) and clip.image_size == 64
    assert clip.model.visual.grid == 4  # 64 px halved by four blocks
    with torch.no_grad():
        out = clip.encode_image(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, clip.feature_dim) and clip.feature_dim == 96
    config = model_config_for("cir-tiny-grid")
    config["conv_tower"]["widths"] = [8, 16, 32, 32]
    assert sum(p.numel() for p in build_model(config).visual.parameters()) < \
        sum(p.numel() for p in clip.model.visual.parameters())
    # the tower's shape is part of what identifies an image tower (a gallery built by one is refused by the other)
    assert vision_architecture_json(config) != vision_architecture_json(model_config_for("cir-tiny-grid"))


@pytest.mark.parametrize("size,widths", [(62, [8, 8]), (64, [8] * 7), (64, []), (64, [8, 0])])
def test_a_tower_that_cannot_halve_to_a_grid_is_refused(size, widths):
    with pytest.raises(ValueError):
        GridConvTower(16, size, widths)


def test_a_grid_tower_is_explained_by_occluding_windows_of_the_image():
    """Written out for a few cells: the drop in cosine with the query when a quarter-side window
    centred on the cell is filled with each row's mean colour."""
    torch.manual_seed(1)
    tower = GridConvTower(12, 32, [4, 6]).eval()
    pixels = torch.randn(1, 3, 32, 32)
    query = F.normalize(torch.randn(12), dim=0)
    heat = location_map(tower, pixels, query)
    assert heat.shape == (8, 8)
    with torch.no_grad():
        base = F.normalize(tower(pixels), dim=-1)[0] @ query
        for row, col in [(0, 0), (3, 5), (7, 7)]:
            hidden = pixels.clone()
            y0, x0 = max(0, 4 * row + 2 - 4), max(0, 4 * col + 2 - 4)  # step 4 px, window 8 px
            y1, x1 = 4 * row + 2 + 4, 4 * col + 2 + 4
            for y in range(y0, min(y1, 32)):
                hidden[0, :, y, x0:x1] = pixels[0, :, y].mean(dim=1)[:, None]
            assert float(heat[row, col]) == pytest.approx(float(base - F.normalize(tower(hidden), dim=-1)[0] @ query),
                                                          abs=1e-5)
    with pytest.raises(TypeError):  # no per-location features to hand out
        spatial_features(tower, pixels)


def test_a_grid_clip_survives_a_checkpoint_in_fp16(tmp_path):
    torch.manual_seed(2)
    clip = load_clip("cir-tiny-grid")
    with torch.no_grad():  # move the batch-norm statistics off their initial values
        clip.model.visual.train()(torch.randn(16, 3, 64, 64) * 2 + 1)
    clip.model.eval()
    save_checkpoint(tmp_path / "grid.safetensors", clip=clip, dtype=torch.float16)
    again = load_checkpoint(tmp_path / "grid.safetensors").clip
    assert isinstance(again.model.visual, GridConvTower)
    pixels = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        a, b = clip.encode_image(pixels), again.encode_image(pixels)
    assert F.cosine_similarity(a, b).min() > 0.999
    assert again.fingerprint() != load_clip("cir-tiny-grid").fingerprint()  # the weights are part of it


def test_attribute_targets_are_the_generators_labels(tiny_training_world):
    from cir_demo.data.synth.attributes import labels, load_attributes
    from cir_demo.train.pretrain import attribute_targets, captioned_images

    roots = [tiny_training_world / "fashioniq", tiny_training_world / "cirr"]
    targets, heads = attribute_targets(roots, "train")
    paths, _ = captioned_images(roots, "train")
    assert targets.shape == (len(paths), len(heads))
    names = [a for a, _ in heads]
    assert {"left shape", "background", "sleeve", "pattern"} <= set(names)
    known = {**load_attributes(roots[0]), **load_attributes(roots[1])}
    truth = [labels(known[p.stem]) for p in paths]  # written out: the labels of each listed image
    for col, (a, n) in enumerate(heads):
        classes = sorted({row[a] for row in truth if row.get(a) is not None})
        assert n == len(classes)
        want = [classes.index(row[a]) if row.get(a) is not None else -1 for row in truth]
        assert targets[:, col].tolist() == want  # -1: another world's attribute, or an empty slot


def test_attribute_loss_is_the_mean_cross_entropy_of_the_heads_that_apply():
    from cir_demo.train.pretrain import attribute_loss

    torch.manual_seed(3)
    classes = [3, 2, 4]
    logits = torch.randn(5, sum(classes))
    targets = torch.tensor([[0, -1, 3], [2, 1, -1], [1, 0, -1], [-1, -1, 0], [0, 1, 2]])

    def head_loss(col, start, n):  # written out: the mean of -log softmax of the true class
        terms = [-logits[r, start:start + n].log_softmax(0)[targets[r, col]] for r in range(5) if targets[r, col] >= 0]
        return float(sum(terms) / len(terms))

    per_head = [head_loss(col, start, n) for col, (start, n) in enumerate(zip([0, 3, 5], classes))]
    assert float(attribute_loss(logits, targets, classes)) == pytest.approx(sum(per_head) / 3, rel=1e-5)
    targets[:, 1] = -1  # a head no row has a label for is left out, not counted as zero
    assert float(attribute_loss(logits, targets, classes)) == pytest.approx((per_head[0] + per_head[2]) / 2, rel=1e-5)


def test_pretraining_adds_the_heads_loss_and_saves_only_the_clip(tiny_training_world, tmp_path):
    import json

    from safetensors import safe_open

    from cir_demo.train.pretrain import PretrainEncoder

    world = tiny_training_world

    def pretrain(out, *extra):
        assert main(["train", "clip-pretrain", "--model", "cir-tiny-grid", "--data", str(world / "fashioniq"),
                     str(world / "cirr"), "--out", str(out), "--batch-size", "32", "--lr", "2e-3", "--no-progress",
                     *extra]) == 0
        return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if r.get("event") == "step"]

    with_heads = pretrain(tmp_path / "heads", "--epochs", "3", "--attribute-loss", "1.0")
    without = pretrain(tmp_path / "plain", "--epochs", "3", "--max-steps", "1")
    # same seed, same first batch: the first loss differs by the heads' cross-entropy, about the mean
    # log of their class counts (2-12 classes) at initialisation
    assert 0.5 < with_heads[0] - without[0] < 3.0
    assert sum(with_heads[-3:]) < sum(with_heads[:3]) - 0.5  # and it trains
    ckpt = load_checkpoint(tmp_path / "heads" / "best.safetensors")
    assert isinstance(ckpt.clip.model.visual, GridConvTower)
    with safe_open(str(tmp_path / "heads" / "best.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("heads" in k for k in keys)
    assert PretrainEncoder(ckpt.clip.model).heads is None  # without heads the encoder is CLIP's own
