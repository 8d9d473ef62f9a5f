"""Drift detection: compare a recent window of worker-sampled features with a pinned reference."""
