from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import pytest

from aerostic_webhooks import MemoryStore, WebhookReceiver

SECRET = "whsec_test_secret"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition``: what the worker's threads do has nothing to wait on otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


VERSIONED = ("pydantic", "flask", "werkzeug", "django", "starlette", "fastapi", "httpx", "redis")


def pytest_report_header() -> str:
    """The versions under test, so a matrix run's log says what it ran against."""
    versions = []
    for name in VERSIONED:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    python = ".".join(map(str, sys.version_info[:3]))
    return f"aerostic-webhooks against: python {python}, " + ", ".join(versions)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A background receiver on a MemoryStore with instant retries, closed after the test."""
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=(0, 0)) as webhooks:
        yield webhooks


@pytest.fixture(autouse=True)
def _no_stray_inbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver built with the default store writes into the test's own directory."""
    monkeypatch.setenv("AEROSTIC_WEBHOOKS_DB", os.path.join(str(tmp_path), "inbox.sqlite3"))


REDIS_URL = os.environ.get("AEROSTIC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def service_missing(name: str, reason: str) -> None:
    """Skip when a service is absent, but fail when CI said services must be there."""
    message = f"{name} is not available ({reason})"
    if os.environ.get("AEROSTIC_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}, and AEROSTIC_REQUIRE_SERVICES=1 requires it")
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    """The test Redis (database 15 of 127.0.0.1:6379 unless AEROSTIC_TEST_REDIS_URL says)."""
    try:
        import redis
    except ImportError:
        service_missing("Redis", "the redis package is not installed: pip install -e '.[redis]'")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        service_missing("Redis", f"{REDIS_URL}: {error}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of the test's own, deleted afterwards."""
    import uuid

    import redis

    prefix = f"aerostic_webhooks_test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
