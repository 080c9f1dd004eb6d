"""A gallery that lives in Milvus: for galleries past what one process should hold.

The collection holds one entity per image: ``id`` (its row, int64 primary key), ``name`` and the
raw CLIP feature ``vector`` (float, COSINE metric: Milvus normalises, as the in-process gallery
does); a collection property holds the index manifest (model fingerprint, dimension,
preprocessing, image root), so the same identity check refuses another model's collection. ``MilvusGallery``
answers what the engine asks of an in-process ``Gallery`` -- top-k, stored features of
references, scores of given rows, names and rows -- without holding the vectors or the names:
only the names of recent answers are kept (bounded). ``uri`` is a Milvus server
(``http://host:19530``, a cluster) or a local file, which starts Milvus Lite. With a ``FLAT``
index the top-k is exact and equals the in-process search on the same vectors; with an
approximate one (``IVF_FLAT``, ``HNSW``) ``python -m cir_demo.bench.milvus`` reports its recall.
Target ranks beyond K are not offered (a rank needs every score): such a gallery has no ground truth.
``pymilvus`` (and ``milvus-lite`` for local files) is an optional dependency: requirements-milvus.txt.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cir_demo.index.store import FORMAT

NAME_CACHE = 100_000  # names of recent answers kept in memory
MANIFEST_PROPERTY = "cir_demo.manifest"
INSERT_BATCH = 2_000


def client_for(uri: str):
    """A client of the Milvus at ``uri`` (a local file path starts Milvus Lite in its folder)."""
    try:
        from pymilvus import MilvusClient
    except ImportError as err:
        raise RuntimeError("a Milvus gallery needs pymilvus: pip install -r requirements-milvus.txt") from err
    if "://" not in uri:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    return MilvusClient(uri)


def create_collection(uri: str, collection: str, dim: int, manifest: dict, *, count: int, index_type: str = "FLAT",
                      index_params: Optional[dict] = None, replace: bool = True) -> None:
    """An empty ``collection`` for ``count`` rows of ``dim``-d features (replaced if it exists)."""
    from pymilvus import DataType

    client = client_for(uri)
    if client.has_collection(collection):
        if not replace:
            raise FileExistsError(f"Milvus collection {collection!r} exists")
        client.drop_collection(collection)
    meta = {**manifest, "format": FORMAT, "count": int(count), "dim": int(dim)}
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("name", DataType.VARCHAR, max_length=1024)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type=index_type, metric_type="COSINE", params=index_params or {})
    client.create_collection(collection, schema=schema, index_params=index)
    client.alter_collection_properties(collection, properties={MANIFEST_PROPERTY: json.dumps(meta)})


def insert_rows(uri: str, collection: str, rows: Sequence[int], names: Sequence[str], features: torch.Tensor) -> None:
    """Insert entities: ``rows`` (their ids), ``names`` and raw ``features`` (R, D), in batches."""
    client, vectors = client_for(uri), features.float().cpu().numpy()
    for start in range(0, len(rows), INSERT_BATCH):
        chunk = range(start, min(start + INSERT_BATCH, len(rows)))
        client.insert(collection, [{"id": int(rows[i]), "name": names[i], "vector": vectors[i].tolist()} for i in chunk])


def finish_collection(uri: str, collection: str) -> None:
    client = client_for(uri)
    client.flush(collection)
    client.load_collection(collection)


def write_collection(uri: str, collection: str, features: torch.Tensor, names: Sequence[str], manifest: dict, *,
                     index_type: str = "FLAT", index_params: Optional[dict] = None, replace: bool = True) -> None:
    """Write raw ``features`` (N, D) and row-aligned ``names`` as ``collection`` (replaced if it exists)."""
    create_collection(uri, collection, int(features.shape[1]), manifest, count=len(names), index_type=index_type,
                      index_params=index_params, replace=replace)
    insert_rows(uri, collection, range(len(names)), names, features)
    finish_collection(uri, collection)


class _Names:
    """The gallery's names by row, fetched from Milvus on demand (recent ones kept)."""

    def __init__(self, gallery: "MilvusGallery"):
        self.gallery = gallery

    def __len__(self) -> int:
        return len(self.gallery)

    def __getitem__(self, item):
        if isinstance(item, slice):  # a page: rows left unused (a file that failed to decode) are skipped
            return self.gallery.names_at(list(range(*item.indices(len(self)))), skip_missing=True)
        row = int(item) if item >= 0 else len(self) + int(item)
        return self.gallery.names_at([row])[0]

    def __iter__(self):
        for start in range(0, len(self), INSERT_BATCH):
            yield from self[start:start + INSERT_BATCH]


class _Rows:
    """name -> row, asked of Milvus (``in``, ``[]`` and ``get`` as a dict's)."""

    def __init__(self, gallery: "MilvusGallery"):
        self.gallery = gallery

    def get(self, name, default=None):
        if not isinstance(name, str):
            return default
        rows = self.gallery.lookup([name])
        return rows.get(name, default)

    def __contains__(self, name) -> bool:
        return self.get(name) is not None

    def __getitem__(self, name):
        row = self.get(name)
        if row is None:
            raise KeyError(name)
        return row


class MilvusGallery:
    """A gallery in a Milvus collection, with the in-process ``Gallery``'s answers (not ``rank_of``)."""

    def __init__(self, uri: str, collection: str, *, device: str | torch.device = "cpu"):
        self.client, self.collection, self.uri = client_for(uri), collection, uri
        if not self.client.has_collection(collection):
            raise FileNotFoundError(f"no Milvus collection {collection!r} at {uri}; build one with: "
                                    f"python -m cir_demo index --milvus {uri} --collection {collection} ...")
        recorded = (self.client.describe_collection(collection).get("properties") or {}).get(MANIFEST_PROPERTY, "{}")
        try:
            self.manifest = json.loads(recorded)
        except ValueError:
            self.manifest = {}
        self.client.load_collection(collection)
        self.device, self.path = torch.device(device), None
        self._count = int(self.manifest.get("count") or self._count_rows())
        self._names: OrderedDict[int, str] = OrderedDict()
        self.names, self.row_of = _Names(self), _Rows(self)

    # ---- what an index artifact tells -------------------------------------------------------
    @property
    def fingerprint(self) -> Optional[str]:
        return self.manifest.get("model_fingerprint")

    @property
    def dim(self) -> int:
        return int(self.manifest.get("dim", 0))

    def __len__(self) -> int:
        return self._count

    def _count_rows(self) -> int:
        stats = self.client.get_collection_stats(self.collection)
        return int(stats.get("row_count", 0))

    # ---- names and rows ----------------------------------------------------------------------
    def _remember(self, pairs: Iterable[tuple[int, str]]) -> None:
        for row, name in pairs:
            self._names[int(row)] = name
            self._names.move_to_end(int(row))
        while len(self._names) > NAME_CACHE:
            self._names.popitem(last=False)

    def names_at(self, rows: Sequence[int], skip_missing: bool = False) -> list[str]:
        missing = [int(r) for r in rows if int(r) not in self._names]
        if missing:
            found = self.client.query(self.collection, filter=f"id in {missing}", output_fields=["id", "name"])
            self._remember((f["id"], f["name"]) for f in found)
        if skip_missing:
            return [self._names[int(r)] for r in rows if int(r) in self._names]
        try:
            return [self._names[int(r)] for r in rows]
        except KeyError as err:
            raise IndexError(f"row {err.args[0]} is not in the gallery") from None

    def lookup(self, names: Sequence[str]) -> dict[str, int]:
        quoted = json.dumps([n for n in names if isinstance(n, str)])
        found = self.client.query(self.collection, filter=f"name in {quoted}", output_fields=["id", "name"])
        self._remember((f["id"], f["name"]) for f in found)
        return {f["name"]: int(f["id"]) for f in found}

    def rows_of(self, names: Sequence[str]) -> torch.Tensor:
        rows = self.lookup(names)
        try:
            return torch.tensor([rows[n] for n in names], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"unknown gallery image name {err.args[0]!r}") from None

    # ---- features and scores -----------------------------------------------------------------
    def raw_features(self, rows: Any) -> torch.Tensor:
        """Stored raw features (R, D) of the given rows (fp16, as an in-process gallery keeps them)."""
        rows = [int(r) for r in torch.as_tensor(rows).reshape(-1).tolist()]
        found = {int(f["id"]): f["vector"] for f in self.client.query(
            self.collection, filter=f"id in {rows}", output_fields=["id", "vector"])}
        return torch.tensor(np.asarray([found[r] for r in rows], dtype=np.float32)).half().to(self.device)

    def scores_of(self, queries: torch.Tensor, rows: Any) -> torch.Tensor:
        """Cosine scores (Q, R) of the given rows for each query."""
        feats = F.normalize(self.raw_features(rows).float(), dim=-1)  # (R, D)
        return F.normalize(queries.float().to(feats.device), dim=-1) @ feats.T

    def topk(self, queries: torch.Tensor, k: int, exclude_rows: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (Q, k), rows (Q, k)) by Milvus's search; ``exclude_rows`` (Q,) leaves one row out per query."""
        queries = F.normalize(queries.float(), dim=-1).cpu().numpy()
        excluded = [None] * len(queries) if exclude_rows is None else torch.as_tensor(exclude_rows).reshape(-1).tolist()
        scores, rows = [], []
        for query, skip in zip(queries, excluded):
            expression = f"id != {int(skip)}" if skip is not None and int(skip) >= 0 else ""
            hits = self.client.search(self.collection, data=[query.tolist()], limit=int(k), filter=expression,
                                      output_fields=["name"], search_params={"metric_type": "COSINE"})[0]
            self._remember((h["id"], h["entity"]["name"]) for h in hits)
            scores.append([float(h["distance"]) for h in hits])
            rows.append([int(h["id"]) for h in hits])
        return torch.tensor(scores), torch.tensor(rows, dtype=torch.long)

    def subset_ranking(self, query: torch.Tensor, rows: Any) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(rows).reshape(-1)
        scores = self.scores_of(query.reshape(1, -1), rows)[0]
        order = sorted(range(len(rows)), key=lambda i: (-float(scores[i]), int(rows[i])))
        return rows[order], scores[order]

    def rank_of(self, queries, rows, exclude_rows=None):
        raise NotImplementedError("target ranks are not offered for a gallery served from Milvus")
