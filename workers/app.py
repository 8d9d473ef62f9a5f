"""The Celery application, configured only from `celeryconfig`."""

from celery import Celery

app = Celery("bemq", include=["workers.tasks"])
app.config_from_object("celeryconfig")
