"""Forms for rules and endpoints: the model's own validation plus the SSRF check on URLs."""

from __future__ import annotations

from typing import Any

from django import forms

from dashboard.alerts import ssrf
from dashboard.alerts.models import AlertRule, WebhookEndpoint


class AlertRuleForm(forms.ModelForm):
    class Meta:
        model = AlertRule
        fields = [
            "name",
            "enabled",
            "metric_key",
            "condition",
            "threshold",
            "window_steps",
            "recovery_threshold",
            "for_steps",
            "for_seconds",
            "severity",
            "endpoints",
            "cooldown_s",
            "repeat_interval_s",
            "run_kinds",
            "run_name_pattern",
            "run_tag",
        ]
        labels = {
            "cooldown_s": "Cooldown (s)",
            "repeat_interval_s": "Repeat interval (s)",
            "for_steps": "For (consecutive points)",
            "for_seconds": "For (seconds)",
            "run_kinds": "Watches",
        }
        widgets = {"endpoints": forms.CheckboxSelectMultiple}
        # The form's own words (a model help_text change would need a migration).
        help_texts = {
            "metric_key": "A key as sent (reward), or a canonical name (kl_k3, abs_diff_mean, "
            "...), which also watches each framework's key for it (verl rollout_corr/k3_kl, "
            "...); stale_cache_ratio watches the gap after each weight update.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only this project's endpoints can be picked.
        self.fields["endpoints"].queryset = WebhookEndpoint.objects.filter(
            project=self.instance.project
        )


class WebhookEndpointForm(forms.ModelForm):
    class Meta:
        model = WebhookEndpoint
        fields = ["name", "url", "format"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        # Checked here for a clear message now; checked again at every delivery (rebinding).
        try:
            ssrf.vet(url)
        except ssrf.Refused as exc:
            raise forms.ValidationError(str(exc)) from exc
        except ssrf.ResolveError as exc:
            raise forms.ValidationError(f"{exc}. Check the host name.") from exc
        return url
