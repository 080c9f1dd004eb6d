"""``info``: what a checkpoint holds, or what an open_clip model looks like."""

from __future__ import annotations

import json
import os

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def add_arguments(parser) -> None:
    parser.add_argument("target", help="a checkpoint (.safetensors ours, .pt official) or an open_clip model name")
    parser.add_argument("--model-name", default=None, help="open_clip name for official CLIP files (e.g. RN50x4)")


def run(args) -> int:
    from pathlib import Path

    from cir_demo.model import load_checkpoint
    from cir_demo.model.clip import model_config_for

    target = Path(args.target)
    if target.exists():
        ckpt = load_checkpoint(args.target, model_name=args.model_name)
        config = ckpt.config
        if ckpt.clip is not None and ckpt.clip.vocabulary is not None:  # 200 ids help nobody: say what they are
            config = {**config, "clip": {**config["clip"], "vocabulary": _vocabulary_summary(ckpt.clip.vocabulary)}}
        out = {"config": config, "clip": repr(ckpt.clip) if ckpt.clip else None,
               "combiner": ckpt.combiner.dims() if ckpt.combiner else None}
        if ckpt.combiner is not None:
            out["combiner_parameters"] = sum(p.numel() for p in ckpt.combiner.parameters())
    elif _looks_like_a_file(args.target):  # not an open_clip name: say the file is missing
        raise FileNotFoundError(f"no such checkpoint file: {args.target}")
    else:
        out = {"model_name": args.target, "model_config": model_config_for(args.target)}
    print(json.dumps(out, indent=2, default=str))
    return 0


def _vocabulary_summary(kept: list) -> str:
    import open_clip

    decoder = open_clip.SimpleTokenizer().decoder
    words = [decoder[i].replace("</w>", "") for i in kept]
    return f"trimmed: {len(kept)} of open_clip's BPE tokens kept ({', '.join(words[:40])}, ...)"


def _looks_like_a_file(target: str) -> bool:
    from pathlib import Path

    has_folder = ("/" in target or os.sep in target) and not target.startswith("hf-hub:")
    return has_folder or Path(target).suffix.lower() in CHECKPOINT_SUFFIXES
