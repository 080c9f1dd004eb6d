"""A small CLIP trained from scratch on the synthetic world's absolute captions.

Our offline stand-in for OpenAI's pre-training: the standard symmetric contrastive loss
over image/caption pairs, with the learnable temperature. Optionally (``--attribute-loss``) linear
heads on the image embedding must also name the generator's attributes of each image (a scene
slot's shape, a garment's colour...): the built-in world is small, and captions alone left a small
tower reading shape near chance. The heads are dropped when the CLIP is saved. Images are
preprocessed once and kept in memory as fp16 (the world is small); captions are tokenised once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cir_demo.data.datasets import CIRDataset
from cir_demo.data.records import query_captions
from cir_demo.data.synth.attributes import labels, load_attributes
from cir_demo.eval.protocol import load_eval_splits
from cir_demo.model.checkpoint import save_checkpoint
from cir_demo.model.clip import ClipModel, build_model, model_config_for
from cir_demo.model.tokenizers import make_tokenizer
from cir_demo.model.vocab import vocab_size, vocabulary_of
from cir_demo.pipeline.encode import ImageFiles
from cir_demo.train.data import flat_variants, sample_variants
from cir_demo.train.distributed import gather_batch, global_cross_entropy
from cir_demo.train.groups import group_order
from cir_demo.train.loop import Task
from cir_demo.train.stage1 import RawEncoder

log = logging.getLogger(__name__)


def _captioned(roots, split: str):
    """(dataset root, dataset, image name, absolute caption) of every captioned image, in one fixed
    order: the rows of pre-training, for its images, captions and attribute targets alike."""
    for root in roots:
        for ds in load_eval_splits(root, split):
            ds: CIRDataset
            absolute = ds.absolute_captions()
            for name in ds.image_names:
                if name in absolute:
                    yield root, ds, name, absolute[name]


def captioned_images(roots, split: str = "train") -> tuple[list[Path], list[str]]:
    """(image paths, absolute captions) of every captioned image in the splits of ``roots``."""
    rows = [(ds.image_path(name), caption) for _, ds, name, caption in _captioned(roots, split)]
    if not rows:
        raise ValueError(f"no image with an absolute caption in {', '.join(map(str, roots))} ({split})")
    paths, captions = zip(*rows)
    return list(paths), list(captions)


def attribute_targets(roots, split: str = "train") -> tuple[torch.Tensor, list[tuple[str, int]]]:
    """The generator's attributes of the images :func:`captioned_images` lists, as class indices:
    ((N, A) long, -1 where an attribute does not apply or the world has no record of it; [(attribute,
    number of classes)]). Attributes are named per world kind, so a garment's "colour" and a scene's
    "left colour" are different heads."""
    known = {root: load_attributes(root) for root in roots}
    rows = [labels(known[root][name]) if name in known[root] else {} for root, _, name, _ in _captioned(roots, split)]
    names = sorted({a for row in rows for a, v in row.items() if v is not None})
    classes = {a: sorted({row[a] for row in rows if row.get(a) is not None}) for a in names}
    index = {a: {c: i for i, c in enumerate(cs)} for a, cs in classes.items()}
    targets = torch.tensor([[index[a].get(row.get(a), -1) for a in names] for row in rows], dtype=torch.long)
    return targets.view(len(rows), len(names)), [(a, len(classes[a])) for a in names]


class PretrainEncoder(RawEncoder):
    """CLIP's raw encoders plus, optionally, linear heads reading the generator's attributes off the
    normalised image embedding, as retrieval sees it (an auxiliary loss for the built-in world; the
    heads are not saved). ``HEAD_SCALE`` is a fixed inverse temperature: unit vectors through a
    freshly initialised linear map give logits too flat to train on."""

    HEAD_SCALE = 10.0

    def __init__(self, model: torch.nn.Module, head_classes: Sequence[int] = ()):
        super().__init__(model)
        dim = model.text_projection.shape[1]
        self.heads = torch.nn.Linear(dim, sum(head_classes)) if head_classes else None
        self.head_classes = list(head_classes)

    def forward(self, images=None, tokens=None):
        image, text = super().forward(images, tokens)
        if self.heads is None or image is None:
            return image, text, None
        return image, text, self.HEAD_SCALE * self.heads(F.normalize(image, dim=-1))


def attribute_loss(logits: torch.Tensor, targets: torch.Tensor, head_classes: Sequence[int]) -> torch.Tensor:
    """Mean over attributes of the cross-entropy of each head, on the rows where it applies."""
    losses = []
    for a, chunk in enumerate(logits.split(list(head_classes), dim=1)):
        y = targets[:, a]
        if bool((y >= 0).any()):
            losses.append(F.cross_entropy(chunk, y, ignore_index=-1))
    return torch.stack(losses).mean() if losses else logits.sum() * 0.0


def training_texts(roots, split: str = "train") -> list[str]:
    """Every caption training will read: absolute captions of the split's images and every caption
    variant of its triplets (what a trimmed vocabulary must keep)."""
    texts = list(captioned_images(roots, split)[1])
    for root in roots:
        for ds in load_eval_splits(root, split):
            texts += [c for t in ds.triplets for c in query_captions(t, train=True)]
    return texts


def new_clip(model_name: str, *, device: str, trim_from: Optional[Sequence[str]] = None) -> ClipModel:
    """A randomly initialised open_clip ``model_name``; with ``trim_from`` (captions), its token table
    holds only the BPE ids those captions use (:mod:`cir_demo.model.vocab`)."""
    config = model_config_for(model_name)
    kept = None
    if trim_from is not None:
        base = make_tokenizer(model_name, config)
        kept = vocabulary_of(base, trim_from)
        config["text_cfg"]["vocab_size"] = vocab_size(kept)
        log.info("trimmed vocabulary: %d of %d BPE tokens kept", len(kept), len(base.encoder))
    clip = ClipModel(build_model(config), name=model_name, model_config=config, source="random", vocabulary=kept)
    return clip.to(device)


def preload_pixels(clip: ClipModel, paths, *, num_workers: int = 0, progress: bool = True) -> torch.Tensor:
    """All images preprocessed once: (N, 3, S, S) fp16 on the CPU."""
    out = torch.empty(len(paths), 3, clip.image_size, clip.image_size, dtype=torch.float16)
    loader = DataLoader(ImageFiles(paths, clip.preprocess), batch_size=256, num_workers=num_workers)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="preprocess", unit="batch", leave=False)
    for pixels, rows in loader:
        out[rows] = pixels.half()
    return out


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                     negatives: Optional[torch.Tensor] = None, usable: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over a batch of matching pairs.

    Under DDP ``image`` and ``text`` are this rank's (b, D) rows: its images are scored against
    the global batch's captions and its captions against the global batch's images, which
    together are the rows of the single-process (B, B) logits this rank owns, both directions.
    ``negatives`` (b, D): a hard negative caption per image, added as extra candidates for every
    image (image -> caption direction only, as NegCLIP); ``usable`` (b,) False where a row has none.
    """
    scale = logit_scale.exp().clamp(max=100)
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)  # (b, D)
    all_images, offset = gather_batch(image)  # (B, D)
    all_texts, _ = gather_batch(text)  # (B, D)
    labels = offset + torch.arange(len(image), device=image.device)  # (b,)
    logits = scale * image @ all_texts.T  # (b, B)
    if negatives is not None:
        all_negatives, _ = gather_batch(F.normalize(negatives, dim=-1))  # (B, D)
        all_usable = gather_batch(usable.float())[0] > 0.5  # (B,): gathered as floats (gloo has no bool)
        extra = (scale * image @ all_negatives.T).masked_fill(~all_usable[None, :], float("-inf"))  # (b, B)
        logits = torch.cat([logits, extra], dim=1)  # (b, 2B)
    image_to_text = global_cross_entropy(logits, labels, global_rows=len(all_texts))
    text_to_image = global_cross_entropy(scale * text @ all_images.T, labels)  # logits (b, B)
    return (image_to_text + text_to_image) / 2


class PretrainTask(Task):
    """Contrastive pre-training on (image, absolute caption) pairs. With ``groups`` (lists of rows of
    close variants, :func:`cir_demo.train.groups.image_groups`) each epoch keeps groups together in
    its batches, so every batch holds hard negatives."""

    def __init__(self, clip: ClipModel, pixels: torch.Tensor, captions: list[str], *, device: str,
                 provenance: dict, val_pixels=None, val_captions=None, save_dtype=None, groups=None,
                 negatives: Optional[list] = None, seed: int = 0, attributes=None, attribute_weight: float = 0.0):
        self.clip, self.pixels, self.device, self.groups, self.seed = clip, pixels, device, groups, seed
        self.tokens = clip.tokenize(captions)  # (N, L)
        self.negatives = None
        if negatives is not None:  # per caption, V swapped captions; a row equal to its caption has none
            flat, width, self.n_negatives = flat_variants(negatives)
            self.negatives = clip.tokenize(flat).view(len(captions), width, -1)  # (N, V, L)
            self.negatives_usable = torch.tensor([[n != c for n in row + [row[-1]] * (width - len(row))]
                                                  for row, c in zip(negatives, captions)])  # (N, V)
        self.num_examples = len(captions)
        self.targets, heads = attributes if attributes is not None and attribute_weight > 0 else (None, [])
        self.attribute_weight = attribute_weight
        self.wrapper = PretrainEncoder(clip.model, [c for _, c in heads])
        self.forward_module = self.wrapper
        self.val_pixels, self.val_tokens = val_pixels, clip.tokenize(val_captions) if val_captions else None
        self.provenance, self.save_dtype = provenance, save_dtype

    def trainable(self):
        return self.wrapper

    def epoch_order(self, seed: int, epoch: int):
        return None if self.groups is None else group_order(self.groups, seed=seed, epoch=epoch)

    def loss(self, rows, step):
        pixels, tokens = self.pixels[rows].to(self.device, torch.float32), self.tokens[rows]
        if self.negatives is None:
            image, text, logits = self.forward_module(pixels, tokens.to(self.device))
            loss = contrastive_loss(image, text, self.clip.model.logit_scale)
        else:
            pick = sample_variants(self.n_negatives, self.seed, step, rows)  # (b,) which negative each row uses
            both = torch.cat([tokens, self.negatives[rows, pick]])  # (2b, L): one forward, as DDP wants
            image, text, logits = self.forward_module(pixels, both.to(self.device))
            text, negatives = text.split(len(rows))
            usable = self.negatives_usable[rows, pick].to(self.device)
            loss = contrastive_loss(image, text, self.clip.model.logit_scale, negatives, usable)
        if logits is not None:
            loss = loss + self.attribute_weight * attribute_loss(logits, self.targets[rows].to(self.device),
                                                                 self.wrapper.head_classes)
        return loss

    @torch.no_grad()
    def validate(self):
        """Image->caption top-1 accuracy among held-out pairs (in chunks of 256 candidates)."""
        if self.val_pixels is None:
            return 0.0, {}
        self.clip.model.eval()
        hits, total = 0, 0
        for start in range(0, len(self.val_tokens), 256):
            px = self.val_pixels[start:start + 256].to(self.device, torch.float32)
            tok = self.val_tokens[start:start + 256].to(self.device)
            image, text, _ = self.wrapper(px, tok)
            sims = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
            hits += int((sims.argmax(dim=1) == torch.arange(len(sims), device=sims.device)).sum())
            total += len(sims)
        accuracy = 100.0 * hits / max(total, 1)
        return accuracy, {"image_to_caption_top1_in_256": accuracy}

    def save_best(self, path: Path, provenance: dict):
        save_checkpoint(path, clip=self.clip, dtype=self.save_dtype,
                        provenance={**self.provenance, **provenance, "stage": "clip-pretrain"})
