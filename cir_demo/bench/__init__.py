"""Benchmarks (never run by the tests' timing): serving latency, exact top-k, stage-2 caching, the app.

Each module prints JSON lines; ``python -m cir_demo bench`` runs the serving one.
"""
