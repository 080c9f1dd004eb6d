"""Per-session query state (kept in ``gr.State``): the gallery, the refinement chain, the picker page.

Plain dicts so Gradio can hold them per session; every function returns a new state and never
mutates the one it was given (a state may be shared by concurrent events of one session).
A chain step is ``{"name": image name}`` for a gallery image or ``{"upload": features (1, D),
"label": "your upload"}`` for an uploaded photo (its features only: the image itself is not kept).
"""

from __future__ import annotations

from typing import Optional

MAX_CHAIN = 20  # breadcrumbs kept; older steps are dropped


def new_state(gallery: str) -> dict:
    return {"gallery": gallery, "chain": [], "page": 1}


def current(state: dict) -> Optional[dict]:
    """The current reference step, or None before one is chosen."""
    return state["chain"][-1] if state.get("chain") else None


def reference_name(state: dict) -> Optional[str]:
    step = current(state)
    return step.get("name") if step else None


def push(state: dict, step: dict) -> dict:
    """A state whose reference is ``step`` (repeating the current reference adds no breadcrumb)."""
    chain = list(state.get("chain", []))
    if chain and "name" in step and chain[-1].get("name") == step["name"]:
        return {**state, "chain": chain}
    return {**state, "chain": (chain + [step])[-MAX_CHAIN:]}


def back(state: dict) -> dict:
    """The previous reference (the first one stays)."""
    chain = list(state.get("chain", []))
    return {**state, "chain": chain[:-1] if len(chain) > 1 else chain}


def restart(state: dict, gallery: str, step: Optional[dict] = None) -> dict:
    """A fresh chain in ``gallery`` (switching gallery, loading a triplet or a deep link)."""
    return {"gallery": gallery, "chain": [step] if step else [], "page": 1}


def with_page(state: dict, page: int) -> dict:
    return {**state, "page": page}


def crumbs(state: dict) -> str:
    """Markdown breadcrumbs of the refinement chain, the current reference last and bold."""
    labels = [step.get("name") or step.get("label", "upload") for step in state.get("chain", [])]
    if not labels:
        return "*No reference yet: pick one from the gallery, draw a random one, or upload a photo.*"
    shown = [f"`{label}`" for label in labels[:-1]] + [f"**`{labels[-1]}`**"]
    return "Reference: " + " → ".join(shown)
