"""Django settings, read from the environment.

Defaults point at the local Postgres and Redis so that a fresh clone runs with no
configuration; production sets DEBUG=0 and real secrets (see README).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "dev-only-insecure-key-change-me"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
SITE_URL = os.environ.get("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "channels",
    "axes",
    "dashboard.core",
    "dashboard.alerts",
    "dashboard.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "dashboard.core.middleware.RefuseUnstorableText",
    "dashboard.core.middleware.OutagePage",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "dashboard.core.auth.LoginRequiredMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

# Login throttling (django-axes): after AXES_FAILURE_LIMIT wrong passwords for one user from
# one address, that pair is locked out for AXES_COOLOFF_TIME hours (429); a success resets.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("LOGIN_FAILURE_LIMIT", 10))
AXES_COOLOFF_TIME = float(os.environ.get("LOGIN_COOLOFF_HOURS", 0.25))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no banner on every manage.py command

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"
ASGI_APPLICATION = "dashboard.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/parity"),
        conn_max_age=60,
        conn_health_checks=True,
    )
}
if os.environ.get("PARITY_WEB_PROCESS") == "1":  # set by dashboard.asgi
    # Each request closes its connection and the next one reuses it (dashboard.core.db.base):
    # under ASGI a persistent connection never outlives its request's thread.
    DATABASES["default"].update(ENGINE="dashboard.core.db", CONN_MAX_AGE=0, IDLE_CONNECTIONS=16)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub: a group message crosses Redis once per web process and is handed to
        # that process's sockets there. The list-based layer queued one copy per socket and
        # popped them one blocking read at a time: with 50 viewers of a run, the last one
        # waited for 49 round trips (#15, live latency). Live updates were never kept for a
        # socket that is away (pages back-fill from the API), so nothing is lost by it.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            # A read must outwait any blocking wait on the connection (5 s in redis-py's
            # default made idle sockets die with 1011 under the list-based layer).
            "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
            "prefix": os.environ.get("CHANNELS_PREFIX", "parity"),
        },
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# In development whitenoise serves straight from static/ (no collectstatic needed).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Request bodies over these are refused with 413 before anything reads them
# (dashboard.core.body_limit). Large raw-logprob uploads (millions of tokens) go through
# their own ingest routes; everything else (10,000 points, an MLflow batch, a form) is small.
REQUEST_BODY_MAX_BYTES = int(os.environ.get("REQUEST_BODY_MAX_BYTES", 16 * 1024 * 1024))
REQUEST_BODY_LIMITS = [(r"^/api/runs/\d+/logprobs", 256 * 1024 * 1024)]
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024 * 1024

# --- Celery -----------------------------------------------------------------------------
# The longest job (a full migration checklist on a big model) stays under JOB_HARD_LIMIT_S;
# the broker must not re-deliver a job that is still running, so the visibility timeout is
# longer than that.
JOB_SOFT_LIMIT_S = int(os.environ.get("JOB_SOFT_LIMIT_S", 3 * 3600))
JOB_HARD_LIMIT_S = JOB_SOFT_LIMIT_S + 300
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None  # results live in Postgres (Job rows), never only in Redis
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = JOB_SOFT_LIMIT_S
CELERY_TASK_TIME_LIMIT = JOB_HARD_LIMIT_S
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": JOB_HARD_LIMIT_S + 3600}
CELERY_TASK_DEFAULT_QUEUE = "default"
# The job task keeps the name of its first home (queued messages carry it).
CELERY_TASK_ROUTES = {"workers.tasks.run_job": {"queue": "gpu"}}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A job whose heartbeat is older than this is considered dead (worker killed, OOM).
JOB_HEARTBEAT_TIMEOUT_S = int(os.environ.get("JOB_HEARTBEAT_TIMEOUT_S", 120))
# A job's writes (progress, result) ride out a Postgres outage this long before it fails.
JOB_DB_RETRY_S = float(os.environ.get("JOB_DB_RETRY_S", 60))
# A job queued this long whose message the broker no longer holds is sent again.
JOB_REQUEUE_AFTER_S = float(os.environ.get("JOB_REQUEUE_AFTER_S", 60))

# Where the tiny demo/test models are built.
PARITY_MODELS_DIR = Path(os.environ.get("PARITY_MODELS_DIR", BASE_DIR / "var" / "models"))

# --- Production hardening (checked by `manage.py check --deploy`) -----------------------
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 31536000))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}

# --- Alerts and webhooks (dashboard.alerts) ---------------------------------------------
# Hosts (names, IPs or networks such as 10.1.0.0/16) that webhooks may reach even though they
# resolve to non-public addresses: on-prem receivers, and the tests' local receiver.
WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS", "")
# `make demo` runs a webhook receiver on this local port (allow-listed for the demo only).
DEMO_RECEIVER_PORT = int(os.environ.get("DEMO_RECEIVER_PORT", 8001))
DEMO_RECEIVER_SECRET_FILE = BASE_DIR / "var" / "demo-receiver-secret"
WEBHOOK_CONNECT_TIMEOUT_S = float(os.environ.get("WEBHOOK_CONNECT_TIMEOUT_S", 3))
WEBHOOK_TOTAL_TIMEOUT_S = float(os.environ.get("WEBHOOK_TOTAL_TIMEOUT_S", 10))
# Retries: base * 2^(n-1) with jitter, capped, for at least WEBHOOK_RETRY_FOR_S.
WEBHOOK_RETRY_BASE_S = float(os.environ.get("WEBHOOK_RETRY_BASE_S", 10))
WEBHOOK_RETRY_MAX_S = float(os.environ.get("WEBHOOK_RETRY_MAX_S", 3600))
WEBHOOK_RETRY_FOR_S = float(os.environ.get("WEBHOOK_RETRY_FOR_S", 24 * 3600))
# Retries due within this many seconds are queued as Celery countdowns; later ones are
# left to the sweep instead of waiting in a worker's memory.
WEBHOOK_ETA_MAX_S = float(os.environ.get("WEBHOOK_ETA_MAX_S", 300))
# A delivery "sending" for longer than this lost its worker (must exceed the total timeout).
WEBHOOK_SENDING_STALE_S = float(os.environ.get("WEBHOOK_SENDING_STALE_S", 60))
WEBHOOK_SWEEP_EVERY_S = float(os.environ.get("WEBHOOK_SWEEP_EVERY_S", 10))
WEBHOOK_EXCERPT_CHARS = int(os.environ.get("WEBHOOK_EXCERPT_CHARS", 1000))
# The Celery queue deliveries go to ("default"; tests use their own so parallel suites and
# their workers never take each other's deliveries).
WEBHOOK_QUEUE = os.environ.get("WEBHOOK_QUEUE", "default")
# --- end alerts ---------------------------------------------------------------------------
