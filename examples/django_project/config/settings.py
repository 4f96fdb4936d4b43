"""Settings of a minimal Django project receiving Aerostic webhooks.

From the repository root, with the package installed (``pip install -e '.[django]'``)::

    export AEROSTIC_WEBHOOK_SECRET=whsec_...
    python examples/django_project/manage.py migrate
    python examples/django_project/manage.py runserver

Aerostic then POSTs to ``http://<host>/webhooks/aerostic/``. In production, serve
``config.wsgi:application`` with gunicorn or ``config.asgi:application`` with uvicorn, from
this directory. Environment:

- ``AEROSTIC_WEBHOOK_SECRET``: the webhook secret. Missing or empty, ``manage.py check`` (and
  ``migrate``, ``runserver``) report ``aerostic_webhooks.E001``, and the WSGI and ASGI
  applications refuse to start.
- ``AEROSTIC_WEBHOOKS_WORKER``: ``thread`` (default: each web process runs the signal
  receivers on its own background threads) or ``external`` (web processes only record; run
  ``manage.py aerostic_webhooks_worker`` beside them).
- ``DJANGO_DB_PATH``: the SQLite file (default ``db.sqlite3`` beside ``manage.py``).
- ``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG=1``, ``DJANGO_ALLOWED_HOSTS`` (comma-separated).
"""

from __future__ import annotations

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent

# Django's own key (sessions, admin), not the webhook secret. Set it outside development.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only-set-a-real-key")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "aerostic_webhooks.django",
    "webhooks_demo",  # connects the signal receivers in webhooks_demo/receivers.py
]

# The webhook view is CSRF-exempt by itself (the signature is its check): keep the middleware.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# One SQLite file shared by every web process and the worker: WAL lets readers and the
# writer work side by side, IMMEDIATE transactions wait for the write lock (up to `timeout`
# seconds) instead of failing with "database is locked" halfway through. Django 4.2 and 5.0
# have neither option (both came in 5.1): there, SQLite runs with its defaults.
SQLITE_OPTIONS: dict[str, object] = {"timeout": 20}
if django.VERSION >= (5, 1):
    SQLITE_OPTIONS |= {
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": SQLITE_OPTIONS,
    }
}

AEROSTIC_WEBHOOKS = {
    # For a rotation, use "SECRETS": ["whsec_new", "whsec_old"] instead.
    "SECRET": os.environ.get("AEROSTIC_WEBHOOK_SECRET", ""),
    "WORKER": os.environ.get("AEROSTIC_WEBHOOKS_WORKER", "thread"),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "aerostic_webhooks": {"handlers": ["console"], "level": "INFO"},
        "webhooks_demo": {"handlers": ["console"], "level": "INFO"},
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
