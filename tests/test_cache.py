"""The serving LRU cache: LRU order, one batched compute per call, and correct under threads."""

import random
import sys
import threading

import pytest

from cir_demo.serve.cache import LRUCache


def compute(key):
    return f"value-of-{key}"


def test_least_recently_used_goes_first_and_stats_count():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)  # evicts "b"
    assert "b" not in cache and cache.get("b") is None and cache.get("b", "none") == "none"
    assert cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    assert cache.stats() == {"hits": 3, "misses": 2, "evictions": 1, "size": 2, "maxsize": 2}
    cache.clear()
    assert len(cache) == 0 and cache.get("a") is None


def test_get_or_compute_many_computes_only_missing_keys_once_in_order():
    cache = LRUCache(10)
    cache.put("b", compute("b"))
    calls = []

    def compute_missing(keys):
        calls.append(list(keys))
        return [compute(k) for k in keys]

    keys = ["c", "b", "a", "c", "a"]
    assert cache.get_or_compute_many(keys, compute_missing) == [compute(k) for k in keys]
    assert calls == [["c", "a"]]
    assert cache.get_or_compute_many(["a", "b"], compute_missing) == [compute("a"), compute("b")]
    assert calls == [["c", "a"]]  # all cached: no call
    assert cache.stats()["hits"] == 3 and cache.stats()["misses"] == 2


def test_values_survive_eviction_within_one_call():
    cache = LRUCache(1)  # smaller than the request: most values are evicted before being returned
    keys = ["x", "y", "z", "x"]
    assert cache.get_or_compute_many(keys, lambda ks: [compute(k) for k in ks]) == [compute(k) for k in keys]
    assert len(cache) == 1


def test_failed_or_wrong_compute_caches_nothing():
    cache = LRUCache(4)

    def boom(keys):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        cache.get_or_compute_many(["a"], boom)
    with pytest.raises(ValueError, match="2 keys"):
        cache.get_or_compute_many(["a", "b"], lambda ks: ["only one"])
    assert len(cache) == 0


def test_size_zero_keeps_nothing_and_bad_sizes_are_refused():
    cache = LRUCache(0)
    assert cache.get_or_compute_many(["a", "a"], lambda ks: [compute(k) for k in ks]) == [compute("a")] * 2
    assert len(cache) == 0
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="maxsize"):
            LRUCache(bad)


@pytest.mark.parametrize("maxsize", [1, 2])
def test_concurrent_use_never_raises_and_never_mixes_values(maxsize):
    cache, keys = LRUCache(maxsize), [f"caption {i}" for i in range(5)]
    errors, wrong = [], []

    def compute_missing(missing):
        return [compute(k) for k in missing]

    def worker(seed):
        rng = random.Random(seed)
        try:
            for _ in range(300):
                asked = [rng.choice(keys) for _ in range(rng.randint(1, 4))]
                got = cache.get_or_compute_many(asked, compute_missing)
                wrong.extend((k, v) for k, v in zip(asked, got) if v != compute(k))
                if len(got) != len(asked):
                    wrong.append(("length", len(got)))
                single = rng.choice(keys)
                value = cache.get(single)
                if value is not None and value != compute(single):
                    wrong.append((single, value))
                cache.put(single, compute(single))
        except Exception as err:  # noqa: BLE001 - any exception is the failure under test
            errors.append(repr(err))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up if they exist
    try:
        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == [] and wrong == [], (errors[:2], wrong[:2], len(errors))
    stats = cache.stats()
    assert stats["size"] <= maxsize and stats["hits"] + stats["misses"] >= 8 * 300 * 2
