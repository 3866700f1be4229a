from __future__ import annotations

from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "dashboard.alerts"
    label = "alerts"
    verbose_name = "Alerts and webhooks"

    def ready(self) -> None:
        # Core's point writer and run pages call the hooks apps register; core never
        # imports alerts (import-linter keeps it so).
        from dashboard.alerts import hooks

        hooks.register()
