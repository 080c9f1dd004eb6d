"""What the generator knows about each image: its attributes, written beside the world and read back.

``attributes.json`` at each dataset root maps every image name (all splits) to the content the
generator drew: a garment's fields, or a scene's background and its three slots. Real datasets do
not have it. The world's own attributes are the ground truth for two checks that need no caption
template: the linear probe of image features (:mod:`cir_demo.eval.probe`) and the visitor-edit
benchmark (:mod:`cir_demo.eval.visitor`).

:func:`labels` turns one image's content into the flat ``{attribute: label}`` the probe predicts;
a label of ``None`` means "not applicable" (the shape of an empty slot) and leaves the image out
of that attribute's probe.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Union

from cir_demo.data.synth.fashion import Garment
from cir_demo.data.synth.scenes import Group, Scene

ATTRIBUTES_FILE = "attributes.json"
SLOT_NAMES = ("left", "centre", "right")
GARMENT_LABELS = ("category", "colour", "shade", "pattern", "pcolour", "sleeve", "neck", "length", "fit")
SCENE_LABELS = ("background", "groups") + tuple(
    f"{slot} {what}" for slot in SLOT_NAMES for what in ("occupied", "shape", "colour", "size", "count"))

Content = Union[Garment, Scene]


def record(content: Content) -> dict:
    """The JSON object stored for one image (fields of a Garment, or a Scene with its slots)."""
    if isinstance(content, Garment):
        return {"kind": "garment", **dataclasses.asdict(content)}
    slots = [None if g is None else dataclasses.asdict(g) for g in content.slots]
    return {"kind": "scene", "background": content.background, "slots": slots}


def from_record(data: dict) -> Content:
    """Inverse of :func:`record`; raises ``ValueError`` on anything else."""
    if not isinstance(data, dict) or data.get("kind") not in ("garment", "scene"):
        raise ValueError(f"not an attribute record: {data!r}")
    if data["kind"] == "garment":
        fields = {f.name for f in dataclasses.fields(Garment)}
        return Garment(**{k: v for k, v in data.items() if k in fields})
    slots = tuple(None if g is None else Group(**g) for g in data["slots"])
    return Scene(data["background"], slots)


def load_attributes(root: Union[str, Path]) -> dict:
    """``{image name: Garment | Scene}`` from ``root/attributes.json``; {} when the file is absent
    (a real dataset). ``root`` is a dataset folder (``fashioniq/`` or ``cirr/`` of a world)."""
    from cir_demo.data.datasets import DatasetError, read_json

    path = Path(root) / ATTRIBUTES_FILE
    if not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object {{image name: attributes}}")
    try:
        return {name: from_record(value) for name, value in data.items()}
    except (TypeError, ValueError, KeyError) as err:
        raise DatasetError(f"{path}: malformed attribute record ({err})") from None


def labels(content: Content) -> dict:
    """``{attribute: label}`` for the probe; ``None`` where the attribute does not apply."""
    if isinstance(content, Garment):
        out = {name: getattr(content, name) for name in GARMENT_LABELS}
        out["pcolour"] = content.pcolour or "none"
        return out
    out = {"background": content.background, "groups": str(len(content.groups()))}
    for slot, group in zip(SLOT_NAMES, content.slots):
        out[f"{slot} occupied"] = "yes" if group is not None else "no"
        for what in ("shape", "colour", "size", "count"):
            out[f"{slot} {what}"] = None if group is None else str(getattr(group, what))
    return out
