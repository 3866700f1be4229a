"""The job task (queue "gpu"): thin. Load the job by id, call its runner, store the outcome.

This is the only module that moves data between the ORM and the engine code: a runner
(`workers.specs.kinds.JOB_KINDS[kind].runner`) gets the stored spec and a reporter and returns
a `JobOutcome`; it never sees a model. The registered task names are the ones of the module
this used to be (`workers.tasks`), so that messages already queued still run.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

from dashboard.core.models import Job, Run
from dashboard.core.points import store_step_values
from workers.reporting import JobOutcome, Reporter, UserError, json_safe
from workers.specs.kinds import JOB_KINDS

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 10.0


T = TypeVar("T")


class DatabaseUnreachable(Exception):
    """Postgres stayed unreachable past the job's retry window."""


def with_db_retry(write: Callable[[], T], what: str, patience: float = 1.0) -> T:
    """Run one database write of a job, riding out a short Postgres outage: on a lost
    connection, drop it and try again (backing off up to 5 s) for JOB_DB_RETRY_S (times
    `patience`)."""
    window_s = settings.JOB_DB_RETRY_S * patience
    deadline = time.monotonic() + window_s
    delay = 0.5
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnreachable(
                    f"Postgres was unreachable for over {window_s:.0f} s "
                    f"while {what}: {str(exc).strip()}"
                ) from exc
            log.warning("database unreachable while %s; retrying", what)
            connection.close()  # the next query opens a fresh connection
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


class JobReporter:
    """Reporter that writes progress to the Job row and streams it to the browser."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def stage(self, message: str, progress: float | None = None) -> None:
        with_db_retry(lambda: self.job.report(message, progress), "saving progress")

    def step_values(self, step: int, values: Mapping[str, float]) -> None:
        if self.job.run is not None:
            run = self.job.run
            with_db_retry(lambda: store_step_values(run, step, values), "saving step values")


def _runner(kind: str) -> Callable[[Mapping[str, Any], Reporter], JobOutcome]:
    # Imported here, on the worker: the engine modules pull in torch and vLLM.
    module, _, name = JOB_KINDS[kind].runner.partition(":")
    return getattr(importlib.import_module(module), name)


class _Heartbeat(threading.Thread):
    def __init__(self, job: Job) -> None:
        super().__init__(daemon=True, name=f"heartbeat-job-{job.pk}")
        self.job = job
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_EVERY_S):
            try:
                self.job.beat()
            except Exception:  # noqa: BLE001 - a missed beat must not kill the job
                log.warning("heartbeat for job %s failed", self.job.pk, exc_info=True)


class _TimeLimits:
    """Soft and hard time limits for the solo pool, where Celery enforces neither.

    The gpu worker runs tasks in its main thread (`--pool solo`: vLLM must be able to spawn
    its engine process, which a daemonic prefork child cannot). SIGALRM raises
    SoftTimeLimitExceeded in that thread; past the hard limit a watchdog ends the job as
    failed and exits the process, so that a wedged engine never holds the queue.
    """

    def __init__(self, job: Job, soft_s: float, hard_s: float) -> None:
        self.job, self.soft_s, self.hard_s = job, soft_s, hard_s
        self.done = threading.Event()
        self.use_alarm = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> _TimeLimits:
        if self.use_alarm:
            signal.signal(signal.SIGALRM, self._soft)
            signal.setitimer(signal.ITIMER_REAL, self.soft_s)
        threading.Thread(target=self._watchdog, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _soft(self, signum: int, frame: object) -> None:
        raise SoftTimeLimitExceeded()

    def _watchdog(self) -> None:
        if self.done.wait(self.hard_s):
            return
        log.error("job %s ran past its hard limit; exiting the worker", self.job.pk)
        message = f"The job ran past its hard time limit ({self.hard_s:.0f} s)"
        _fail(self.job, message + "; its worker was restarted.")
        os._exit(1)


@shared_task(bind=True, name="workers.tasks.run_job")
def run_job(self: Any, job_id: int) -> None:
    job = Job.objects.select_related("run").filter(pk=job_id).first()
    if job is None:
        log.warning("job %s no longer exists", job_id)
        return
    if not job.claim(socket.gethostname(), self.request.id or "", settings.JOB_HEARTBEAT_TIMEOUT_S):
        log.info("job %s is %s elsewhere; skipping", job_id, job.status)
        return
    if job.run is not None:
        job.run.set_status(Run.Status.RUNNING)
    heartbeat = _Heartbeat(job)
    heartbeat.start()
    limits = _TimeLimits(job, settings.JOB_SOFT_LIMIT_S, settings.JOB_HARD_LIMIT_S)
    try:
        with limits:
            outcome = _runner(job.kind)(job.spec, JobReporter(job))
    except UserError as exc:
        _fail(job, str(exc))
    except DatabaseUnreachable as exc:
        log.error("job %s: %s", job_id, exc)
        _fail(job, f"The job stopped because {exc}. Re-run it once Postgres is back.")
    except SoftTimeLimitExceeded:
        _fail(
            job, f"The job ran past its time limit ({settings.JOB_SOFT_LIMIT_S} s) and was stopped."
        )
    except Exception as exc:  # noqa: BLE001 - any crash ends the job as failed, visibly
        log.exception("job %s crashed", job_id)
        _fail(job, f"Internal error: {type(exc).__name__}: {exc}")
    else:
        try:
            with_db_retry(lambda: _succeed(job, outcome), "saving the result")
        except Exception as exc:  # noqa: BLE001 - a result that cannot be saved fails the job now
            log.exception("job %s: saving its result failed", job_id)
            with_db_retry(job.refresh_from_db, "reloading the job")  # drop the unsaved result
            _fail(job, f"The job's result could not be saved: {type(exc).__name__}: {exc}")
    finally:
        heartbeat.stopped.set()


def _succeed(job: Job, outcome: JobOutcome) -> None:
    # Every runner's outcome passes here: one place makes it storable (NaN, NUL, numpy).
    outcome.result = json_safe(outcome.result)
    outcome.fingerprint = json_safe(outcome.fingerprint)
    with transaction.atomic():
        run = job.run
        if run is not None:
            for step, values in sorted(outcome.step_values.items()):
                store_step_values(run, step, values)
            run.fingerprint = outcome.fingerprint or run.fingerprint
            run.verdict = outcome.verdict
            run.save(update_fields=["fingerprint", "verdict"])
            run.set_status(Run.Status.FINISHED)
        job.finish(Job.Status.SUCCEEDED, result=outcome.result)


def _fail(job: Job, message: str) -> None:
    def write() -> None:
        with transaction.atomic():
            if job.run is not None:
                job.run.set_status(Run.Status.FAILED)
            job.finish(Job.Status.FAILED, error=message)

    # More patient than progress writes: this one is what tells the user why.
    with_db_retry(write, "saving the job's failure", patience=5)


@shared_task(name="workers.tasks.fail_dead_jobs")
def fail_dead_jobs() -> list[int]:
    return Job.fail_dead(settings.JOB_HEARTBEAT_TIMEOUT_S)


@shared_task(name="dashboard.core.tasks.requeue_lost_jobs")
def requeue_lost_jobs() -> list[int]:
    return Job.requeue_lost(settings.JOB_REQUEUE_AFTER_S)
