"""Create the demo user and project and seed them (idempotent); print how to log in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand
from django.db import transaction

from dashboard.alerts.models import AlertRule, WebhookEndpoint
from dashboard.core.api.jobs import validate_spec
from dashboard.core.models import Job, Membership, Project, Run, start_job
from dashboard.demo.seed import seed_training_run, seed_verl_stale_cache_run

DEMO_USER = "demo"
DEMO_PASSWORD = "parity-demo"


class Command(BaseCommand):
    help = (
        "Create the demo user and project, seed a synthetic training run with a drift "
        "episode and an alert rule, and queue a comparison and a replay on the tiny model."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-jobs", action="store_true", help="Do not queue engine jobs.")

    def handle(self, *args: Any, **options: Any) -> None:
        user, created = User.objects.get_or_create(username=DEMO_USER)
        if created:
            user.set_password(DEMO_PASSWORD)
            user.is_staff = user.is_superuser = True
            user.save()
        project, _ = Project.objects.get_or_create(slug="demo", defaults={"name": "Demo"})
        Membership.objects.get_or_create(user=user, project=project, defaults={"role": "owner"})

        # The rule exists before the points arrive, so the drift episode opens (and
        # closes) a real incident through the normal ingest path, and its webhooks go to the
        # demo's own receiver: a signed delivery and its attempts, end to end.
        rule, _ = AlertRule.objects.get_or_create(
            project=project,
            name="kl_k3 drift",
            defaults={
                "metric_key": "kl_k3",
                "threshold": 0.003,
                "recovery_threshold": 0.002,
                "for_steps": 3,
                "severity": AlertRule.Severity.WARNING,
                # The GRPO run's drift episode; the verl run has its own rule below.
                "run_name_pattern": "grpo-*",
            },
        )
        receiver = self._receiver_endpoint(project)
        rule.endpoints.add(receiver)
        if not Run.objects.filter(project=project, name="grpo-demo-drift").exists():
            self.stdout.write("seeding the synthetic training run (1,000 steps)…")
            seed_training_run(project)

        # A stale-cache rule before the verl-style run arrives: it fires as its versions end.
        stale_rule, _ = AlertRule.objects.get_or_create(
            project=project,
            name="stale prefix cache",
            defaults={
                "metric_key": "stale_cache_ratio",
                "threshold": 2.0,
                "severity": AlertRule.Severity.WARNING,
            },
        )
        stale_rule.endpoints.add(receiver)
        if not Run.objects.filter(project=project, name="verl-stale-prefix-cache").exists():
            self.stdout.write("seeding a verl-style run with weight updates (200 steps)…")
            seed_verl_stale_cache_run(project)

        if not options["no_jobs"]:
            self._queue_engine_jobs(project, user)
        self.stdout.write(
            self.style.SUCCESS(f"Demo login: user '{DEMO_USER}', password '{DEMO_PASSWORD}'")
        )

    def _receiver_endpoint(self, project: Project) -> WebhookEndpoint:
        port = int(settings.DEMO_RECEIVER_PORT)
        endpoint, _ = WebhookEndpoint.objects.update_or_create(
            project=project,
            name="demo receiver",
            defaults={"url": f"http://127.0.0.1:{port}/alerts"},
        )
        # The receiver (dashboard.demo.receiver, started by `make demo`) checks signatures
        # with the endpoint's secret.
        secret_file = Path(settings.DEMO_RECEIVER_SECRET_FILE)
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(endpoint.secret)
        secret_file.chmod(0o600)
        return endpoint

    def _queue_engine_jobs(self, project: Project, user: Any) -> None:
        model = str(settings.PARITY_MODELS_DIR / "tiny-llama")
        for kind, name in (
            (Job.Kind.COMPARISON, "demo-comparison"),
            (Job.Kind.REPLAY, "demo-replay"),
        ):
            if Run.objects.filter(project=project, name=name).exists():
                continue
            spec = validate_spec(kind, {"model": model})
            with transaction.atomic():
                start_job(project, kind, spec, user=user, run_name=name, tags=["demo"])
            self.stdout.write(f"queued {kind} '{name}' (runs once the gpu worker is up)")
