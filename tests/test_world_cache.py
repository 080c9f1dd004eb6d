"""A cached world drawn by an older generator is stale, even with the same seed and size."""

import json

from cir_demo.data.synth import WORLD_FORMAT
from cir_demo.serve.deploy import WorldSpec
from cir_demo.serve.prepare import WORLD_RECORD, world_files, world_is_current


def _stamp(root, **meta):
    for dataset in ("fashioniq", "cirr"):
        (root / dataset).mkdir(parents=True, exist_ok=True)
        (root / dataset / "synth.json").write_text(json.dumps({"seed": 0, "size": "default",
                                                               "drawn_splits": ["val"], **meta}))
    (root / WORLD_RECORD).write_text(json.dumps(world_files(root)))  # as ensure_world records it


def test_an_older_generators_world_is_redrawn(tmp_path):
    spec = WorldSpec(seed=0, size="default", splits=("val",))
    _stamp(tmp_path, format=WORLD_FORMAT)
    assert world_is_current(tmp_path, spec) is None
    _stamp(tmp_path, format=WORLD_FORMAT - 1)
    assert "another version of the generator" in world_is_current(tmp_path, spec)
    _stamp(tmp_path)  # a stamp from before formats were compared
    assert world_is_current(tmp_path, spec) is not None


def test_the_generator_writes_its_format(tiny_training_world):
    meta = json.loads((tiny_training_world / "cirr" / "synth.json").read_text())
    assert meta["format"] == WORLD_FORMAT
