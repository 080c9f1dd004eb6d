"""A small thread-safe LRU cache for serving (caption features and the like).

Every method takes one lock, so concurrent requests can share a cache. Values handed back are
the ones looked up or computed for that call, never re-read after an eviction, so a tiny cache
under heavy concurrency still answers every key (it only hits less).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, Iterable

_MISSING = object()


class LRUCache:
    """Least-recently-used cache holding at most ``maxsize`` entries (0 keeps nothing)."""

    def __init__(self, maxsize: int):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be a non-negative integer, got {maxsize!r}")
        self.maxsize = maxsize
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def get(self, key: Hashable, default: object = None) -> object:
        """The cached value (now most recently used), or ``default``; counts a hit or a miss."""
        with self._lock:
            value = self._lookup(key)
        return default if value is _MISSING else value

    def put(self, key: Hashable, value: object) -> None:
        """Store ``value`` as the most recently used entry, evicting the oldest past ``maxsize``."""
        with self._lock:
            self._store(key, value)

    def get_or_compute_many(self, keys: Iterable[Hashable], compute_missing: Callable[[list], list]) -> list:
        """Values for ``keys``, in order (duplicates allowed).

        Cached keys are served from the cache; the distinct missing ones are passed, in first-seen
        order, to ONE call of ``compute_missing(missing) -> values`` (same length, same order),
        then cached. The call runs outside the lock: other threads are not blocked meanwhile,
        and two threads missing the same key may both compute it. If it raises, nothing is cached.
        """
        keys = list(keys)
        found: dict = {}
        with self._lock:
            for key in dict.fromkeys(keys):
                value = self._lookup(key)
                if value is not _MISSING:
                    found[key] = value
        missing = [key for key in dict.fromkeys(keys) if key not in found]
        if missing:
            values = list(compute_missing(missing))
            if len(values) != len(missing):
                raise ValueError(f"compute_missing returned {len(values)} values for {len(missing)} keys")
            found.update(zip(missing, values))
            with self._lock:
                for key, value in zip(missing, values):
                    self._store(key, value)
        return [found[key] for key in keys]

    def clear(self) -> None:
        """Drop every entry (the statistics are kept)."""
        with self._lock:
            self._data.clear()

    def stats(self) -> dict:
        """``hits``, ``misses`` (per distinct key looked up), ``evictions``, ``size``, ``maxsize``."""
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "evictions": self._evictions,
                    "size": len(self._data), "maxsize": self.maxsize}

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        """Membership without touching recency or statistics."""
        with self._lock:
            return key in self._data

    def __repr__(self) -> str:
        return f"LRUCache(maxsize={self.maxsize}, size={len(self)})"

    # Callers hold the lock.
    def _lookup(self, key: Hashable) -> object:
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            self._misses += 1
        else:
            self._hits += 1
            self._data.move_to_end(key)
        return value

    def _store(self, key: Hashable, value: object) -> None:
        if self.maxsize == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)
            self._evictions += 1

