"""Forms for rules and endpoints: the model's own validation plus the SSRF check on URLs."""

from __future__ import annotations

from typing import Any

from django import forms

from dashboard.alerts import ssrf
from dashboard.alerts.models import AlertRule, WebhookEndpoint
from dashboard.core.canonical import PANEL_KEYS
from dashboard.core.models import Project
from dashboard.core.points import project_keys
from parity.frameworks import BY_KEY, CANONICAL_NAMES, sources_of
from parity.weight_versions import STALE_CACHE_KEY

# The most keys the metric picker offers from the project's runs: every key a training loop
# logs fits; a project logging thousands (per-layer stats) gets its most used ones.
PICKER_KEYS = 150


def metric_key_options(project: Project) -> list[tuple[str, str]]:
    """(key, note) pairs the rule form offers for its metric: the keys this project's runs
    sent, most used first, then the canonical names none of them sent."""
    options = []
    for key, n_runs in project_keys(project.pk, limit=PICKER_KEYS):
        note = f"sent by {n_runs} run{'' if n_runs == 1 else 's'}"
        source = BY_KEY.get(key)
        if source is not None:
            note += f" · {source.framework}'s {source.canonical}"
        options.append((key, note))
    sent = {key for key, _ in options}
    for name in dict.fromkeys((*PANEL_KEYS, *CANONICAL_NAMES, STALE_CACHE_KEY)):
        if name in sent:
            continue
        also = ", ".join(source.label for source in sources_of(name))
        options.append((name, f"canonical · also {also}" if also else "canonical"))
    return options


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
        widgets = {
            "endpoints": forms.CheckboxSelectMultiple,
            # Free text, with the project's keys offered as the user types (metric_key_options).
            "metric_key": forms.TextInput(
                attrs={"list": "metric-key-options", "autocomplete": "off", "spellcheck": "false"}
            ),
        }
        # The form's own words (a model help_text change would need a migration).
        help_texts = {
            "metric_key": "Pick one of this project's keys or type any key as sent (reward), "
            "or a canonical name (kl_k3, abs_diff_mean, "
            "...), which also watches each framework's key for it (verl rollout_corr/k3_kl, "
            "...); stale_cache_ratio watches the gap after each weight update.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only this project's endpoints can be picked.
        self.fields["endpoints"].queryset = WebhookEndpoint.objects.filter(
            project=self.instance.project
        )
        self.metric_key_options = metric_key_options(self.instance.project)


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
