"""The response contract: every outcome maps to the status and body DESIGN.md's table gives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from aerostic_webhooks import (
    InvalidPayload,
    InvalidSignature,
    MessageReceived,
    PayloadTooLarge,
    ProcessingFailed,
    Receipt,
    StoreUnavailable,
    WebhookError,
    parse_event,
)
from aerostic_webhooks.response import CONTENT_TYPE, read_limited, read_limited_async, render
from aerostic_webhooks.testing import sample_body

CONTRACT = [
    (InvalidSignature, 401, {"error": "Invalid signature"}),
    (InvalidPayload, 400, {"error": "Invalid payload"}),
    (PayloadTooLarge, 413, {"error": "Payload too large"}),
    (StoreUnavailable, 503, {"error": "Temporarily unavailable"}),
    (ProcessingFailed, 500, {"error": "Processing failed"}),
]


@pytest.mark.parametrize("duplicate", [False, True])
def test_accepted_new_or_duplicate(duplicate: bool) -> None:
    event = parse_event(sample_body("message.received"))
    assert isinstance(event, MessageReceived)
    status, body = render(Receipt(event, "message.received:msg_abc123", duplicate))
    assert status == 200
    assert json.loads(body) == {"received": True}


@pytest.mark.parametrize(("error_class", "status", "payload"), CONTRACT)
def test_errors(error_class: type[WebhookError], status: int, payload: dict[str, str]) -> None:
    error = error_class("internal detail with +919876543210 that must not leak")
    assert error.status_code == status
    rendered_status, body = render(error)
    assert rendered_status == status
    assert json.loads(body) == payload
    assert b"9876543210" not in body


def test_content_type_is_json() -> None:
    assert CONTENT_TYPE == "application/json"


def test_error_reason_is_kept_for_the_log_only() -> None:
    error = InvalidSignature("signature does not match any secret")
    assert error.reason == "signature does not match any secret"
    assert error.public_message == "Invalid signature"
    assert InvalidSignature().reason == "Invalid signature"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12", 12),
        (" 12 ", 12),
        ("", None),
        (None, None),
        ("-1", None),
        ("1e3", None),
        ("\u00b2", None),
        ("\u0663", None),
        ("12abc", None),
        (7, 7),
    ],
)
def test_declared_length_takes_only_ascii_digits(value: object, expected: int | None) -> None:
    from aerostic_webhooks.response import declared_length

    assert declared_length(value) == expected  # type: ignore[arg-type]


def test_running_out_of_memory_while_reading_is_not_a_bad_payload() -> None:
    """A 400 tells the sender not to retry; memory running out is ours, so it stays a 500."""

    def read(size: int) -> bytes:
        raise MemoryError

    async def chunks() -> AsyncIterator[bytes]:
        yield b"{"
        raise MemoryError

    with pytest.raises(MemoryError):
        read_limited(read, 100)
    with pytest.raises(MemoryError):
        asyncio.run(read_limited_async(chunks(), 100))


def test_a_body_the_server_cannot_deliver_is_an_invalid_payload() -> None:
    def read(size: int) -> bytes:
        raise ConnectionResetError("client went away mid-body")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"{"
        raise ConnectionResetError("client went away mid-body")

    with pytest.raises(InvalidPayload):
        read_limited(read, 100)
    with pytest.raises(InvalidPayload):
        asyncio.run(read_limited_async(chunks(), 100))
