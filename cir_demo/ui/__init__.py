"""The Gradio app (the only package that imports gradio): layout, handlers, API endpoints, QR codes."""

from cir_demo.ui.layout import build_demo, css

__all__ = ["build_demo", "css"]
