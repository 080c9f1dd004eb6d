"""The tokenizer a CLIP config names, chosen as open_clip would, but never downloading offline.

``ClipModel.tokenizer`` builds it on first use through :func:`make_tokenizer`.
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, Sequence

import open_clip

from cir_demo.config import CONTEXT_LENGTH, hub_offline
from cir_demo.model.offline import WeightsUnavailableError, unreachable_reason
from cir_demo.model.vocab import TrimmedTokenizer

# SimpleTokenizer memoises the BPE of every word it sees; these bound that memo (see _BpeCache).
BPE_CACHE_SIZE = 10_000
BPE_CACHE_MAX_WORD = 64


def make_tokenizer(model_name: str, model_config: dict, *, cache_dir: Optional[str] = None,
                   vocabulary: Optional[Sequence[int]] = None) -> Callable:
    """The tokenizer ``open_clip.get_tokenizer`` would give, chosen from a config dict.

    Ours, not a call to ``open_clip.get_tokenizer``: that needs a registered model name, while our
    checkpoints rebuild from the config they carry, and it would try downloads offline.

    Follows open_clip 3.3's rules without needing ``model_name`` registered (our checkpoints
    rebuild from a config): ``text_cfg.hf_tokenizer_name`` (or an ``hf-hub:`` name) -> HF
    tokenizer, a SigLIP name -> SigLIP tokenizer, else ``SimpleTokenizer``; ``tokenizer_kwargs``
    and ``context_length`` come from ``text_cfg``. Never downloads when offline: a tokenizer that
    is not available locally raises ``WeightsUnavailableError``. SimpleTokenizer's BPE memo is
    bounded (``BPE_CACHE_SIZE``). ``vocabulary`` wraps it in a :class:`~cir_demo.model.vocab.TrimmedTokenizer`.
    """
    text_cfg = model_config.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", CONTEXT_LENGTH))
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    hf_name = text_cfg.get("hf_tokenizer_name", "")
    if model_name.startswith("hf-hub:") and not hf_name:
        hf_name = model_name[len("hf-hub:"):]  # open_clip's fallback: the repo holds the tokenizer
    if vocabulary is not None and (hf_name or "siglip" in model_name.lower()):
        raise ValueError("a trimmed vocabulary maps open_clip's BPE tokenizer only, not a Hugging Face or SigLIP one")
    if hf_name:
        source = model_name[len("local-dir:"):] if model_name.startswith("local-dir:") else hf_name
        return _hf_tokenizer(source, context_length, text_cfg.get("tokenizer_mode"), kwargs, cache_dir)
    if not model_name.startswith(("hf-hub:", "local-dir:")) and "siglip" in model_name.lower():
        return _siglip_tokenizer(model_name, context_length)
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length, **kwargs)
    tokenizer.cache = _BpeCache(tokenizer.cache, BPE_CACHE_SIZE)
    return tokenizer if vocabulary is None else TrimmedTokenizer(tokenizer, vocabulary)


class _BpeCache(OrderedDict):
    """SimpleTokenizer's word -> BPE memo, bounded: oldest words go first past ``maxsize``.

    Unbounded, it grew by ~300 bytes per distinct word for ever (3,000 unique long captions:
    +91 MB). Words longer than ``BPE_CACHE_MAX_WORD`` are not memoised (rare in real captions,
    costly to keep). The entries it starts with (the special tokens) are pinned: ``bpe()`` only
    treats them as single tokens because it finds them here.
    """

    def __init__(self, pinned: dict, maxsize: int):
        self.pinned, self.maxsize = frozenset(pinned), max(int(maxsize), len(pinned) + 1)
        super().__init__(pinned)

    def __setitem__(self, key, value):
        if key not in self.pinned and len(key) > BPE_CACHE_MAX_WORD:
            return
        super().__setitem__(key, value)
        while len(self) > self.maxsize:
            old, kept = self.popitem(last=False)
            if old in self.pinned:
                super().__setitem__(old, kept)  # back to the young end


def _hf_tokenizer(source: str, context_length: int, mode: Optional[str], kwargs: dict,
                  cache_dir: Optional[str]) -> Callable:
    what = f"the Hugging Face tokenizer {source!r}"
    if not _has_transformers():
        raise WeightsUnavailableError(f"{what} needs the 'transformers' package, which is not installed")
    if not Path(source).is_dir():
        _require_tokenizer_download(what, source, cache_dir)
    from open_clip.tokenizer import HFTokenizer

    try:
        return HFTokenizer(source, context_length=context_length, cache_dir=cache_dir, tokenizer_mode=mode,
                           **kwargs)
    except (OSError, ValueError, ImportError) as err:  # transformers' can't-load/offline/missing-extra errors
        raise WeightsUnavailableError(f"cannot load {what}: {err}") from None


def _has_transformers() -> bool:
    return importlib.util.find_spec("transformers") is not None


def _require_tokenizer_download(what: str, repo_id: str, cache_dir: Optional[str]) -> None:
    """Return if the tokenizer is cached or downloadable now; else raise with what to do."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("tokenizer_config.json", "tokenizer.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir), str):
                return
        except ValueError:  # not a valid repo id
            break
    advice = (f"Cannot load {what}: {{why}}. Run once with network access (it is then cached), or use a "
              f"model whose tokenizer is built in (OpenAI CLIP BPE, e.g. RN50x4 or the bundled models).")
    if hub_offline():
        raise WeightsUnavailableError(advice.format(why="HF_HUB_OFFLINE=1 is set and it is not cached"))
    why = unreachable_reason(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    if why:
        raise WeightsUnavailableError(advice.format(why=why))


def _siglip_tokenizer(model_name: str, context_length: int) -> Callable:
    # open_clip fetches SigLIP vocabularies from Google storage on every build, uncached.
    variant = "gemma" if "siglip2" in model_name.lower() else "mc4" if "i18n" in model_name.lower() else "c4-en"
    from open_clip.tokenizer import SigLipTokenizer

    url = SigLipTokenizer.VOCAB_FILES[variant]
    what = f"the SigLIP tokenizer vocabulary {url}"
    if not _has_transformers():
        raise WeightsUnavailableError(f"{what} needs the 'transformers' package, which is not installed")
    why = "HF_HUB_OFFLINE=1 is set" if hub_offline() else unreachable_reason(url)
    if why:
        raise WeightsUnavailableError(f"cannot download {what}: {why}")
    return SigLipTokenizer(variant, context_length=context_length)
