"""Deep links and the public URL: a page URL that reopens exactly one retrieval."""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional
from urllib.parse import urlencode

LINK_KEYS = ("gallery", "ref", "q", "k", "composer")


def query_string(gallery: str, reference: Optional[str], caption: str, k: int, composer: str) -> str:
    """``gallery=..&ref=..&q=..`` for a gallery-reference query (uploads have no shareable reference)."""
    params = {"gallery": gallery}
    if reference:
        params["ref"] = reference
    if caption:
        params["q"] = caption
    if k != 50:
        params["k"] = str(k)
    if composer != "combiner":
        params["composer"] = composer
    return urlencode(params)


def parse_link(params: Mapping[str, str]) -> dict:
    """The known keys of a page URL's query, as strings (unknown keys are ignored)."""
    return {key: str(params[key]) for key in LINK_KEYS if key in params and str(params[key]).strip()}


# What a request's own address may look like to be shown and encoded: a client writes the Host
# header, so anything else (markup, a megabyte, odd characters) is not echoed back.
_SAFE_BASE = re.compile(r"https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]{0,200})?")


def public_url(configured: Optional[str] = None, request_base: Optional[str] = None) -> Optional[str]:
    """The URL people should open: ``--public-url`` / config, else the Space's, else the request's
    own address when it is a plain host (else None)."""
    if configured:
        return configured.rstrip("/") + "/"
    host = os.environ.get("SPACE_HOST")  # set by Hugging Face Spaces, e.g. "you-cir-demo.hf.space"
    if host:
        return f"https://{host.strip('/')}/"
    if request_base and _SAFE_BASE.fullmatch(request_base.rstrip("/") or "-"):
        return request_base.rstrip("/") + "/"
    return None
