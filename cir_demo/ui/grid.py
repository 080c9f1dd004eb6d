"""A grid of gallery thumbnails drawn by the browser from a small list (image URL, badge, name).

Why not ``gr.Gallery``: it sends every thumbnail as a file record that the server checks against
each static folder (several ``realpath`` calls per image, about half a search's server time); the
grid sends a few short strings per image and the browser draws them. A tap fires the grid's
``select`` event with the image's index, as a gallery's does. Names and badges are escaped by the
template, so an image name is never markup.
"""

from __future__ import annotations

from urllib.parse import quote

import gradio as gr

TEMPLATE = ('<div class="grid">{{#each value}}<button type="button" class="thumb{{#if target}} target{{/if}}" '
            'data-i="{{@index}}" title="{{name}}"><img src="{{src}}" alt="{{name}}" loading="lazy">'
            '{{#if badge}}<span class="badge">{{badge}}</span>{{/if}}<span class="name">{{name}}</span>'
            '</button>{{/each}}</div>')
TAP_JS = ("element.addEventListener('click', (e) => { const b = e.target.closest('.thumb'); "
          "if (b) { trigger('select', {index: Number(b.dataset.i), value: b.title}); } });")
CSS = """
.grid { display: grid; gap: 6px; grid-template-columns: repeat(auto-fill, minmax(min(var(--thumb, 112px), 30%), 1fr)); }
.thumb { position: relative; padding: 0; border: 1px solid var(--border-color-primary, #ddd); border-radius: 6px;
  overflow: hidden; background: var(--background-fill-secondary, #f4f4f5); cursor: pointer; aspect-ratio: 1;
  min-height: 44px; }
.thumb img { width: 100%; height: 100%; object-fit: cover; display: block; }
.thumb.target { outline: 4px solid #16a34a; outline-offset: -4px; }
.badge { position: absolute; top: 4px; left: 4px; font-size: 11px; line-height: 1.4; padding: 0 5px;
  border-radius: 4px; background: rgba(0, 0, 0, .62); color: #fff; white-space: nowrap; }
.name { display: none; position: absolute; left: 0; right: 0; bottom: 0; font-size: 11px; line-height: 1.3;
  padding: 2px 4px; background: rgba(0, 0, 0, .62); color: #fff; overflow-wrap: anywhere; text-align: left; }
"""


def thumb_grid(elem_id: str, *, min_px: int = 112, visible: bool = True, names: bool = False) -> gr.HTML:
    """An empty grid (``names``: always show the names, e.g. for captions)."""
    css = CSS.replace("var(--thumb, 112px)", f"{min_px}px")
    if names:
        css += "\n.name { display: block; }\n.thumb { aspect-ratio: auto; min-height: 120px; }"
    return gr.HTML([], html_template=TEMPLATE, css_template=css, js_on_load=TAP_JS, elem_id=elem_id,
                   visible=visible, elem_classes="thumb-grid")


def file_url(path) -> str:
    """The page-relative URL Gradio serves a static file at (works under any root path)."""
    return "gradio_api/file=" + quote(str(path))


def item(path, name: str, badge: str = "", target: bool = False) -> dict:
    return {"src": file_url(path), "name": name, "badge": badge, "target": target}
