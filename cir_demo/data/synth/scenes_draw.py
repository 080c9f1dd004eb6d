"""Procedural drawing of a :class:`~.scenes.Scene`: shaded solids on a floor, soft shadows.

Drawn at twice the output size and box-downsampled for anti-aliasing. Light comes from the
upper left: faces turned that way are lighter, shadows fall to the lower right.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cir_demo.data.synth.scenes import BACKGROUNDS, COLOURS, Scene, ScenePhoto

SS = 2
SLOT_X = (0.2, 0.5, 0.8)
RADIUS = {"small": 0.072, "large": 0.11}  # object radius as a fraction of the image side: a small
# object must still span several 8-px patches of a 64-px model input
# Object placements inside a group, in radii (dx, depth); depth < 0 is further back.
LAYOUTS = {1: [(0.0, 0.0)], 2: [(-0.95, -0.3), (0.95, 0.3)], 3: [(-0.95, -0.55), (0.95, -0.55), (0.0, 0.6)]}


def _mix(rgb, other, t: float) -> tuple:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(rgb, other))


def _light(rgb, t=0.35):
    return _mix(rgb, (255, 255, 255), t)


def _dark(rgb, t=0.35):
    return _mix(rgb, (0, 0, 0), t)


@lru_cache(maxsize=None)  # 6 backgrounds x 9 horizons (rounded to 0.01)
def _backdrop(size: int, background: str, horizon: float) -> Image.Image:
    """Wall (light, darkening towards the horizon) over a floor (darker, lightening towards us)."""
    base = np.array(BACKGROUNDS[background], dtype=float)
    y = np.linspace(0, 1, size)[:, None]
    wall = base * (1.12 - 0.12 * y / horizon)
    floor = base * (0.74 + 0.18 * (y - horizon) / (1 - horizon))
    rows = np.where(y < horizon, wall, floor).clip(0, 255)
    return Image.fromarray(np.broadcast_to(rows[:, None, :], (size, size, 3)).astype(np.uint8))


def _ball(d, x, y, r, rgb):
    cy = y - r
    for k in range(9):  # concentric discs moving towards the highlight
        t = k / 9
        rr = r * (1 - 0.8 * t)
        ox, oy = x - 0.35 * r * t, cy - 0.35 * r * t
        d.ellipse([ox - rr, oy - rr, ox + rr, oy + rr], fill=_mix(_dark(rgb, 0.3), _light(rgb, 0.55), t))


def _cube(d, x, y, r, rgb):
    s, k = 1.55 * r, 0.32 * 1.55 * r
    left, right, top = x - s / 2 - k / 2, x + s / 2 - k / 2, y - s
    d.polygon([(left, top), (right, top), (right + k, top - k), (left + k, top - k)], fill=_light(rgb, 0.35))
    d.polygon([(right, top), (right + k, top - k), (right + k, y - k), (right, y)], fill=_dark(rgb, 0.3))
    d.rectangle([left, top, right, y], fill=rgb)


def _cone(d, x, y, r, rgb):
    apex = (x, y - 2.3 * r)
    d.ellipse([x - r, y - 0.25 * r, x + r, y + 0.25 * r], fill=_dark(rgb, 0.3))
    d.polygon([apex, (x - r, y), (x - 0.2 * r, y + 0.25 * r)], fill=_light(rgb, 0.2))
    d.polygon([apex, (x - 0.2 * r, y + 0.25 * r), (x + 0.45 * r, y + 0.22 * r)], fill=rgb)
    d.polygon([apex, (x + 0.45 * r, y + 0.22 * r), (x + r, y)], fill=_dark(rgb, 0.28))


def _star_points(cx, cy, r):
    angles = np.arange(10) * np.pi / 5 - np.pi / 2
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii)]


def _star(d, x, y, r, rgb):
    cy, rr, depth = y - 1.05 * r, 1.2 * r, 0.22 * r
    d.polygon(_star_points(x + depth, cy + depth * 0.3, rr), fill=_dark(rgb, 0.4))  # extrusion
    pts = _star_points(x, cy, rr)
    d.polygon(pts, fill=rgb)
    # Light facets: the upper-left half of each arm.
    for i in range(0, 10, 2):
        d.polygon([(x, cy), pts[i], pts[i - 1]], fill=_light(rgb, 0.25))


def _cylinder(d, x, y, r, rgb):
    rx, ry, h = 0.8 * r, 0.24 * r, 1.9 * r
    d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=_dark(rgb, 0.3))
    bands = 12
    for i in range(bands):  # vertical bands: lit on the left, shaded on the right
        x0 = x - rx + 2 * rx * i / bands
        x1 = x - rx + 2 * rx * (i + 1) / bands
        d.rectangle([x0, y - h, x1 + 1, y], fill=_mix(_light(rgb, 0.3), _dark(rgb, 0.3), i / (bands - 1)))
    d.chord([x - rx, y - ry, x + rx, y + ry], 0, 180, fill=_dark(rgb, 0.15))
    d.ellipse([x - rx, y - h - ry, x + rx, y - h + ry], fill=_light(rgb, 0.4))


DRAW = {"ball": _ball, "cube": _cube, "cone": _cone, "star": _star, "cylinder": _cylinder}


def _placements(scene: Scene, photo: ScenePhoto) -> list:
    """(ground x, ground y, radius, shape, rgb) for every object, back to front, in pixels."""
    side = photo.size * SS
    rng = np.random.default_rng(photo.jitter)
    floor_y = photo.horizon + (1 - photo.horizon) * 0.55
    objects = []
    for slot, group in scene.groups():
        r = RADIUS[group.size] * side
        for dx, depth in LAYOUTS[group.count]:
            jx, jy = rng.uniform(-0.15, 0.15, size=2) * r
            x = SLOT_X[slot] * side + dx * r + jx
            y = floor_y * side + depth * r * 0.6 + jy
            objects.append((x, y, r, group.shape, COLOURS[group.colour]))
    return sorted(objects, key=lambda o: o[1])


def render_scene(scene: Scene, photo: ScenePhoto) -> Image.Image:
    """The RGB image (``photo.size`` squared) of ``scene``."""
    side = photo.size * SS
    canvas = _backdrop(side, scene.background, photo.horizon).copy()
    objects = _placements(scene, photo)
    shadow = Image.new("L", (side, side), 0)
    sd = ImageDraw.Draw(shadow)
    for x, y, r, _, _ in objects:  # cast to the lower right of the object's foot
        sd.ellipse([x - 0.9 * r, y - 0.3 * r, x + 1.6 * r, y + 0.35 * r], fill=110)
    # Blurred at quarter resolution: a full-size blur would cost more than all the drawing.
    shadow = shadow.reduce(4).filter(ImageFilter.GaussianBlur(side * 0.003)).resize((side, side))
    canvas.paste((20, 20, 24), (0, 0), shadow)
    d = ImageDraw.Draw(canvas)
    for x, y, r, shape, rgb in objects:
        DRAW[shape](d, x, y, r, rgb)
    return canvas.reduce(SS)
