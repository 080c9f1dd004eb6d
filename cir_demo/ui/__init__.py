"""The Gradio app (the only package that imports gradio): layout, handlers, API endpoints, QR codes.

Import what you need from the submodules (``cir_demo.ui.serve.build_app``, ``cir_demo.ui.layout``);
this package imports nothing itself, so ``python -m cir_demo --help`` does not pay for Gradio.
"""
