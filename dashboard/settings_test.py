"""Settings for the test suite: the same real services, on their own Redis database.

Tests and the processes they start (daphne, Celery workers) use this module, so a running
demo on the default Redis database is never disturbed by a test run, nor the other way round.
"""

from __future__ import annotations

import os

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
os.environ.setdefault("CHANNELS_PREFIX", "parity-test")

from dashboard.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
JOB_HEARTBEAT_TIMEOUT_S = int(os.environ.get("JOB_HEARTBEAT_TIMEOUT_S", 20))
# One test database per test process: several suites (developers, CI) may run side by side.
DATABASES["default"]["TEST"] = {"NAME": f"test_parity_{os.getpid()}"}  # noqa: F405
# Close connections after each use: threads of async tests must not keep the test DB busy
# (it is dropped at the end of the session).
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
