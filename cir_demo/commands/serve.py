"""``python -m cir_demo serve``: the Gradio app for any deployment config (the built-in one by default)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    from cir_demo.ui.serve import add_arguments as app_arguments

    app_arguments(parser)


def run(args) -> int:
    from cir_demo.ui.serve import run as run_app

    return run_app(args)
