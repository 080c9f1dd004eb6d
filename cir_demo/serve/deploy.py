"""Deployment configs: a small TOML file naming what an app instance serves, validated before loading.

::

    title = "Composed image retrieval"
    public_url = "https://example.org/cir"       # optional: what the QR code encodes
    cache_dir = "/var/cache/cir"                  # optional: default $CIR_DEMO_CACHE or ~/.cache/cir_demo/app

    [world]                                       # optional: the built-in synthetic world, made if missing/stale
    seed = 0
    size = "default"
    splits = ["val"]

    [[bundles]]                                   # one model (CLIP + Combiner) and the galleries it serves
    name = "fashioniq"
    clip = "{project}/weights/fashioniq.safetensors"   # our checkpoint | official .pt | open_clip tag | hf://owner/repo/file
    clip_model = "RN50x4"                         # open_clip name, for tags, official and plain files
    combiner = "{project}/weights/fashioniq.safetensors"   # optional; same kinds of source (no tags)
    preprocess = "targetpad"                      # optional

    [[bundles.galleries]]
    name = "dress"
    data = "{world}/fashioniq"                    # a FashionIQ or CIRR folder
    split = "val"
    category = "dress"                            # FashionIQ only
    index = "{cache}/indexes/fashioniq-dress"     # optional (this is the default); built when missing or stale

    [[bundles.galleries]]
    name = "catalogue"
    images = "~/Pictures/catalogue"               # any folder of images instead of data/split: no triplets;
                                                  # indexed on first use, then only new or changed files
    milvus = "http://milvus.internal:19530"       # optional: its features in Milvus (a file path: Milvus Lite)
    collection = "catalogue"                      # optional (default: the gallery's name)

Paths may use ``{project}`` (the source checkout), ``{cache}`` (the cache folder), ``{world}`` (the
generated world) and ``{config}`` (the config file's folder); relative paths are taken from the
config file's folder. Every error names the key (``bundles[0].galleries[1].split``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cir_demo.config import PACKAGE_DIR, PREPROCESS_MODES, PROJECT_DIR

BUILTIN_CONFIG = PACKAGE_DIR / "serve" / "configs" / "builtin.toml"
CONFIG_ENV = "CIR_DEMO_CONFIG"
CACHE_ENV = "CIR_DEMO_CACHE"
SPLITS = ("train", "val", "test", "test1")
WORLD_SIZES = ("tiny", "small", "default")
HUB_PREFIX = "hf://"


class ConfigError(ValueError):
    """A deployment config that cannot be served; the message names the key."""


@dataclass(frozen=True)
class GallerySpec:
    name: str
    data: Optional[str] = None       # a FashionIQ or CIRR folder ...
    images: Optional[str] = None     # ... or any folder of images (no triplets)
    milvus: Optional[str] = None     # the folder's features in Milvus instead of in process: a server URI or a local file
    collection: Optional[str] = None
    split: str = "val"
    category: Optional[str] = None
    index: Optional[str] = None
    label: Optional[str] = None


@dataclass(frozen=True)
class BundleSpec:
    name: str
    clip: str
    clip_model: Optional[str] = None
    combiner: Optional[str] = None
    preprocess: Optional[str] = None
    galleries: tuple[GallerySpec, ...] = ()


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    size: str = "default"
    splits: tuple[str, ...] = ("val",)


@dataclass(frozen=True)
class Deployment:
    """A validated config with every path placeholder resolved."""
    title: str
    public_url: Optional[str]
    cache_dir: Path
    world: Optional[WorldSpec]
    bundles: tuple[BundleSpec, ...]
    source: str = "<dict>"
    world_dir: Optional[Path] = field(default=None)

    def gallery_names(self) -> list[str]:
        return [g.name for b in self.bundles for g in b.galleries]

    def with_folder(self, folder: str, bundle: Optional[str] = None, name: Optional[str] = None) -> "Deployment":
        """This deployment with a gallery of ``folder``'s images served first, by ``bundle`` (default:
        the first one); its index lives in the cache, keyed by the folder's path."""
        import hashlib
        import re

        path = Path(os.path.expanduser(folder)).resolve()
        if not path.is_dir():
            raise ConfigError(f"--images {folder}: not a folder")
        names = [b.name for b in self.bundles]
        bundle = bundle or names[0]
        if bundle not in names:
            raise ConfigError(f"--bundle {bundle!r}: not a bundle of {self.source} (its bundles: {', '.join(names)})")
        name = name or (re.sub(r"[^A-Za-z0-9_-]+", "-", path.name).strip("-") or "images")
        while name in self.gallery_names():
            name += "-images"
        key = hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
        spec = GallerySpec(name=name, images=str(path), index=str(self.cache_dir / "indexes" / f"{bundle}-folder-{key}"))
        bundles = tuple(BundleSpec(**{**b.__dict__, "galleries": (spec, *b.galleries) if b.name == bundle
                                      else b.galleries}) for b in self.bundles)
        bundles = tuple(sorted(bundles, key=lambda b: b.name != bundle))  # its bundle first: the page opens on it
        return Deployment(**{**self.__dict__, "bundles": bundles})


# ---- reading and validating ------------------------------------------------------------------
def read_config(path: Optional[os.PathLike | str] = None) -> Deployment:
    """Read and validate a config file (default: ``$CIR_DEMO_CONFIG``, else the built-in one)."""
    path = Path(path or os.environ.get(CONFIG_ENV) or BUILTIN_CONFIG)
    if not path.is_file():
        raise ConfigError(f"deployment config not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return parse_config(data, base=path.parent, source=str(path))


def parse_config(data: Any, *, base: os.PathLike | str = ".", source: str = "<dict>") -> Deployment:
    """Validate a config mapping (as read from TOML) and resolve its paths against ``base``."""
    top = _table(data, source)
    _keys(top, source, required=("bundles",), optional=("title", "public_url", "cache_dir", "world"))
    cache = Path(os.path.expanduser(_str(top, "cache_dir", source, default="") or
                                    os.environ.get(CACHE_ENV) or "~/.cache/cir_demo/app"))
    if not cache.is_absolute():  # like every other relative path: from the config file's folder
        cache = Path(base) / cache
    world = _world(top.get("world"), f"{source}: world") if "world" in top else None
    world_dir = cache / "world" if world else None
    paths = {"project": str(PROJECT_DIR), "cache": str(cache), "config": str(Path(base)),
             "world": str(world_dir) if world_dir else None}
    bundles = top["bundles"]
    if not isinstance(bundles, list) or not bundles:
        raise ConfigError(f"{source}: bundles must be a non-empty list of [[bundles]] tables")
    specs = tuple(_bundle(b, f"{source}: bundles[{i}]", paths, Path(base)) for i, b in enumerate(bundles))
    _unique([b.name for b in specs], f"{source}: bundles[].name")
    _unique([g.name for b in specs for g in b.galleries], f"{source}: bundles[].galleries[].name")
    public_url = _str(top, "public_url", source, default="") or None
    return Deployment(title=_str(top, "title", source, default="Composed image retrieval"), public_url=public_url,
                      cache_dir=cache, world=world, bundles=specs, source=source, world_dir=world_dir)


def _world(value: Any, where: str) -> WorldSpec:
    table = _table(value, where)
    _keys(table, where, optional=("seed", "size", "splits"))
    seed = table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{where}.seed must be an integer, got {seed!r}")
    size = _choice(table, "size", where, WORLD_SIZES, default="default")
    splits = table.get("splits", ["val"])
    if not isinstance(splits, list) or not splits or any(s not in SPLITS for s in splits):
        raise ConfigError(f"{where}.splits must be a non-empty list of {', '.join(SPLITS)}, got {splits!r}")
    return WorldSpec(seed=seed, size=size, splits=tuple(splits))


def _bundle(value: Any, where: str, paths: dict, base: Path) -> BundleSpec:
    table = _table(value, where)
    _keys(table, where, required=("name", "clip", "galleries"),
          optional=("clip_model", "combiner", "preprocess"))
    galleries = table["galleries"]
    if not isinstance(galleries, list) or not galleries:
        raise ConfigError(f"{where}.galleries must be a non-empty list of [[bundles.galleries]] tables")
    name = _name(table, where)
    specs = tuple(_gallery(g, f"{where}.galleries[{i}]", paths, base, name) for i, g in enumerate(galleries))
    combiner = _str(table, "combiner", where, default="") or None
    return BundleSpec(name=name, clip=_source(_str(table, "clip", where), paths, base),
                      clip_model=_str(table, "clip_model", where, default="") or None,
                      combiner=_source(combiner, paths, base) if combiner else None,
                      preprocess=_choice(table, "preprocess", where, PREPROCESS_MODES, default=None),
                      galleries=specs)


def _gallery(value: Any, where: str, paths: dict, base: Path, bundle: str) -> GallerySpec:
    table = _table(value, where)
    _keys(table, where, required=("name",),
          optional=("data", "images", "split", "category", "index", "label", "milvus", "collection"))
    if ("data" in table) == ("images" in table):
        raise ConfigError(f"{where} needs exactly one of data (a FashionIQ or CIRR folder) or images (any folder)")
    if "milvus" in table and "images" not in table:
        raise ConfigError(f"{where}.milvus serves a folder of images: give images too (where the files are)")
    milvus = _str(table, "milvus", where, default="") or None
    if milvus and "://" not in milvus:  # a local file: Milvus Lite
        milvus = _path(milvus, paths, base, f"{where}.milvus")
    name = _name(table, where)
    index = _str(table, "index", where, default="") or f"{{cache}}/indexes/{bundle}-{name}"
    folder = {key: _path(_str(table, key, where), paths, base, f"{where}.{key}") for key in ("data", "images")
              if key in table}
    return GallerySpec(name=name, **folder, milvus=milvus,
                       collection=(_str(table, "collection", where, default="") or name) if milvus else None,
                       split=_choice(table, "split", where, SPLITS, default="val"),
                       category=_str(table, "category", where, default="") or None,
                       index=_path(index, paths, base, f"{where}.index"),
                       label=_str(table, "label", where, default="") or None)


# ---- small validators -------------------------------------------------------------------------
def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
    return value


def _keys(table: dict, where: str, *, required: tuple = (), optional: tuple = ()) -> None:
    for key in required:
        if key not in table:
            raise ConfigError(f"{where}.{key} is required")
    unknown = sorted(set(table) - set(required) - set(optional))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not a known key (known: {', '.join(required + optional)})")


_REQUIRED = object()


def _str(table: dict, key: str, where: str, default: Any = _REQUIRED) -> Any:
    if key not in table:
        if default is _REQUIRED:
            raise ConfigError(f"{where}.{key} is required")
        return default
    value = table[key]
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string, got {value!r}")
    return value


def _choice(table: dict, key: str, where: str, options: tuple, default: Optional[str]) -> Optional[str]:
    value = table.get(key, default)
    if value is not None and value not in options:
        raise ConfigError(f"{where}.{key} must be one of {', '.join(options)}, got {value!r}")
    return value


def _name(table: dict, where: str) -> str:
    name = _str(table, "name", where)
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigError(f"{where}.name must be letters, digits, '-' or '_', got {name!r}")
    return name


def _unique(names: list, where: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{where}: {name!r} appears more than once")
        seen.add(name)


def _path(value: str, paths: dict, base: Path, where: str) -> str:
    if "{world}" in value and paths.get("world") is None:
        raise ConfigError(f"{where} uses {{world}} but the config has no [world] table")
    try:
        text = value.format(**paths)
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"{where}: unknown placeholder in {value!r} ({err}); use {{project}}, {{cache}}, "
                          f"{{world}} or {{config}}") from None
    path = Path(os.path.expanduser(text))
    return str(path if path.is_absolute() else (base / path))


def _source(value: str, paths: dict, base: Path) -> str:
    """A weights source: a hub file and a tag stay as written; anything path-like is resolved."""
    if value.startswith(HUB_PREFIX) or ("/" not in value and "{" not in value and "." not in value):
        return value  # hf://owner/repo/file, or an open_clip tag such as "openai"
    return _path(value, paths, base, "clip/combiner")
