"""Loaders, caption rules and validator on hand-written miniatures of the real FashionIQ / CIRR files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cir_demo.data.datasets import (
    FASHIONIQ_CATEGORIES,
    CIRDataset,
    DatasetError,
    UnknownImageError,
    detect_layout,
    load_cirr,
    load_fashioniq,
    open_dataset,
)
from cir_demo.data.records import Triplet, fashioniq_caption_variants, fashioniq_val_caption, query_captions
from cir_demo.data.validate import validate_layout


def _image(path: Path, colour=(200, 30, 40), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (8, 10), colour)
    img = img.convert(mode) if mode != "RGB" else img
    img.save(path)


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")


def make_fashioniq(root: Path) -> Path:
    """All three categories; dress is spelled out, the others follow one pattern."""
    for cat in FASHIONIQ_CATEGORIES:
        p = cat[0].upper()
        names = [f"{p}00{i}" for i in range(1, 7)]
        for i, name in enumerate(names):
            _image(root / "images" / f"{name}.jpg", colour=(40 * i, 100, 150))
        splits = {"train": names[:3], "val": names[3:5], "test": names[4:6]}
        for split, members in splits.items():
            _json(root / "image_splits" / f"split.{cat}.{split}.json", members)
        _json(root / "captions" / f"cap.{cat}.train.json", [
            {"target": names[1], "candidate": names[0], "captions": ["Is darker.", "has orange lettering?"]},
            {"target": names[2], "candidate": names[1], "captions": ["is shorter ", "is red, with stripes"]}])
        _json(root / "captions" / f"cap.{cat}.val.json", [
            {"target": names[4], "candidate": names[3], "captions": ["has long sleeves", "is more colorful."]}])
        _json(root / "captions" / f"cap.{cat}.test.json", [
            {"candidate": names[5], "captions": ["is black", "is a solid color"]}])
    return root


CIRR_SPLITS = {"train": "./train/0/", "val": "./dev/", "test1": "./test1/"}


def make_cirr(root: Path) -> Path:
    """Six-image sets per split, with CIRR's names, folders and keys."""
    pair_id = 100
    for split, folder in CIRR_SPLITS.items():
        prefix = "dev" if split == "val" else split
        names = [f"{prefix}-7-{k}-img{k % 2}" for k in range(6)]
        for name in names:
            _image(root / folder / f"{name}.png", colour=(20, 200, 90))
        _json(root / "cirr" / "image_splits" / f"split.rc2.{split}.json", {n: f"{folder}{n}.png" for n in names})
        entry = {"pairid": pair_id, "reference": names[0], "caption": "Add a red cube and remove the ball.",
                 "img_set": {"id": 7, "members": names, "reference_rank": 0}}
        if split != "test1":
            entry.update(target_hard=names[2], target_soft={names[2]: 1.0})
            entry["img_set"]["target_rank"] = 2
        _json(root / "cirr" / "captions" / f"cap.rc2.{split}.json", [entry])
        pair_id += 1
    return root


@pytest.fixture
def fiq(tmp_path) -> Path:
    return make_fashioniq(tmp_path / "fashioniq")


@pytest.fixture
def cirr(tmp_path) -> Path:
    return make_cirr(tmp_path / "cirr_dataset")


# ---- caption rules ----------------------------------------------------------------------------------

def test_caption_variants_exact_strings():
    assert fashioniq_caption_variants(["Is darker.", "has orange lettering?"]) == [
        "Is darker and has orange lettering", "Has orange lettering and Is darker", "Is darker", "Has orange lettering"]
    # str.capitalize() as in the authors' code: the leading caption's rest is lower-cased,
    # the trailing caption is kept verbatim; strip('.?, ') removes commas and spaces too.
    assert fashioniq_caption_variants([" is NYC style,", ", has Long sleeves. "]) == [
        "Is nyc style and has Long sleeves", "Has long sleeves and is NYC style", "Is nyc style", "Has long sleeves"]
    assert fashioniq_val_caption(["is shorter ", "is red, with stripes"]) == "Is shorter and is red, with stripes"
    with pytest.raises(ValueError):
        fashioniq_caption_variants(["only one"])


def test_query_captions_by_dataset_and_mode():
    fiq = Triplet("fashioniq", "train", "a", "b", ("is blue", "has dots"), category="dress")
    assert query_captions(fiq, train=True) == ["Is blue and has dots", "Has dots and is blue", "Is blue", "Has dots"]
    assert query_captions(fiq, train=False) == ["Is blue and has dots"]
    cirr = Triplet("cirr", "val", "a", "b", ("make the background blue",), pair_id=3, group=("a", "b"))
    assert query_captions(cirr, train=True) == ["make the background blue"]


# ---- FashionIQ ---------------------------------------------------------------------------------------

def test_fashioniq_train_records(fiq):
    ds = load_fashioniq(fiq, "dress", "train")
    assert isinstance(ds, CIRDataset) and (ds.dataset, ds.split, ds.category) == ("fashioniq", "train", "dress")
    assert ds.triplets == [
        Triplet("fashioniq", "train", "D001", "D002", ("Is darker.", "has orange lettering?"), category="dress"),
        Triplet("fashioniq", "train", "D002", "D003", ("is shorter ", "is red, with stripes"), category="dress")]
    assert ds.image_names == ["D001", "D002", "D003"]
    assert ds.image_path("D002") == fiq / "images" / "D002.jpg"
    assert len(ds) == 2


def test_fashioniq_val_and_test(fiq):
    val = load_fashioniq(fiq, "shirt", "val")
    assert [(t.reference, t.target, t.category) for t in val.triplets] == [("S004", "S005", "shirt")]
    assert query_captions(val.triplets[0], train=False) == ["Has long sleeves and is more colorful"]
    test = load_fashioniq(fiq, "toptee", "test")
    assert test.triplets[0].target is None and test.triplets[0].reference == "T006"


def test_fashioniq_images_png_fallback_rgb_and_unknown(fiq):
    (fiq / "images" / "D003.jpg").unlink()
    _image(fiq / "images" / "D003.png", mode="P")  # palette PNG: must come back RGB
    ds = load_fashioniq(fiq, "dress", "train")
    assert ds.image_path("D003") == fiq / "images" / "D003.png"
    img = ds.open_image("D003")
    assert img.mode == "RGB" and img.size == (8, 10)
    with pytest.raises(UnknownImageError) as err:
        ds.image_path("D004")  # exists on disk but belongs to val
    assert isinstance(err.value, KeyError) and isinstance(err.value, DatasetError)
    assert str(err.value).startswith("'D004' is not an image of CIRDataset(fashioniq/dress, train")


def test_absolute_captions_side_file(fiq):
    assert load_fashioniq(fiq, "dress", "val").absolute_captions() == {}
    _json(fiq / "absolute_captions.json", {"D004": "a red dress", "D001": "a blue dress", "S001": "a shirt"})
    assert load_fashioniq(fiq, "dress", "val").absolute_captions() == {"D004": "a red dress"}


def test_open_dataset_detects_layout(fiq, cirr, tmp_path):
    assert detect_layout(fiq) == "fashioniq" and detect_layout(cirr) == "cirr"
    assert open_dataset(fiq, "val", "dress").triplets == load_fashioniq(fiq, "dress", "val").triplets
    assert open_dataset(cirr, "val").triplets == load_cirr(cirr, "val").triplets
    with pytest.raises(ValueError, match="give a category"):
        open_dataset(fiq, "val")
    with pytest.raises(DatasetError, match="neither a FashionIQ folder"):
        open_dataset(tmp_path / "empty", "val")
    with pytest.raises(ValueError, match="unknown FashionIQ category 'shoes'"):
        load_fashioniq(fiq, "shoes", "val")


# ---- CIRR --------------------------------------------------------------------------------------------

def test_cirr_records(cirr):
    train = load_cirr(cirr, "train")
    names = tuple(f"train-7-{k}-img{k % 2}" for k in range(6))
    assert train.triplets == [Triplet("cirr", "train", names[0], names[2], ("Add a red cube and remove the ball.",),
                                      pair_id=100, group=names)]
    assert train.image_names == list(names)
    assert train.image_path(names[1]) == cirr / "train" / "0" / f"{names[1]}.png"
    val = load_cirr(cirr, "val")
    assert val.triplets[0].group[2] == val.triplets[0].target == "dev-7-2-img0"
    assert val.image_path("dev-7-5-img1") == cirr / "dev" / "dev-7-5-img1.png"
    test1 = load_cirr(cirr, "test1")
    assert (test1.triplets[0].target, test1.triplets[0].pair_id) == (None, 102)
    assert len(test1.triplets[0].group) == 6
    assert query_captions(test1.triplets[0], train=False) == ["Add a red cube and remove the ball."]


# ---- bad data ----------------------------------------------------------------------------------------

def test_missing_image_names_the_file(fiq, cirr):
    (fiq / "images" / "D002.jpg").unlink()
    with pytest.raises(DatasetError) as err:
        load_fashioniq(fiq, "dress", "train")
    assert str(err.value) == (f"{fiq / 'images' / 'D002.jpg'}: image file not found "
                              f"(entry 1 of {fiq / 'image_splits' / 'split.dress.train.json'})")
    (cirr / "dev" / "dev-7-3-img1.png").unlink()
    with pytest.raises(DatasetError, match="dev-7-3-img1.png: image file not found"):
        load_cirr(cirr, "val")


def test_malformed_json_names_file_and_position(fiq):
    path = fiq / "captions" / "cap.dress.train.json"
    path.write_text('[\n  {"target": "D002",\n   "candidate": "D001"\n   "captions": ["a", "b"]}\n]\n')
    with pytest.raises(DatasetError) as err:
        load_fashioniq(fiq, "dress", "train")
    assert str(err.value) == f"{path}: malformed JSON at line 4, column 4 (char 49): Expecting ',' delimiter"


def test_truncated_json_names_file_and_position(cirr):
    path = cirr / "cirr" / "image_splits" / "split.rc2.val.json"
    text = path.read_text()
    path.write_text(text[:text.index('"dev-7-2')])  # cut mid-object, as an interrupted download would
    with pytest.raises(DatasetError) as err:
        load_cirr(cirr, "val")
    assert str(err.value) == (f"{path}: malformed JSON at line 4, column 3 (char 92): "
                              "Expecting property name enclosed in double quotes")


def test_caption_naming_image_outside_split(fiq, cirr):
    path = fiq / "captions" / "cap.dress.train.json"
    entries = json.loads(path.read_text())
    entries[1]["target"] = "D005"  # a real image, but of another split
    _json(path, entries)
    with pytest.raises(DatasetError) as err:
        load_fashioniq(fiq, "dress", "train")
    split_file = fiq / "image_splits" / "split.dress.train.json"
    assert str(err.value) == f"{path}: entry 1: target image 'D005' is not in the split file {split_file}"
    cap = cirr / "cirr" / "captions" / "cap.rc2.train.json"
    entries = json.loads(cap.read_text())
    entries[0]["img_set"]["members"][5] = "dev-7-5-img1"
    _json(cap, entries)
    with pytest.raises(DatasetError, match=r"cap.rc2.train.json: entry 0: img_set member image 'dev-7-5-img1'"):
        load_cirr(cirr, "train")


def test_missing_key_and_duplicate_pairid(fiq, cirr):
    path = fiq / "captions" / "cap.dress.val.json"
    _json(path, [{"target": "D005", "candidate": "D004"}])
    with pytest.raises(DatasetError) as err:
        load_fashioniq(fiq, "dress", "val")
    assert str(err.value) == f"{path}: entry 0 lacks the key 'captions'"
    cap = cirr / "cirr" / "captions" / "cap.rc2.val.json"
    entries = json.loads(cap.read_text())
    _json(cap, entries + [dict(entries[0], caption="make it blue")])
    with pytest.raises(DatasetError, match=r"cap.rc2.val.json: entry 1: pairid 101 repeats entry 0"):
        load_cirr(cirr, "val")
    missing = json.loads(cap.read_text())[:1]
    del missing[0]["target_hard"]
    _json(cap, missing)
    with pytest.raises(DatasetError, match=r"cap.rc2.val.json: entry 0 lacks the key 'target_hard'"):
        load_cirr(cirr, "val")


def test_non_utf8_and_missing_file(fiq):
    path = fiq / "image_splits" / "split.dress.val.json"
    path.write_bytes(b'["D004", "\xff"]')
    with pytest.raises(DatasetError, match=r"split.dress.val.json: not UTF-8 text \(byte 10\)"):
        load_fashioniq(fiq, "dress", "val")
    path.unlink()
    with pytest.raises(DatasetError, match=r"split.dress.val.json: file not found"):
        load_fashioniq(fiq, "dress", "val")


# ---- validator ---------------------------------------------------------------------------------------

def test_validator_accepts_good_layouts(fiq, cirr):
    assert validate_layout(fiq) == []
    assert validate_layout(cirr) == []


def test_validator_lists_every_problem(fiq, cirr):
    (fiq / "images" / "S002.jpg").unlink()
    _json(fiq / "captions" / "cap.toptee.val.json", [{"target": "T005", "candidate": "T004", "captions": ["ok", " ."]}])
    problems = validate_layout(fiq)
    split_file, cap_file = fiq / "image_splits" / "split.shirt.train.json", fiq / "captions" / "cap.toptee.val.json"
    assert problems == [f"{split_file}: entry 1: image file {fiq / 'images' / 'S002'}.jpg not found",
                        f"{cap_file}: entry 0: 'captions' should be 2 non-empty strings, got ['ok', ' .']"]
    cap = cirr / "cirr" / "captions" / "cap.rc2.val.json"
    entry = json.loads(cap.read_text())[0]
    entry["img_set"]["members"] = entry["img_set"]["members"][:5]
    _json(cap, [entry, dict(entry, pairid=100, caption="")])  # 100 is train's pairid
    problems = validate_layout(cirr)
    assert any(p.startswith(f"{cap}: entry 0: img_set should have 6 distinct members") for p in problems)
    assert f"{cap}: entry 1: empty caption" in problems
    assert f"{cap}: entry 1: pairid 100 already used in cap.rc2.train.json entry 0" in problems
    assert len(problems) == 4  # two 5-member sets, one empty caption, one reused pairid


def test_validator_on_unknown_folder(tmp_path):
    assert validate_layout(tmp_path) == [
        f"{tmp_path}: no FashionIQ (captions/, image_splits/) or CIRR (cirr/captions/) layout found"]
