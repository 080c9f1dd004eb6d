"""CIRR test-server submission files: the split encoded once, two JSON files per composer."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

from cir_demo.config.files import atomic_write_text
from cir_demo.eval import metrics
from cir_demo.eval.protocol import build_query_set, compose_queries, load_eval_splits
from cir_demo.model.clip import ClipModel
from cir_demo.model.composers import Composer

logger = logging.getLogger(__name__)


class SubmissionError(ValueError):
    """Submission content or a composer name that cannot make the two CIRR files."""


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def write_submission(directory: str | os.PathLike, name: str, recall: Mapping[str, Any],
                     subset: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write `recall_submission_<name>.json` and `recall_subset_submission_<name>.json` atomically.

    Returns both paths. Each file is written to a temp file beside it, then renamed; files and
    the folder get the usual permissions (0644 / 0755 under a 022 umask), not a temp file's 0600.
    ``name`` must be a plain file-name fragment (letters, digits, ``_ . + -``): no separators.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise SubmissionError(f"composer name {name!r} cannot be part of a file name")
    for data, metric in ((recall, "recall"), (subset, "recall_subset")):
        if not isinstance(data, Mapping) or data.get("metric") != metric or "version" not in data:
            raise SubmissionError(f"expected a submission dict with metric {metric!r} and a version")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / f"recall_submission_{name}.json", directory / f"recall_subset_submission_{name}.json")
    for path, data in zip(paths, (recall, subset)):
        atomic_write_text(path, json.dumps(dict(data), sort_keys=True))
    logger.info("wrote CIRR submission %s and %s", *paths)
    return paths


def cirr_test_submission(clip: ClipModel, composers: Mapping[str, Composer], root: str | Path,
                         out_dir: str | Path, *, split: str = "test1", device: str = "cpu",
                         **encode_kwargs) -> list[Path]:
    """Write the two CIRR test-server files per composer (the split is encoded once)."""
    ds, = load_eval_splits(root, split)
    qs = build_query_set(clip, ds, **encode_kwargs)
    gallery = qs.unit_gallery(device)
    refs, pair_ids, groups = ([t.reference for t in qs.triplets], [t.pair_id for t in qs.triplets],
                              [t.group for t in qs.triplets])
    files = []
    for name, composer in composers.items():
        queries = compose_queries(composer, qs.ref_feats, qs.text_feats, device=device)
        recall, subset = metrics.cirr_submission(queries, gallery, qs.gallery_names, refs, pair_ids, groups)
        files += write_submission(out_dir, name, recall, subset)
    return files
