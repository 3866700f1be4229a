"""Create the demo user and project (idempotent) and print how to log in."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand

from dashboard.core.models import Membership, Project

DEMO_USER = "demo"
DEMO_PASSWORD = "parity-demo"


class Command(BaseCommand):
    help = "Create the demo user and project, and seed them with example runs."

    def handle(self, *args: Any, **options: Any) -> None:
        user, created = User.objects.get_or_create(username=DEMO_USER)
        if created:
            user.set_password(DEMO_PASSWORD)
            user.is_staff = True
            user.is_superuser = True
            user.save()
        project, _ = Project.objects.get_or_create(slug="demo", defaults={"name": "Demo"})
        Membership.objects.get_or_create(user=user, project=project, defaults={"role": "owner"})
        self.stdout.write(
            self.style.SUCCESS(f"Demo login: user '{DEMO_USER}', password '{DEMO_PASSWORD}'")
        )
