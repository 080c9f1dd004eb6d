"""Command line: ``python -m cir_demo <command> [options]``.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args)``;
modules import their heavy dependencies inside ``run`` so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

# name -> (module, one-line help). Order is the order shown by --help.
COMMANDS = {
    "synth": ("cir_demo.commands.synth", "generate the built-in synthetic CIR world (FashionIQ / CIRR layouts)"),
    "train": ("cir_demo.commands.train", "train: clip-pretrain (small CLIP from scratch), stage1, stage2"),
    "eval": ("cir_demo.commands.eval", "the paper's evaluation protocol for any composer"),
    "probe": ("cir_demo.commands.probe", "linear probes of image features for the synthetic world's attributes"),
    "visitor": ("cir_demo.commands.visitor", "free-text edits in unseen phrasings on the synthetic world, judged by its attributes"),
    "index": ("cir_demo.commands.index", "encode a dataset split or an image folder into a gallery index"),
    "bench": ("cir_demo.commands.bench", "serving benchmarks: latency, top-k vs FAISS, indexing, memory"),
    "serve": ("cir_demo.commands.serve", "the Gradio demo for a deployment config (default: the built-in world)"),
    "info": ("cir_demo.commands.info", "describe a checkpoint (ours or official) or an open_clip model"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cir_demo",
        description="Composed image retrieval with CLIP and a Combiner (Baldrati et al., CVPR 2022 workshop).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(command)
        command.set_defaults(_module=module_name)
    return parser


def user_errors() -> tuple:
    """Exceptions that describe bad input (files, data, models), not bugs.

    Every one is a ``ValueError`` subclass of this library's, or an ``OSError`` (a missing or
    unwritable file, a full disk). A plain ``ValueError`` raised by this package's own code is a
    validation message too (see :func:`is_user_error`); one raised inside a third-party library
    is a bug and keeps its traceback.
    """
    from cir_demo.data.datasets import DatasetError
    from cir_demo.eval.submission import SubmissionError
    from cir_demo.index.store import IndexFormatError, IndexMismatchError
    from cir_demo.model import CheckpointError, ModelMismatchError, WeightsUnavailableError
    from cir_demo.pipeline.encode import EncodeError, ImageReadError
    from cir_demo.serve.deploy import ConfigError
    from cir_demo.serve.engine import QueryError

    return (ConfigError, DatasetError, ImageReadError, EncodeError, QueryError, IndexFormatError,
            IndexMismatchError, CheckpointError, ModelMismatchError, WeightsUnavailableError, SubmissionError,
            OSError)


def is_user_error(err: BaseException) -> bool:
    """True for the library's documented errors, and for a ``ValueError`` raised by a ``raise``
    statement in this package (the last frame of its traceback is in ``cir_demo``)."""
    if isinstance(err, user_errors()):
        return True
    if not isinstance(err, ValueError):
        return False
    tb, last = err.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    package = Path(__file__).resolve().parent
    try:
        return Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(package)
    except (OSError, ValueError):
        return False


_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*\nOriginal Traceback")


def one_line(err: BaseException) -> str:
    """The error's message on one line; for an exception torch re-raised from a DataLoader worker,
    the original message without the worker's traceback."""
    text = str(err)
    if _WORKER.match(text):
        lines = [line for line in text.splitlines()[1:] if line.strip()]
        tail = next((line for line in reversed(lines) if not line.startswith(" ")), "")
        text = tail.split(": ", 1)[1] if ": " in tail else tail or type(err).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(err).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(args._module)
    try:
        result = module.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # bad input: say what is wrong in one line, no traceback (-v shows one)
        if args.verbose or not is_user_error(err):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return int(result or 0) if isinstance(result, int) else 0
