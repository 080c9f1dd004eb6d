"""An explanation (``cir_demo.serve.explain``) drawn for the page: the hit as the model saw it with
the heat map over it, and the caption's words shaded by how much each moved the score. Made in
memory (a data: URL); every word is escaped."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

SIDE = 256  # pixels of the drawn map


def overlay(view: Image.Image, heat: list) -> Image.Image:
    """``view`` (the model's square input) with ``heat`` (h, w) laid over it in red: the warmer, the
    more that part agrees with the query (scaled from the map's own minimum to its maximum)."""
    grid = np.asarray(heat, dtype=np.float32)
    span = float(grid.max() - grid.min()) or 1.0
    level = (grid - grid.min()) / span  # (h, w) in [0, 1]
    mask = Image.fromarray((level * 255).astype(np.uint8)).resize((SIDE, SIDE), Image.BILINEAR)
    base = view.convert("RGB").resize((SIDE, SIDE), Image.BICUBIC)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255 * 0.6  # (S, S, 1)
    red = np.zeros_like(np.asarray(base, dtype=np.float32))
    red[..., 0], red[..., 1] = 255, 40
    mixed = np.asarray(base, dtype=np.float32) * (1 - alpha) + red * alpha
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))


def why_html(explanation, rank: int) -> str:
    """The panel: heat map, and the words with their effect on this hit's score."""
    buffer = io.BytesIO()
    overlay(explanation.view, explanation.heat).save(buffer, "JPEG", quality=85)
    src = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    top = max((abs(d) for _, d in explanation.words), default=0.0) or 1.0
    chips = []
    for word, delta in explanation.words:
        share = min(abs(delta) / top, 1.0)
        colour = f"rgba(22, 163, 74, {0.15 + 0.6 * share:.2f})" if delta > 0 else f"rgba(220, 38, 38, {0.1 + 0.5 * share:.2f})"
        chips.append(f'<span class="why-word" style="background:{colour}" title="{delta:+.3f}">'
                     f"{html.escape(word)}</span>")
    name = html.escape(explanation.hit)
    words = " ".join(chips) or "<em>(a one-word caption: nothing to compare)</em>"
    return (f'<div class="why-panel"><p><strong>Why #{rank}, {name}</strong> (score {explanation.score:.3f}, '
            f"{explanation.ms:.0f} ms)</p>"
            f'<img src="{src}" alt="where {name} agrees with the query" width="{SIDE}" height="{SIDE}">'
            f"<p>Red: where the image agrees with the query most, on the model's own view of it.</p>"
            f"<p>{words}</p><p>Green words pulled the search towards this image and away from the "
            f"reference, red ones the other way (the search run again without each word).</p></div>")
