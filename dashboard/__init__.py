# Load the Celery app with Django so that tasks bind to it (and get delay_on_commit).
from dashboard.celery import app as celery_app

__all__ = ["celery_app"]
