"""``python -m cir_demo train {clip-pretrain,stage1,stage2}``: argument parsing and wiring only.

Defaults are the stage configs' (``cir_demo.train.stages``: the paper's reference
hyper-parameters, PAPER.md); the bundled weights' README records the values used for the
synthetic world. Multi-GPU: ``torchrun
--nproc_per_node N -m cir_demo train ...`` trains the same objective as one process, since
``--batch-size`` is the global batch and every query sees all of its negatives.
"""

from __future__ import annotations

import dataclasses
import json
import logging

log = logging.getLogger(__name__)


def _defaults(stage: str) -> dict:
    """{field: default} of the stage's config: the options' defaults come from the library."""
    from cir_demo.train.stages import STAGES

    return {f.name: f.default for f in dataclasses.fields(STAGES[stage]) if f.default is not dataclasses.MISSING}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="stage", metavar="stage", required=True)
    pre = sub.add_parser("clip-pretrain", help="contrastive training of a small CLIP from scratch")
    d = _defaults("clip-pretrain")
    _common(pre, d, several=True)
    pre.add_argument("--model", default=d["model"], help="open_clip model name (random init)")
    pre.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    pre.add_argument("--trim-vocabulary", action="store_true",
                     help="keep only the BPE tokens of the training captions (a much smaller token table)")
    pre.add_argument("--hard-negatives", type=int, default=0, metavar="V",
                     help="V hard negative captions per image (one attribute word swapped, from the world's "
                          "lexicon.json), one of them scored against every image each step (default 0: none)")
    pre.add_argument("--group-batches", action="store_true",
                     help="keep groups of close variants (CIRR image sets, linked triplets) together in batches")
    pre.add_argument("--attribute-loss", type=float, default=d["attribute_loss"], metavar="W",
                     help="synthetic worlds only: add W x the cross-entropy of linear heads that read the "
                          "generator's attributes (attributes.json) off the image embedding (default 0: off)")
    s1 = sub.add_parser("stage1", help="fine-tune CLIP with the normalised element-wise sum")
    d = _defaults("stage1")
    _common(s1, d)
    _clip_source(s1, d)
    s1.add_argument("--encoder", choices=("text", "image", "both"), default=d["encoder"],
                    help="which CLIP encoder to fine-tune (workshop paper: text)")
    s1.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    s1.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory")
    s1.add_argument("--unknown-words", type=float, default=0.0, metavar="P",
                    help="trimmed vocabulary only: insert 1-3 unknown tokens into a caption with probability P, so "
                         "words the training never used do not derail the text tower (default 0)")
    s1.add_argument("--group-batches", action="store_true",
                    help="batches of whole groups of triplets sharing images: hard negatives for every query")
    _set_negatives(s1)
    s2 = sub.add_parser("stage2", help="train the Combiner on frozen (cached) CLIP features")
    d = _defaults("stage2")
    _common(s2, d)
    _clip_source(s2, d)
    s2.add_argument("--projection-dim", type=int, default=None, help="default 4 x CLIP dim")
    s2.add_argument("--hidden-dim", type=int, default=None, help="default 8 x CLIP dim")
    s2.add_argument("--group-batches", action="store_true",
                    help="batches of whole groups of triplets sharing images: hard negatives for every query")
    s2.add_argument("--reference-negative", action="store_true",
                    help="also score each query against its own reference image, as a negative (not in the paper)")
    _set_negatives(s2)


def _set_negatives(p) -> None:
    p.add_argument("--set-negatives", action="store_true",
                   help="also score each query against the other images of its reference's image set (CIRR "
                        "img_set, reference included) as negatives: the look-alikes Recall_subset ranks (not in "
                        "the paper)")


def _common(p, d: dict, *, several: bool = False) -> None:
    epochs, batch, lr = d["epochs"], d["batch_size"], d["lr"]
    if several:
        p.add_argument("--data", required=True, nargs="+", help="dataset roots (FashionIQ and/or CIRR folders)")
    else:
        p.add_argument("--data", required=True, help="a FashionIQ or CIRR folder")
    p.add_argument("--out", required=True, help="run folder: best.safetensors, state.pt, metrics.jsonl")
    p.add_argument("--categories", nargs="+", default=None, help="FashionIQ categories (default: all)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch,
                   help=f"GLOBAL batch (default {batch}), whatever the number of processes: under torchrun "
                        f"each of N processes takes B/N rows and scores them against all B")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="learning rate over the run: constant (the paper) or cosine (3%% warm-up, then down to 0)")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (resumable)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from --out/state.pt (same --seed and --batch-size); bit-exact on the same "
                            "number of processes, on another the dropout streams are re-seeded")
    again.add_argument("--overwrite", action="store_true",
                       help="start afresh in an --out that holds a run, deleting its log, state and weights")
    p.add_argument("--validate-every", type=int, default=d["validate_every"], help="epochs between validations")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for image decoding")
    p.add_argument("--save-dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="storage dtype of best weights")
    p.add_argument("--no-progress", action="store_true")


def _clip_source(p, d: dict) -> None:
    p.add_argument("--clip", required=True,
                   help="CLIP weights: our checkpoint, an official .pt, a file, or a tag (e.g. openai) with --clip-model")
    p.add_argument("--clip-model", default=d["clip_model"], help="open_clip model name (for tags and plain files)")


def config_of(args, world: int = 1):
    """The stage config the parsed options describe (device resolved, one GPU per process of
    ``world``, fp32 storage as None)."""
    import torch

    from cir_demo.config.runtime import default_device, dtype_of
    from cir_demo.train.stages import STAGES

    cls = STAGES[args.stage]
    device = str(default_device(args.device))
    if device == "cuda" and world > 1:
        device = f"cuda:{torch.cuda.current_device()}"
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    given.update(device=device, progress=not args.no_progress,
                 save_dtype=None if args.save_dtype == "fp32" else dtype_of(args.save_dtype))
    return cls(**given)


def run(args) -> int:
    from cir_demo.train import stages
    from cir_demo.train.distributed import distributed
    from cir_demo.train.resume import check_run_folder

    check_run_folder(args.out, resume=args.resume, overwrite=args.overwrite)  # before minutes of loading
    _, world = distributed()  # before anything touches a GPU: each rank gets its own device
    print(json.dumps(stages.run(config_of(args, world)), default=float))
    return 0
