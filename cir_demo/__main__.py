"""``python -m cir_demo <command>``."""

from cir_demo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
