from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aerostic_webhooks import MemoryStore, WebhookReceiver

SECRET = "whsec_test_secret"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A background receiver on a MemoryStore with instant retries, closed after the test."""
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=(0, 0)) as webhooks:
        yield webhooks


@pytest.fixture(autouse=True)
def _no_stray_inbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver built with the default store writes into the test's own directory."""
    monkeypatch.setenv("AEROSTIC_WEBHOOKS_DB", os.path.join(str(tmp_path), "inbox.sqlite3"))
