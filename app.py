"""Gradio front end (Hugging Face Spaces entry point).

The interactive demo is built on the engine in a later step; until then this entry point
says what exists instead of failing.
"""

import sys


def main() -> int:
    print("cir_demo: the Gradio app is not built yet.\n"
          "What works today: python -m cir_demo --help (model core, checkpoints, synthetic world).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
