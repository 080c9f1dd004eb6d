"""The visitor-edit benchmark: the judge reads attributes as documented, and rankings are judged
on the top hit other than the reference."""

import dataclasses

import torch
from PIL import Image

from cir_demo.cli import main
from cir_demo.data.synth.attributes import load_attributes
from cir_demo.data.synth.fashion import Garment
from cir_demo.data.synth.scenes import Group, Scene
from cir_demo.eval.visitor import judge_rankings, world_edits
from cir_demo.eval.visitor_edits import VisitorEdit, edit_kind, is_hit
from cir_demo.eval.visitor_sheet import THUMB

TEAL = Garment("dress", "teal", "normal", "solid", None, 0, "long", "round", "maxi", "fitted")


def _edit(kind, caption):
    return VisitorEdit("dress", "ref", "tgt", kind, caption)


def test_a_garment_hit_shows_the_change_and_keeps_the_rest():
    red = dataclasses.replace(TEAL, colour="red")
    edit = _edit("colour", "same but in red")
    assert is_hit("fashioniq", edit, TEAL, red, red)
    assert is_hit("fashioniq", edit, TEAL, red, dataclasses.replace(red, neck="v-neck"))      # one other change
    assert not is_hit("fashioniq", edit, TEAL, red, dataclasses.replace(red, neck="v-neck", fit="loose"))
    assert not is_hit("fashioniq", edit, TEAL, red, TEAL)                                     # no change shown
    assert not is_hit("fashioniq", edit, TEAL, red, dataclasses.replace(red, shade="dark"))   # dark red != red


def test_comparatives_accept_any_value_on_the_asked_side():
    knee, mini = dataclasses.replace(TEAL, length="knee"), dataclasses.replace(TEAL, length="mini")
    assert is_hit("fashioniq", _edit("length", "same but shorter"), TEAL, knee, mini)
    assert not is_hit("fashioniq", _edit("length", "same but longer"), knee, TEAL, mini)
    short = dataclasses.replace(TEAL, sleeve="short")
    assert is_hit("fashioniq", _edit("sleeve", "shorter sleeves please"), TEAL, short,
                  dataclasses.replace(TEAL, sleeve="sleeveless"))
    # not comparative: the asked value itself
    assert not is_hit("fashioniq", _edit("sleeve", "i want short sleeves"), TEAL, short,
                      dataclasses.replace(TEAL, sleeve="sleeveless"))


def test_a_scene_hit_shows_the_change_and_keeps_the_rest():
    cube, ball, cone = Group("cube", "red", "small", 1), Group("ball", "blue", "large", 2), Group("cone", "pink", "small", 1)
    ref = Scene("grey", (cube, None, ball))
    removed = Scene("grey", (None, None, ball))
    edit = VisitorEdit("cirr", "r", "t", "remove", "drop the cube")
    assert edit_kind("cirr", ref, removed) == "remove"
    assert is_hit("cirr", edit, ref, removed, removed)
    assert is_hit("cirr", edit, ref, removed, Scene("pink", (None, None, ball)))            # + one change
    assert not is_hit("cirr", edit, ref, removed, Scene("pink", (None, cone, ball)))        # + two changes
    assert not is_hit("cirr", edit, ref, removed, Scene("grey", (None, cube, ball)))        # the cube moved
    added = Scene("grey", (cube, cone, ball))
    add = VisitorEdit("cirr", "r", "t", "add", "also put a pink cone in the middle")
    assert is_hit("cirr", add, ref, added, added)
    assert not is_hit("cirr", add, ref, added, Scene("grey", (cube, Group("cone", "red", "small", 1), ball)))
    more = Scene("grey", (dataclasses.replace(cube, count=3), None, ball))
    count = VisitorEdit("cirr", "r", "t", "count", "i want three cubes")
    assert edit_kind("cirr", ref, more) == "count" and is_hit("cirr", count, ref, more, more)
    assert not is_hit("cirr", count, ref, more, Scene("grey", (dataclasses.replace(cube, count=2), None, ball)))
    pink = Scene("pink", (cube, None, ball))
    assert is_hit("cirr", VisitorEdit("cirr", "r", "t", "background", "same but on pink"), ref, pink, pink)
    assert edit_kind("cirr", ref, Scene("grey", (None, cube, ball))) is None  # a move is not benchmarked


def test_rankings_are_judged_on_the_top_hit_other_than_the_reference(tiny_training_world):
    datasets, attributes, edits = world_edits(tiny_training_world / "cirr", per_kind=10)
    assert edits and all(e.caption and e.kind == edit_kind("cirr", attributes[e.reference], attributes[e.target])
                         for e in edits)
    names = datasets[0].image_names
    row = {n: i for i, n in enumerate(names)}
    # an oracle ranking: the reference first, then the target (which answers by construction)
    order = torch.stack([torch.tensor([row[e.reference], row[e.target]] +
                                      [i for i in range(len(names)) if i not in (row[e.reference], row[e.target])])
                         for e in edits])
    outcomes = judge_rankings("cirr", edits, names, order, attributes)
    assert all(o.hit and o.reference_first and o.hits[0] == o.edit.target for o in outcomes)
    # the target first, then the reference: still a hit, and the reference is not first
    swapped = torch.stack([torch.cat([r[1:2], r[0:1], r[2:]]) for r in order])
    outcomes = judge_rankings("cirr", edits, names, swapped, attributes)
    assert all(o.hit and not o.reference_first for o in outcomes)


def test_the_command_prints_hit_rates(tiny_training_world, tiny_clip_file, capsys, tmp_path):
    assert main(["visitor", "--data", str(tiny_training_world / "fashioniq"), str(tiny_training_world / "cirr"),
                 "--clip", str(tiny_clip_file), "--composer", "sum", "--per-kind", "5", "--no-progress",
                 "--sheet", str(tmp_path / "sheet.png")]) == 0
    out = capsys.readouterr().out
    assert "| fashioniq | **all** |" in out and "| cirr | **all** |" in out
    assert "the reference itself ranks first in" in out
    assert load_attributes(tiny_training_world / "cirr")
    with Image.open(tmp_path / "sheet.png") as sheet:  # the sheet of the same run, both datasets
        assert sheet.width > 4 * THUMB and sheet.height > 2 * (30 + THUMB)


def test_the_sheet_frames_each_hit_by_the_judge(tiny_training_world, tiny_clip_file, tmp_path):
    from PIL import Image

    from cir_demo.eval.visitor import run_visitor
    from cir_demo.eval.visitor_sheet import GOOD, THUMB, make_visitor_sheet
    from cir_demo.model import load_checkpoint, make_composer

    root = tiny_training_world / "cirr"
    report = run_visitor(load_checkpoint(tiny_clip_file).clip, make_composer("sum"), root, per_kind=3)
    path = make_visitor_sheet([report], [root], tmp_path / "sheet.png", per_kind=1)
    kinds = len({o.edit.kind for o in report.outcomes})
    with Image.open(path) as img:
        assert img.height == 30 + kinds * (THUMB + 20)
        colours = {c for _, c in img.convert("RGB").getcolors(1 << 20)}
    attributes = load_attributes(root)
    shown = [next(o for o in report.outcomes if o.edit.kind == k) for k in dict.fromkeys(o.edit.kind
                                                                                       for o in report.outcomes)]
    answers = [is_hit("cirr", o.edit, attributes[o.edit.reference], attributes[o.edit.target], attributes[n])
               for o in shown for n in o.hits]
    assert (GOOD in colours) == any(answers)  # green frames exactly where the judge says so
