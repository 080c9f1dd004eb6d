"""cir_demo: composed image retrieval with CLIP features and a Combiner network.

Implements Baldrati et al., "Conditioned and Composed Image Retrieval Combining and
Partially Fine-Tuning CLIP-based Features" (CVPR 2022 workshop). Layers, lowest first;
each imports only from layers before it:

* ``config``   constants, devices and dtypes, atomic writes
* ``index``    vectors only: the index artifact, exact search kernels, FAISS
* ``data``     typed records, dataset loaders, preprocessing, the synthetic world
* ``model``    open_clip wrapper, Combiner, composers, checkpoint formats, one loading factory
* ``pipeline`` model meets data: batch encoding, index building
* ``serve``    engine (a model bound to its galleries), text tower, caches, catalog, deployments
* ``eval`` / ``train``  the paper's protocol and both training stages, beside ``serve``
* ``commands`` / ``bench`` / ``ui``  every CLI command, the benchmarks, the Gradio app

Nothing below ``ui`` imports gradio.
"""

__version__ = "0.2.0"
