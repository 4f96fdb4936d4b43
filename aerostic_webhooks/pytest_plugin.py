"""pytest fixtures for testing your handlers, registered through the ``pytest11`` entry point.

``aerostic_secret`` (a secret), ``aerostic_signer`` (payload -> ``(body, headers)``) and
``aerostic_receiver`` (a ``WebhookReceiver`` on a ``MemoryStore``, closed after the test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .receiver import WebhookReceiver
from .stores.memory import MemoryStore
from .testing import Payload, request_for

__all__ = ["aerostic_receiver", "aerostic_secret", "aerostic_signer"]


@pytest.fixture
def aerostic_secret() -> str:
    """The webhook secret of the test's receiver."""
    return "whsec_pytest_aerostic_webhooks"


@pytest.fixture
def aerostic_signer(aerostic_secret: str) -> Callable[[Payload], tuple[bytes, dict[str, str]]]:
    """Signs a payload (a dict, bytes, or a documented event type) as Aerostic does."""

    def signer(payload: Payload) -> tuple[bytes, dict[str, str]]:
        return request_for(payload, aerostic_secret)

    return signer


@pytest.fixture
def aerostic_receiver(aerostic_secret: str) -> Iterator[WebhookReceiver]:
    """A receiver on an in-memory store with instant retries; ``drain()`` runs the handlers."""
    with WebhookReceiver(aerostic_secret, store=MemoryStore(), retry_delays=(0, 0)) as receiver:
        yield receiver
