"""Gradio front end (Hugging Face Spaces entry point).

The interactive demo is built on the engine in a later step; until then this entry point
says what exists instead of failing.
"""

import sys


def main() -> int:
    print("cir_demo: the Gradio demo is not built yet (it comes next, on the engine).\n"
          "What works today, offline, with the bundled weights:\n"
          "  .venv/bin/python -m cir_demo --help\n"
          "  .venv/bin/python -m cir_demo synth --out data/world\n"
          "  .venv/bin/python -m cir_demo eval --data data/world/fashioniq "
          "--clip weights/fashioniq.safetensors --combiner weights/fashioniq.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
