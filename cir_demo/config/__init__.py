"""Project-wide constants: paths, CLIP normalisation, defaults shared by several layers."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROJECT_DIR = PACKAGE_DIR.parent
WEIGHTS_DIR = PROJECT_DIR / "weights"
MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"

# OpenAI CLIP's pixel statistics; every open_clip model trained by OpenAI uses them,
# and our own small CLIP is trained with them too so one preprocessing fits all.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The paper's padding ratio for the default ``targetpad`` preprocessing.
TARGETPAD_RATIO = 1.25
PREPROCESS_MODES = ("targetpad", "squarepad", "clip")

# CLIP text context; the paper tokenises with 77 tokens and truncation.
CONTEXT_LENGTH = 77


def hub_offline() -> bool:
    """True when the user asked huggingface_hub to stay offline (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
