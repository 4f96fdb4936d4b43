"""The ``AEROSTIC_WEBHOOKS`` setting, read and checked in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal

from django.conf import settings

from ..receiver import DEFAULT_MAX_BODY_BYTES
from ..worker import is_number, lease_works, offset_fits, retention_works

__all__ = ["WebhookSettings", "webhook_settings"]

SETTING = "AEROSTIC_WEBHOOKS"


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    """What the app was configured with; ``problems`` holds (check id, message) pairs."""

    secrets: tuple[str, ...]
    max_body_bytes: int
    retention: timedelta
    worker: Literal["thread", "external"]
    concurrency: int
    lease_seconds: float
    database: str
    problems: tuple[tuple[str, str], ...]


def webhook_settings() -> WebhookSettings:
    problems: list[tuple[str, str]] = []
    value = getattr(settings, SETTING, None) or {}
    if not isinstance(value, Mapping):
        problems.append(
            ("E007", f"{SETTING} must be a dict such as {{'SECRET': ...}}, not a {_kind(value)}")
        )
        value = {}
    raw: dict[str, Any] = dict(value)
    secrets = raw.get("SECRETS")
    if secrets is None:
        secrets = [raw.get("SECRET")] if raw.get("SECRET") is not None else []
    elif isinstance(secrets, str):
        secrets = [secrets]
    if not isinstance(secrets, (list, tuple)) or not all(isinstance(s, str) for s in secrets):
        key = "SECRETS" if "SECRETS" in raw else "SECRET"
        problems.append(("E001", f"{SETTING}['{key}'] must be a string or a list of strings"))
        secrets = None
    # Stripped: a secret read from a file often ends with a newline.
    secrets = [s.strip() for s in secrets or () if isinstance(s, str) and s.strip()]
    if not secrets and not problems:
        problems.append(("E001", f"{SETTING}['SECRET'] (or 'SECRETS') is missing or empty"))
    max_body_bytes = raw.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
    if not _positive_int(max_body_bytes):
        problems.append(("E002", f"{SETTING}['MAX_BODY_BYTES'] must be a positive integer"))
        max_body_bytes = DEFAULT_MAX_BODY_BYTES
    retention = raw.get("RETENTION", timedelta(days=7))
    if is_number(retention):
        retention = timedelta(seconds=retention) if offset_fits(retention) else None
    if not isinstance(retention, timedelta) or not retention_works(retention):
        problems.append(
            ("E003", f"{SETTING}['RETENTION'] must be a positive timedelta or seconds, finite")
        )
        retention = timedelta(days=7)
    worker = raw.get("WORKER", "thread")
    if worker not in ("thread", "external"):
        problems.append(
            ("E004", f"{SETTING}['WORKER'] must be 'thread' or 'external', not {worker!r}")
        )
        worker = "thread"
    concurrency = raw.get("CONCURRENCY", 4)
    if not _positive_int(concurrency):
        problems.append(("E005", f"{SETTING}['CONCURRENCY'] must be a positive integer"))
        concurrency = 4
    lease_seconds = raw.get("LEASE_SECONDS", 30.0)
    if not is_number(lease_seconds) or not lease_works(lease_seconds):
        problems.append(("E006", f"{SETTING}['LEASE_SECONDS'] must be a positive, finite number"))
        lease_seconds = 30.0
    database = raw["DATABASE"] if raw.get("DATABASE") is not None else _routed_database()
    if not isinstance(database, str) or database not in settings.DATABASES:
        problems.append(
            ("E008", f"{SETTING}['DATABASE'] names no database of DATABASES: {database!r}")
        )
    return WebhookSettings(
        secrets=tuple(secrets),
        max_body_bytes=max_body_bytes,
        retention=retention,
        worker=worker,
        concurrency=concurrency,
        lease_seconds=float(lease_seconds),
        database=str(database),
        problems=tuple(problems),
    )


def _routed_database() -> str:
    """Where the project's DATABASE_ROUTERS send the table's writes ("default" without any)."""
    from django.db import router

    from .models import WebhookEvent

    return str(router.db_for_write(WebhookEvent))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _kind(value: object) -> str:
    return type(value).__name__
