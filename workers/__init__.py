"""Celery app and tasks: inference workers (queue gpu), ops workers (queue ops), and the
per-process runtime that holds the model."""
