"""Benchmarks (never run by the tests' timing): serving latency, exact top-k, stage-2 caching.

Each module prints JSON lines; ``python -m cir_demo bench`` runs the serving one. The app's own
benchmarks need gradio, so they live with it: ``cir_demo.ui.bench_app`` (start-up and latency)
and ``cir_demo.ui.bench_load`` (concurrent users).
"""
