"""The synthetic world: determinism, official layouts, triplet semantics, captions, CLI and contact sheet."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cir_demo.cli import main as cli_main
from cir_demo.data.datasets import FASHIONIQ_CATEGORIES, load_cirr, load_fashioniq
from cir_demo.data.synth import generate_world, world
from cir_demo.data.synth.captions import absolute_caption as garment_caption
from cir_demo.data.synth.contact import make_contact_sheet
from cir_demo.data.synth.fashion import CANVAS_HEIGHTS, CANVAS_WIDTHS, Garment, Photo, diff_units, shade_rgb
from cir_demo.data.synth.fashion_draw import render_garment
from cir_demo.data.synth.scene_captions import absolute_caption as scene_caption
from cir_demo.data.synth.scenes import Group, Scene, diff_scenes
from cir_demo.data.validate import validate_layout

TINY = world.SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    summary = generate_world(out, seed=0, size="tiny", progress=False)
    return out, summary


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tiny, tmp_path):
    out, _ = tiny
    generate_world(tmp_path, seed=0, size="tiny", progress=False, workers=2)
    first, second = _tree(out), _tree(tmp_path)
    # 3 x 56 garments + 48 scenes + 22 FashionIQ JSON files + 10 CIRR JSON files
    assert len(first) == 168 + 48 + 22 + 10
    assert sorted(first) == sorted(second)
    assert [k for k in first if first[k] != second[k]] == []


def test_other_seed_other_world(tiny, tmp_path):
    out, _ = tiny
    generate_world(tmp_path, seed=1, size="tiny", progress=False)
    first, second = _tree(out), _tree(tmp_path)
    assert sorted(first) == sorted(second)  # same layout and names...
    changed = [k for k in first if first[k] != second[k]]
    assert "fashioniq/captions/cap.dress.train.json" in changed and "cirr/cirr/captions/cap.rc2.val.json" in changed
    assert sum(k.endswith((".jpg", ".png")) for k in changed) > 0.9 * sum(k.endswith((".jpg", ".png")) for k in first)


def test_layout_counts_and_summary(tiny):
    out, summary = tiny
    assert summary["seed"] == 0 and summary["size"] == "tiny" and summary["seconds"] < 20
    names = {p.name for p in (out / "fashioniq" / "captions").iterdir()}
    assert names == {f"cap.{c}.{s}.json" for c in FASHIONIQ_CATEGORIES for s in ("train", "val", "test")}
    assert sorted(p.name for p in (out / "cirr" / "cirr" / "captions").iterdir()) == [
        "cap.rc2.test1.json", "cap.rc2.train.json", "cap.rc2.val.json"]
    for cat in FASHIONIQ_CATEGORIES:
        for split in ("train", "val", "test"):
            ds = load_fashioniq(out / "fashioniq", cat, split)
            assert len(ds.image_names) == 7 * TINY.fashion_clusters[split]
            assert len(ds.triplets) == TINY.fashion_triplets[split]
            assert summary["fashioniq"][cat][split] == {"images": len(ds.image_names), "triplets": len(ds.triplets)}
    for split in ("train", "val", "test1"):
        ds = load_cirr(out / "cirr", split)
        assert len(ds.image_names) == 6 * TINY.scene_sets[split]
        assert len(ds.triplets) == TINY.scene_queries[split]
    assert json.loads((out / "cirr" / "synth.json").read_text())["counts"] == summary["cirr"]


def test_validator_passes(tiny):
    out, _ = tiny
    assert validate_layout(out) == []
    assert validate_layout(out / "fashioniq") == [] and validate_layout(out / "cirr") == []


def test_cirr_files_follow_the_official_keys(tiny):
    out, _ = tiny
    split = json.loads((out / "cirr" / "cirr" / "image_splits" / "split.rc2.train.json").read_text())
    assert all(path == f"./train/0/{name}.png" for name, path in split.items())
    dev = json.loads((out / "cirr" / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    assert all(path == f"./dev/{name}.png" for name, path in dev.items())
    pair_ids = []
    for name in ("train", "val", "test1"):
        for e in json.loads((out / "cirr" / "cirr" / "captions" / f"cap.rc2.{name}.json").read_text()):
            pair_ids.append(e["pairid"])
            members = e["img_set"]["members"]
            assert e["img_set"]["reference_rank"] == members.index(e["reference"])
            if name == "test1":
                assert set(e) == {"pairid", "reference", "caption", "img_set"}
            else:
                assert set(e) == {"pairid", "reference", "target_hard", "target_soft", "caption", "img_set"}
                assert e["target_soft"] == {e["target_hard"]: 1.0}
                assert e["img_set"]["target_rank"] == members.index(e["target_hard"])
    assert sorted(pair_ids) == list(range(len(pair_ids)))
    assert load_cirr(out / "cirr", "test1").triplets[0].target is None


def test_images_sizes_and_targets_differ(tiny):
    out, _ = tiny
    ds = load_fashioniq(out / "fashioniq", "dress", "val")
    sizes = {ds.open_image(n).size for n in ds.image_names}
    assert all(w in CANVAS_WIDTHS and h in CANVAS_HEIGHTS for w, h in sizes)
    assert min(h / w for w, h in sizes) < 1.25 < max(h / w for w, h in sizes)  # targetpad has work to do
    absolute = ds.absolute_captions()
    for t in ds.triplets:
        assert t.reference != t.target and absolute[t.reference] != absolute[t.target]
        assert ds.image_path(t.reference).read_bytes() != ds.image_path(t.target).read_bytes()
    scenes = load_cirr(out / "cirr", "val")
    assert scenes.open_image(scenes.image_names[0]).size == (192, 192)
    assert all(scenes.absolute_captions()[t.reference] != scenes.absolute_captions()[t.target]
               for t in scenes.triplets)


# Words one of a triplet's two captions must contain when that attribute changed.
UNIT_WORDS = {"sleeve": ("sleeve",), "neck": ("neck", "collar"), "fit": ("loose", "fit", "tight", "relaxed", "bagg",
                                                                       "slim"),
              "length": ("length", "longer", "shorter", "mini", "maxi", "crop", "long", "knee", "floor"),
              "shade": ("dark", "light"), "pattern": ("solid", "plain", "pattern", "stripe", "dot", "spotted", "check",
                                                      "plaid", "graphic", "print", "letter", "text", "word", "says", "spot", "floral",
                                                      "star", "heart", "flower", "no "),
              "pcolour": ("color", "white", "black", "red", "yellow", "blue", "orange", "pink", "green"),
              "motif": ("says", "word", "lettering", "star", "heart", "flower")}


def test_fashion_triplets_change_what_the_captions_say():
    plans = world.plan_fashion(0, world.SIZES["small"])
    for cat, splits in plans.items():
        for plan in splits.values():
            by_name = {it.name: it.content for it in plan.items}
            for q in plan.queries:
                a, b = by_name[q.reference], by_name[q.target]
                units = diff_units(a, b)
                assert 1 <= len(units) <= 2
                changed = {f.name for f in dataclasses.fields(Garment) if getattr(a, f.name) != getattr(b, f.name)}
                assert changed <= {"colour", "shade", "pattern", "pcolour", "motif", *units}
                c1, c2 = q.captions
                assert c1 != c2 and c1 == c1.strip().lower() and not c1.endswith(".") and not c2.endswith(".")
                text = f"{c1} | {c2}"
                for unit in units:
                    words = (b.colour,) if unit == "colour" else UNIT_WORDS[unit]
                    assert any(w in text for w in words), (unit, a, b, q.captions)


def test_galleries_hold_the_references_neighbours():
    plan = world.plan_fashion(0, world.SIZES["small"])["shirt"]["val"]
    garments = [it.content for it in plan.items]
    by_name = {it.name: it.content for it in plan.items}
    shared = 0
    for q in plan.queries:
        ref, target = by_name[q.reference], by_name[q.target]
        close = [g for g in garments if g not in (ref, target) and 1 <= len(diff_units(ref, g)) <= 2]
        assert close  # the image alone is ambiguous
        shared += any(g != target and g.colour == target.colour for g in garments)
    assert shared >= 0.9 * len(plan.queries)  # and, nearly always, so is the caption alone


def test_scene_queries_are_one_or_two_changes():
    plans = world.plan_scenes(0, world.SIZES["small"])
    for plan in plans.values():
        by_name = {it.name: it.content for it in plan.items}
        for q in plan.queries:
            assert 1 <= len(diff_scenes(by_name[q.reference], by_name[q.target])) <= 2
            assert len(q.group) == 6 and q.reference in q.group and q.target in q.group
            assert q.captions[0] == q.captions[0].strip().lower()


def test_absolute_captions_exact():
    g = Garment("dress", "red", "dark", "dots", "white", 0, "long", "v-neck", "knee", "fitted")
    assert garment_caption(g) == "a fitted dark red long-sleeved knee-length dress with white dots and a v-neck"
    top = Garment("toptee", "orange", "normal", "lettering", "black", 1, "sleeveless", "collar", "regular", "loose")
    assert garment_caption(top) == "a loose orange sleeveless top with black lettering that says nyc and a collar"
    scene = Scene("grey", (Group("ball", "green", "small", 2), None, Group("cube", "blue", "large", 1)))
    assert scene_caption(scene) == "two small green balls on the left and a large blue cube on the right on a grey background"


def test_cli_functions(tmp_path, capsys):
    argv = ["synth", "--out", str(tmp_path), "--size", "tiny", "--flavour", "scenes", "--no-progress"]
    assert cli_main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cirr"]
    assert f"{tmp_path / 'cirr'}: 48 images, 24 triplets" in capsys.readouterr().out
    assert cli_main(argv) == 2  # refuses to overwrite silently
    assert "already exists" in capsys.readouterr().err
    assert cli_main(argv + ["--overwrite"]) == 0
    with pytest.raises(ValueError, match="unknown size"):
        generate_world(tmp_path / "x", size="huge")


def test_contact_sheet(tiny, tmp_path):
    out, _ = tiny
    path = make_contact_sheet(out, tmp_path / "sheet.png", n=2)
    with Image.open(path) as img:
        assert img.size == (744, 450)
        assert len(img.convert("RGB").getcolors(1 << 20)) > 500  # real pictures, not a blank page


def test_drawing_only_some_splits_gives_the_same_bytes(tiny, tmp_path):
    out, _ = tiny
    assert cli_main(["synth", "--out", str(tmp_path), "--size", "tiny", "--splits", "val", "--no-progress"]) == 0
    for dataset in ("fashioniq", "cirr"):
        full = {p.relative_to(out / dataset): p.read_bytes() for p in (out / dataset).rglob("*") if p.is_file()}
        part = {p.relative_to(tmp_path / dataset): p.read_bytes() for p in (tmp_path / dataset).rglob("*")
                if p.is_file()}
        drawn = [k for k in part if k.suffix in (".jpg", ".png")]
        assert drawn and all(part[k] == full[k] for k in drawn)  # byte-identical to the full world's
        assert all(part[k] == full[k] for k in part if k.suffix == ".json" and k.name != "synth.json")
    val_names = set(json.loads((tmp_path / "fashioniq/image_splits/split.dress.val.json").read_text()))
    drawn_fashion = {p.stem for p in (tmp_path / "fashioniq/images").iterdir()}
    assert val_names <= drawn_fashion and not drawn_fashion & set(
        json.loads((tmp_path / "fashioniq/image_splits/split.dress.train.json").read_text()))
    assert sorted(p.parent.name for p in (tmp_path / "cirr").rglob("*.png")) == ["dev"] * 12


@pytest.mark.parametrize("pattern", ["stripes", "dots", "checks"])
@pytest.mark.parametrize("category", FASHIONIQ_CATEGORIES)
def test_a_patterned_garment_shows_mostly_its_own_colour(pattern, category):
    """The colour a caption names is the one a viewer sees most of. With stripes as wide as the gaps and
    checks whose bands covered two thirds of the cloth, "red with white stripes" looked like "white
    with red stripes", and a linear probe read the garment colour of striped and checked garments
    at 49 % (solid ones 95 %)."""
    length = {"dress": "maxi", "shirt": "long", "toptee": "long"}[category]
    g = Garment(category, "red", "normal", pattern, "white", 0, "long", "round", length, "fitted")
    img = np.asarray(render_garment(g, Photo(160, 200, 0, 1.0, 0.0)), dtype=float)
    h, w, _ = img.shape
    body = img[int(h * 0.45):int(h * 0.7), int(w * 0.42):int(w * 0.58)].reshape(-1, 3)  # the chest, unshaded
    base, ink = np.array(shade_rgb("red", "normal"), dtype=float), np.array(shade_rgb("white", "normal"), dtype=float)
    palette = np.stack([base, ink, (base + ink) / 2])  # checks cross their bands in a half mix
    share = np.bincount(np.linalg.norm(body[:, None] - palette[None], axis=2).argmin(1), minlength=3) / len(body)
    assert share[0] > 0.45 and share[0] > 1.1 * share[1:].max(), share
