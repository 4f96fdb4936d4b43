"""Django settings for the test suite (also what mypy's django-stubs plugin reads)."""

from __future__ import annotations

import os
import tempfile

import django

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "tests.django_urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "aerostic_webhooks.django",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
if django.VERSION >= (5, 1):  # the view must get through it, where it exists
    MIDDLEWARE.insert(-1, "django.contrib.auth.middleware.LoginRequiredMiddleware")
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
# A file, not Django's in-memory test database: shared-cache memory databases lock whole tables
# and refuse concurrent writers at once instead of waiting, unlike any real deployment.
_SQLITE = os.path.join(tempfile.gettempdir(), f"aerostic-webhooks-test-{os.getpid()}.sqlite3")
DATABASES: dict[str, dict[str, object]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _SQLITE,
        "TEST": {"NAME": _SQLITE},
        "OPTIONS": {"timeout": 20},
    },
}
POSTGRES: dict[str, object] = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": os.environ.get("AEROSTIC_TEST_PG_NAME", "test"),
    "USER": os.environ.get("AEROSTIC_TEST_PG_USER", "postgres"),
    "HOST": os.environ.get("AEROSTIC_TEST_PG_HOST", "127.0.0.1"),
    "PORT": os.environ.get("AEROSTIC_TEST_PG_PORT", "5432"),
    # A test database of this run's own: two runs on one server must not drop each other's.
    "TEST": {"NAME": f"test_aerostic_webhooks_{os.getpid()}"},
}


def _postgres_reachable() -> bool:
    try:
        import psycopg

        psycopg.connect(
            dbname=str(POSTGRES["NAME"]),
            user=str(POSTGRES["USER"]),
            host=str(POSTGRES["HOST"]),
            port=str(POSTGRES["PORT"]),
            connect_timeout=2,
        ).close()
    except Exception:
        return False
    return True


POSTGRES_AVAILABLE = _postgres_reachable()
if POSTGRES_AVAILABLE:
    DATABASES["postgres"] = POSTGRES
AEROSTIC_WEBHOOKS = {
    "SECRET": "whsec_adapter_secret",
    "MAX_BODY_BYTES": 4096,
}
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
