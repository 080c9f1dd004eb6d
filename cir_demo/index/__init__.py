"""Gallery feature store (the index artifact) and search over it; knows vectors, not CLIP.

* `save_index` / `load_index` / `GalleryIndex`: the on-disk artifact (fp16 features, names,
  manifest), written atomically and validated on load (`IndexFormatError`,
  `IndexMismatchError` when built by another model).
* `Gallery`: exact top-k, rank-of-any-row and subset ranking, resident on one device.
* `FaissGallery`, `recall_at_k_vs_exact`: optional approximate search for huge galleries.
"""

from cir_demo.index.approx import FaissGallery, recall_at_k_vs_exact
from cir_demo.index.gallery import Gallery, resolve_dtype
from cir_demo.index.store import (
                                  FORMAT,
                                  GalleryIndex,
                                  IndexFormatError,
                                  IndexMismatchError,
                                  load_index,
                                  rebuild_hint,
                                  save_index,
)

__all__ = ["FORMAT", "FaissGallery", "Gallery", "GalleryIndex", "IndexFormatError", "IndexMismatchError",
           "load_index", "rebuild_hint", "recall_at_k_vs_exact", "resolve_dtype", "save_index"]
