"""Models: CLIP through open_clip, the Combiner, composers and checkpoints."""

from cir_demo.model.checkpoint import (
                                       Checkpoint,
                                       CheckpointError,
                                       load_checkpoint,
                                       read_checkpoint_config,
                                       save_checkpoint,
)
from cir_demo.model.clip import ClipModel
from cir_demo.model.combiner import Combiner, ModelMismatchError, check_compatible
from cir_demo.model.composers import COMPOSER_NAMES, Composer, Composition, make_composer
from cir_demo.model.factory import load_clip
from cir_demo.model.offline import WeightsUnavailableError

__all__ = [
    "Checkpoint", "CheckpointError", "ClipModel", "Combiner", "COMPOSER_NAMES", "Composer", "Composition",
    "ModelMismatchError", "WeightsUnavailableError", "check_compatible", "load_checkpoint", "load_clip",
    "make_composer", "read_checkpoint_config", "save_checkpoint",
]
