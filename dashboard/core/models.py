"""Projects, runs, metric points and jobs: everything Parity keeps durable."""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models, transaction
from django.utils import timezone

from dashboard.core import hooks, live
from workers.specs.kinds import JOB_KINDS, SPEC_KINDS

log = logging.getLogger(__name__)


class Project(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    # Overrides of parity.metrics.Thresholds (the verdict table) for this project.
    thresholds = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="projects"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        MEMBER = "member"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "project"], name="unique_membership")
        ]


def hash_token(token: str) -> str:
    # Tokens are 256-bit random strings: a fast hash is enough (nothing to brute-force),
    # and lets every API request look its token up by index.
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(models.Model):
    PREFIX = "pty_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="Visible start of the token.")
    hashed = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user: Any, project: Project, name: str) -> tuple[ApiToken, str]:
        """Create a token; return it with its clear text, which is never stored."""
        clear = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, project=project, name=name, prefix=clear[:12], hashed=hash_token(clear)
        )
        return token, clear

    @classmethod
    def authenticate(cls, clear: str) -> ApiToken | None:
        # The user rides along (every request needs it); the project is only ever read by
        # id, and joining it cost ~23% of the lookup (its jsonb thresholds decoded each time).
        token = (
            cls.objects.select_related("user")
            .filter(hashed=hash_token(clear), revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        if token is None:
            return None
        now = timezone.now()
        # One write a minute at most: last-use is for humans, not an audit log.
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            cls.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        return token

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


def _kind_choices(names: list[str]) -> list[tuple[str, tuple[str, str]]]:
    """TextChoices members (COMPARISON = "comparison", label "Comparison") for job kinds."""
    return [(name.upper(), (name, JOB_KINDS[name].label)) for name in names]


class Run(models.Model):
    # A training loop's run, or the run of a job that measures something (every kind with a
    # spec; a ping measures nothing and has no run).
    Kind = models.TextChoices(
        "Kind", [("TRAINING", ("training", "Training")), *_kind_choices(list(SPEC_KINDS))]
    )

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"
        CRASHED = "crashed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.TRAINING)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # Model, engine and trainer settings, effective sampling parameters, library versions.
    fingerprint = models.JSONField(default=dict, blank=True)
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    # Verdict of a comparison-like run (pass / warn / fail), empty for training runs.
    verdict = models.CharField(max_length=4, blank=True)
    last_step = models.BigIntegerField(null=True, blank=True)
    # Bumped by every committed batch of points: caches of the run's series compare against
    # it, so no cache can outlive the points it copies (the cache's Redis may restart).
    series_version = models.BigIntegerField(default=0, editable=False)
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="unique_run_name")]
        indexes = [models.Index(fields=["project", "-created"])]

    def __str__(self) -> str:
        return self.name

    @property
    def group_name(self) -> str:
        return f"run.{self.pk}"

    ENDED = (Status.FINISHED, Status.FAILED, Status.CRASHED)

    def set_status(self, status: str) -> None:
        """Move to `status`; reaching an end (finished, failed, crashed) also tells the apps
        that care (alerts ends the run's incidents), in the same transaction."""
        now = timezone.now()
        ended = status in self.ENDED and self.status not in self.ENDED
        self.status = status
        fields = ["status"]
        if status == self.Status.RUNNING and self.started is None:
            self.started = now
            fields.append("started")
        if status in self.ENDED:
            self.finished = now
            fields.append("finished")
        with transaction.atomic():
            self.save(update_fields=fields)
            if ended:
                for hook in hooks.run_ended():
                    hook(self)
            # Open run pages and runs lists show the new status without a reload.
            transaction.on_commit(lambda: live.publish(f"run.{self.pk}", "run", {"status": status}))
            live.runs_changed(self.project_id)

    def save(self, *args: Any, **kwargs: Any) -> None:
        created = self._state.adding
        super().save(*args, **kwargs)
        if created:
            live.runs_changed(self.project_id)


class MetricPoint(models.Model):
    # No index of its own: the unique (run, key, step) index leads with the run and serves
    # every read by run (and the cascade), and one index less is one less write per point.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="points", db_index=False)
    key = models.CharField(max_length=128)
    step = models.BigIntegerField()
    value = models.FloatField()
    wall_time = models.DateTimeField(default=timezone.now)

    class Meta:
        # The unique index is also the read path: one key of one run, by step range.
        constraints = [models.UniqueConstraint(fields=["run", "key", "step"], name="unique_point")]


class SeriesSummary(models.Model):
    """Min and max (with their steps) of one key's points in one bucket of 2**level steps,
    written with the points (see `dashboard.core.summary`): a zoomed-out chart reads these
    instead of every point."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=128)
    level = models.SmallIntegerField()
    bucket = models.BigIntegerField()
    n = models.IntegerField()
    # Over finite values only (the charts draw NaN as a gap); NULL when a bucket has none.
    min_step = models.BigIntegerField(null=True)
    min_value = models.FloatField(null=True)
    max_step = models.BigIntegerField(null=True)
    max_value = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "key", "level", "bucket"], name="unique_summary_bucket"
            )
        ]


class MlflowExperiment(models.Model):
    """An MLflow experiment (the MLflow-compatible tracking API): a named group of a project's
    runs. Its MLflow id is its primary key as a string; "0", MLflow's default experiment, is
    the project's experiment named "Default"."""

    DEFAULT_NAME = "Default"

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="mlflow_experiments"
    )
    name = models.CharField(max_length=500)
    tags = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="unique_mlflow_experiment")
        ]

    def __str__(self) -> str:
        return self.name


class MlflowRun(models.Model):
    """What MLflow knows about a run that Parity's Run does not: its experiment, its tags
    (key/value, unlike Run.tags) and user. The MLflow run id is the Run's id as a string;
    MLflow params are the run's fingerprint (the config a parity.Monitor sends too)."""

    run = models.OneToOneField(
        Run, on_delete=models.CASCADE, primary_key=True, related_name="mlflow"
    )
    experiment = models.ForeignKey(MlflowExperiment, on_delete=models.CASCADE, related_name="runs")
    tags = models.JSONField(default=dict, blank=True)
    user_id = models.CharField(max_length=250, blank=True)


class PromptSet(models.Model):
    """A named list of prompts; each item is {"prompt": str} or {"messages": [...]}."""

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="prompt_sets", null=True, blank=True
    )
    name = models.CharField(max_length=200)
    items = models.JSONField(default=list)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="unique_prompt_set")
        ]

    def __str__(self) -> str:
        return self.name


class Job(models.Model):
    # From the one table of job kinds (workers.specs.kinds): COMPARISON, REPLAY, CHECKLIST,
    # and PING, a no-op that proves the worker round trip (health, tests).
    Kind = models.TextChoices("Kind", _kind_choices(list(JOB_KINDS)))

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="jobs")
    run = models.ForeignKey(
        Run, on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    kind = models.CharField(max_length=12, choices=Kind.choices)
    spec = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0)
    stage = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    worker_host = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk}"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL

    @property
    def group_name(self) -> str:
        return f"job.{self.pk}"

    def enqueue(self) -> None:
        """Send this job to its queue once the surrounding transaction commits.

        If the broker refuses the message, the job and its run are deleted again and the
        error is raised: from the client's side creation is all or nothing, so a retry
        never leaves a second job queued with no message behind it.
        """

        def send() -> None:
            try:
                self._send()
            except Exception:
                with transaction.atomic():
                    Job.objects.filter(pk=self.pk).delete()
                    if self.run_id is not None:
                        Run.objects.filter(pk=self.run_id).delete()
                raise

        transaction.on_commit(send)

    def _send(self) -> None:
        from dashboard.core.tasks import run_job

        run_job.apply_async((self.pk,), task_id=self.celery_task_id or None)

    @classmethod
    def requeue_lost(cls, older_than_s: float) -> list[int]:
        """Send again the queued jobs whose message the broker no longer holds (lost in a
        broker restart). Only jobs queued for `older_than_s`; nothing when the broker's
        messages cannot be listed. A duplicate message is harmless: `claim` runs a job once.
        """
        from dashboard.core import broker

        queued_before = timezone.now() - timedelta(seconds=older_than_s)
        candidates = list(cls.objects.filter(status=cls.Status.QUEUED, created__lt=queued_before))
        if not candidates:
            return []
        held = broker.message_ids([settings.CELERY_TASK_ROUTES["workers.tasks.run_job"]["queue"]])
        if held is None:
            return []
        resent = []
        for job in candidates:
            if job.celery_task_id in held:
                continue
            new_id = str(uuid.uuid4())
            # Still queued and not re-sent by another sweep meanwhile.
            if cls.objects.filter(
                pk=job.pk, status=cls.Status.QUEUED, celery_task_id=job.celery_task_id
            ).update(celery_task_id=new_id):
                job.celery_task_id = new_id
                job._send()
                log.warning("job %s: its broker message was lost; sent it again", job.pk)
                resent.append(job.pk)
        return resent

    # --- lifecycle, driven by dashboard.core.tasks ---------------------------------------

    def claim(self, host: str, task_id: str, heartbeat_timeout_s: float) -> bool:
        """Take this job for a worker; False when it must not run here.

        A job already final, or running with a fresh heartbeat (another worker has it),
        is left alone, so a re-delivered task message is harmless.
        """
        now = timezone.now()
        stale_before = now - timedelta(seconds=heartbeat_timeout_s)
        taken = (
            Job.objects.filter(pk=self.pk)
            .filter(
                models.Q(status=self.Status.QUEUED)
                | models.Q(status=self.Status.RUNNING, heartbeat_at__lt=stale_before)
            )
            .update(
                status=self.Status.RUNNING,
                worker_host=host,
                celery_task_id=task_id,
                attempts=models.F("attempts") + 1,
                started=now,
                heartbeat_at=now,
                progress=0.0,
                stage="starting",
                error="",
            )
        )
        self.refresh_from_db()
        if taken:
            self._publish()
        return bool(taken)

    def beat(self) -> None:
        Job.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
            heartbeat_at=timezone.now()
        )

    def report(self, stage: str, progress: float | None = None) -> None:
        self.stage = stage[:200]
        if progress is not None:
            self.progress = min(max(progress, 0.0), 1.0)
        self.heartbeat_at = timezone.now()
        self.save(update_fields=["stage", "progress", "heartbeat_at"])
        self._publish()

    def finish(self, status: str, *, error: str = "", result: dict | None = None) -> None:
        self.status = status
        self.error = error
        if result is not None:
            self.result = result
        if status == self.Status.SUCCEEDED:
            self.progress = 1.0
            self.stage = "done"
        self.finished = timezone.now()
        self.save(update_fields=["status", "error", "result", "progress", "stage", "finished"])
        self._publish()

    def _publish(self) -> None:
        from dashboard.core import live

        data = {
            "id": self.pk,
            "status": self.status,
            "progress": self.progress,
            "stage": self.stage,
            "error": self.error,
        }
        groups = [self.group_name] + ([f"run.{self.run_id}"] if self.run_id else [])

        def send() -> None:
            for group in groups:
                live.publish(group, "job", data)

        # Readers who get the message and re-fetch must already see the new row.
        transaction.on_commit(send)

    @classmethod
    def fail_dead(cls, heartbeat_timeout_s: float) -> list[int]:
        """End running jobs whose worker stopped beating (killed, OOM): never running forever."""
        stale_before = timezone.now() - timedelta(seconds=heartbeat_timeout_s)
        dead = list(cls.objects.filter(status=cls.Status.RUNNING, heartbeat_at__lt=stale_before))
        for job in dead:
            job.finish(
                cls.Status.FAILED,
                error=(
                    f"The worker on {job.worker_host or 'an unknown host'} stopped responding "
                    f"during '{job.stage}' (killed or out of memory). Re-run the job; if it "
                    "dies again, lower the batch size or the memory fraction."
                ),
            )
            if job.run_id:
                Run.objects.get(pk=job.run_id).set_status(Run.Status.CRASHED)
        return [job.pk for job in dead]


def start_job(
    project: Project,
    kind: str,
    spec: dict,
    *,
    user: Any = None,
    run_name: str = "",
    tags: list[str] | None = None,
) -> Job:
    """Create a job (and, for engine kinds, its run) and queue it once this commits.

    `spec` must already be validated (workers.specs); what is stored is what runs.
    """
    with transaction.atomic():
        run = None
        if kind in SPEC_KINDS:
            name = run_name or f"{kind}-{timezone.now():%Y%m%d-%H%M%S}"
            if Run.objects.filter(project=project, name=name).exists():
                name = f"{name}-{secrets.token_hex(2)}"
            run = Run.objects.create(
                project=project, name=name, kind=kind, tags=tags or [], fingerprint={"spec": spec}
            )
        job = Job.objects.create(
            project=project,
            run=run,
            kind=kind,
            spec=spec,
            created_by=user,
            # Known before sending: the sweep finds the job's message in the broker by it.
            celery_task_id=str(uuid.uuid4()),
        )
        job.enqueue()
    return job
