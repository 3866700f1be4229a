"""The migrations describe the models as they are: model choices come from tables in code
(Job.Kind and Run.Kind from workers.specs.kinds), so a new job kind needs a migration too."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def test_no_model_change_lacks_a_migration(capsys: Any) -> None:
    try:
        call_command("makemigrations", "--check", "--dry-run", verbosity=1)
    except SystemExit:
        pytest.fail("models changed without a migration:\n" + capsys.readouterr().out)


def test_job_and_run_kinds_are_the_table_of_job_kinds() -> None:
    from dashboard.core.models import Job, Run
    from workers.specs import JOB_KINDS, SPEC_KINDS

    assert dict(Job.Kind.choices) == {k.name: k.label for k in JOB_KINDS.values()}
    assert Run.Kind.values == ["training", *SPEC_KINDS]
