"""Serving: the engine (one model bound to its galleries), its text tower and caches, the catalog
that front ends use, and deployment configs."""
