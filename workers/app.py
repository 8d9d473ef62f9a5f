"""The Celery application, configured only from `celeryconfig`."""

from celery import Celery

app = Celery("bemq", include=["workers.tasks", "workers.ops"])
app.config_from_object("celeryconfig")
