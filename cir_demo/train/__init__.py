"""Training: a small CLIP from scratch, stage 1 (CLIP fine-tuning), stage 2 (Combiner)."""
