"""cir_demo: composed image retrieval with CLIP features and a Combiner network.

Implements Baldrati et al., "Conditioned and Composed Image Retrieval Combining and
Partially Fine-Tuning CLIP-based Features" (CVPR 2022 workshop). The library is
layered (lowest first): config -> data / model / metrics -> index -> encode ->
engine -> evaluate / train -> cli / ui. Nothing below ``ui`` imports gradio.
"""

__version__ = "0.1.0"
