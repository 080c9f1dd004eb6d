"""Every check of a caller's input to the serving layer: one rule per concept, used everywhere.

A front end passes what it received; these turn it into a value or a ``QueryError`` whose
message is fit to show a stranger: it says what is allowed and echoes at most a few dozen
characters of what was sent (a megabyte of input never becomes a megabyte of error or log).
"""

from __future__ import annotations

from typing import Container

from cir_demo.config.text import shown
from cir_demo.data.transforms import ImageReadError

MAX_K = 1000
MAX_CAPTION_CHARS = 1000   # CLIP reads 77 tokens; a longer caption is a mistake or an attack
MAX_NAME_CHARS = 512       # no gallery image name is longer; longer input is not looked up


class QueryError(ValueError):
    """A query the engine cannot answer; the message is fit to show a user."""


# What a front end shows as a message (anything else is a bug: logged, answered with an apology).
USER_ERRORS = (QueryError, ImageReadError)


def whole(value, what: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high]. Ints and integral floats (sliders send 5.0) pass; text,
    booleans, fractions and anything out of range are refused."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise QueryError(f"{what} must be a whole number from {low} to {high}, got {shown(value)}")
    return value


def top_k(k) -> int:
    """How many results to return: 1..MAX_K (a gallery smaller than K returns all it has)."""
    return whole(k, "K", 1, MAX_K)


def caption_text(caption, *, needed: bool = True) -> str:
    """The caption stripped; refused when empty (and ``needed``), not text, or too long."""
    if caption is None:
        caption = ""
    if not isinstance(caption, str):
        raise QueryError("the caption must be text")
    caption = caption.strip()
    if not caption and needed:
        raise QueryError("please write how the wanted image differs from the reference")
    if len(caption) > MAX_CAPTION_CHARS:
        raise QueryError(f"the caption is {len(caption):,} characters long; please keep it under "
                         f"{MAX_CAPTION_CHARS:,}")
    return caption


def choice(value, options: Container, what: str, listed) -> str:
    """``value`` if it is one of ``options``; else a QueryError listing ``listed``."""
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or value not in options:
        raise QueryError(f"unknown {what} {shown(value)}; available: {', '.join(listed) or 'none'}")
    return value


def image_name(name, names: Container, gallery: str | None = None) -> str:
    """``name`` if it is an image of ``gallery`` (whose names are ``names``); else a QueryError."""
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or name not in names:
        where = f" in gallery {shown(gallery)}" if gallery is not None else ""
        raise QueryError(f"unknown gallery image name {shown(name)}{where}")
    return name
