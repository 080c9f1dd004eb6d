"""The composed image retrieval demo (Hugging Face Spaces entry point).

``python app.py [--config FILE] [--images FOLDER [--bundle NAME]] [--host H] [--port P] [--public-url URL]``
serves a deployment config (and a folder of your own images as one more gallery):
``$CIR_DEMO_CONFIG``, else the built-in offline world with the bundled weights. Importing this module
(as Spaces and ``gradio app.py`` do) builds the module-level ``demo``; only running it launches.
"""

import sys

from cir_demo.ui.serve import add_arguments, build_app, launch

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="app.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
else:
    args = None

demo, catalog = build_app(args.config if args else None, public_url=args.public_url if args else None,
                          device=args.device if args else None, images=args.images if args else None,
                          bundle=args.bundle if args else None)

if __name__ == "__main__":
    launch(demo, host=args.host, port=args.port)
    sys.exit(0)
