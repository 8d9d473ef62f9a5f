"""Operational logic without Celery: settings, store, blobs, job lifecycle, statistics, metrics."""
