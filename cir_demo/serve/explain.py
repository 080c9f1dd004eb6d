"""Why a result ranks where it does, for one hit on demand: where the hit image agrees with the
composed query (a heat map), and which words of the caption moved its score.

* The map (``cir_demo.model.spatial.location_map``), over the model's own view of the image
  (padded and cropped as the model saw it): the hit's per-location image features, each compared
  with the composed query by cosine (one image-tower pass); or, for the built-in world's grid tower,
  which has no per-location features, how much the hit's score drops when each window of it is
  hidden (one batch of 65 passes of a small tower).
* The words: the query composed again with each word left out (one batch through the caption
  tower and the composer); a word's weight is how much less the hit wins over the reference
  without it (the drop in score(hit) - score(reference)). Against the reference, not the raw score:
  dropping any word moves the whole query, and every image's score with it.
The query is made exactly as ``Engine.search`` makes it.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn.functional as F
from PIL import Image

from cir_demo.model.spatial import location_map
from cir_demo.serve.checks import QueryError
from cir_demo.serve.results import Explanation

MAX_WORDS = 24  # leave-one-out captions per explanation: a handful of text-tower rows


@torch.inference_mode()
def explain(engine, gallery: str, *, reference, caption: str, hit: str, hit_image: Image.Image,
            composer: str = "combiner", upload_features: Optional[torch.Tensor] = None) -> Explanation:
    """The heat map and word weights of ``hit`` (a gallery image name; ``hit_image`` its picture)
    for the query (``reference`` + ``caption``) under ``composer``."""
    start = time.perf_counter()
    entry, comp = engine.entry(gallery), engine._composer(composer)
    caption = engine._check_caption(caption, comp)
    row = engine.rows_of(entry, [hit])
    query, _, ref_row = engine._compose_one(entry, comp, reference, caption, upload_features)  # (D,)
    score = float(entry.gallery.scores_of(query[None], row)[0, 0])
    clip = engine.clip
    pixels = clip.preprocess(hit_image)[None].to(clip.device, clip.dtype)  # (1, 3, S, S)
    heat = location_map(clip.model.visual, pixels, query.to(pixels.device))  # (h, w)
    words = caption.split()
    weights = []
    if comp.needs_text and len(words) > 1:
        kept = words[:MAX_WORDS]
        variants = [" ".join(kept[:i] + kept[i + 1:] + words[MAX_WORDS:]) for i in range(len(kept))]
        image = entry.gallery.raw_features(ref_row).float() if ref_row is not None else upload_features
        if image is None:
            raise QueryError("the reference must be a gallery image name or an uploaded image")
        image = image.to(engine.device).expand(len(variants), -1)  # (V, D)
        queries = comp(image, engine.text_features(variants)).float()  # (V, D)
        without = entry.gallery.scores_of(queries, row)[:, 0]  # (V,)
        margin = score - float(F.cosine_similarity(query.float(), image[0].float(), dim=-1))
        without_margin = without.float().cpu() - F.cosine_similarity(queries, image.float(), dim=-1).cpu()
        weights = [(word, margin - float(m)) for word, m in zip(kept, without_margin.tolist())]
    return Explanation(hit=hit, score=score, heat=heat.cpu().tolist(), words=weights,
                       view=clip.preprocess.crop(hit_image), ms=(time.perf_counter() - start) * 1000)
