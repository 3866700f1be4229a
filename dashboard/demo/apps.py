from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo (`manage.py demo_setup`): on top of every other app, and nothing builds on it."""

    name = "dashboard.demo"
    label = "demo"
    verbose_name = "Demo data"
