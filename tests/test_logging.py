"""What reaches the logs: rejections at WARNING with a reason; never secrets or message content."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from aerostic_webhooks import (
    Event,
    InvalidPayload,
    InvalidSignature,
    MemoryStore,
    PayloadTooLarge,
    WebhookError,
    WebhookReceiver,
    sign,
)
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body, sample_payload

from .conftest import wait_until

SECRETS = ["whsec_current_TOPSECRET", "whsec_previous_TOPSECRET"]
PHONE = "+919876543210"
TEXT = "Hi, I need help with my order"


def test_a_full_run_logs_no_secret_signature_phone_or_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aerostic_webhooks")
    signatures: list[str] = []
    with WebhookReceiver(
        SECRETS, store=MemoryStore(), retry_delays=(0,), max_body_bytes=4096
    ) as webhooks:

        @webhooks.on("*")
        def fails(event: Event) -> None:
            raise RuntimeError("handler failed")

        webhooks.on_error(lambda event, error: None)
        for event_type in SAMPLE_PAYLOADS:
            body = sample_body(event_type)
            signature = sign(body, SECRETS[0])
            signatures.append(signature)
            webhooks.receive(body, {"X-Aerostic-Signature": signature})
            webhooks.receive(body, {"X-Aerostic-Signature": signature})  # duplicate
        body = sample_body("message.received", id="forged")
        forged = sign(body, "not the secret")
        signatures.append(forged)
        rejections = [
            (body, {"X-Aerostic-Signature": forged}),
            (body, {"X-Aerostic-Signature": "sha1=" + forged[7:]}),
            (body, {}),
            (b"x" * 5000, {}),
        ]
        payload = sample_payload("message.received")
        payload["timestamp"] = "yesterday"  # signed, but not a valid event: its text stays out
        invalid = json.dumps(payload).encode()
        signatures.append(sign(invalid, SECRETS[0]))
        rejections.append((invalid, {"X-Aerostic-Signature": signatures[-1]}))
        for bad_body, headers in rejections:
            with pytest.raises(WebhookError):
                webhooks.receive(bad_body, headers)
        assert webhooks.drain(5)

    # Every level: the README promises these never reach a log, DEBUG included.
    visible = [r for r in caplog.records if r.name.startswith("aerostic_webhooks")]
    text = "\n".join(
        r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in visible
    )
    assert visible, "the run should have logged rejections and failures"
    for secret in SECRETS:
        assert secret not in text
    for signature in signatures:
        assert signature[7:] not in text
        assert signature[7:23] not in text  # not even a prefix of the hex
    assert PHONE not in text
    assert "9876543210" not in text
    assert TEXT not in text
    assert "John Doe" not in text


@pytest.mark.parametrize(
    ("body", "headers", "error", "reason"),
    [
        (b"{}", {}, InvalidSignature, "signature header missing"),
        (b"{}", {"X-Aerostic-Signature": "md5=abc"}, InvalidSignature, "malformed"),
        (b"{}", {"X-Aerostic-Signature": sign(b"{}", "x")}, InvalidSignature, "does not match"),
        (b"x" * 2000, {}, PayloadTooLarge, "over the limit"),
        (b"nope", {"X-Aerostic-Signature": sign(b"nope", "s")}, InvalidPayload, "invalid JSON"),
    ],
)
def test_each_rejection_is_logged_at_warning_with_its_reason(
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    headers: dict[str, str],
    error: type[WebhookError],
    reason: str,
) -> None:
    with (
        WebhookReceiver("s", store=MemoryStore(), max_body_bytes=1000) as webhooks,
        pytest.raises(error),
    ):
        webhooks.receive(body, headers)
    [logged] = [r for r in caplog.records if r.name == "aerostic_webhooks"]
    assert logged.levelno == logging.WARNING
    assert reason in logged.getMessage()


def test_a_store_error_is_logged_by_its_type_and_first_line_only() -> None:
    """What a log says of a store's or database's error: the lines after the first may quote
    the row a database refused (PostgreSQL's DETAIL), payload and all."""
    from aerostic_webhooks.errors import error_summary

    detail = f'violates check constraint "c"\nDETAIL:  Failing row contains ({PHONE}, {TEXT})'
    assert error_summary(ValueError(detail)) == 'ValueError: violates check constraint "c"'
    assert error_summary(OSError()) == "OSError"
    long = error_summary(RuntimeError("x" * 5000 + "\nmore"))
    assert len(long) == 200 and long.endswith("...")
    assert error_summary(RuntimeError("a\x00b")) == "RuntimeError: a\\x00b"
    # Text no UTF-8 stream can write (a lone surrogate) would make the log handler fail.
    assert error_summary(RuntimeError("caf\udce9")) == "RuntimeError: caf\\udce9"

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    assert error_summary(Unprintable()) == "Unprintable: <its message could not be read>"


@pytest.mark.parametrize("failing", ["claim", "purge", "renew", "maintain"])
def test_a_store_error_in_full_is_logged_at_debug_only(
    caplog: pytest.LogCaptureFixture, failing: str
) -> None:
    """The worker logs a failing store call by its summary at WARNING; the whole error, with
    its traceback and the lines that may quote a row, only at DEBUG, for whoever debugs a
    store with the library's logger turned up."""
    detail = f'violates check constraint "c"\nDETAIL:  Failing row contains ({PHONE}, {TEXT})'

    class Refusing(MemoryStore):
        def __getattribute__(self, name: str) -> Any:
            if name == failing:

                def refuse(*args: Any, **kwargs: Any) -> Any:
                    raise ValueError(detail)

                return refuse
            return super().__getattribute__(name)

    caplog.set_level(logging.DEBUG, logger="aerostic_webhooks")
    with WebhookReceiver(SECRETS, store=Refusing(), lease_seconds=0.3) as receiver:
        receiver.on("*")(lambda event: wait_until(lambda: any(r.exc_info for r in caplog.records)))
        receiver.start()
        if failing == "renew":  # a handler running as the leases are renewed
            body = sample_body("message.received")
            receiver.receive(body, {"X-Aerostic-Signature": sign(body, SECRETS[0])})
        assert wait_until(lambda: any(r.exc_info for r in caplog.records))
    ours = [r for r in caplog.records if r.name == "aerostic_webhooks"]
    loud = [r for r in ours if r.levelno >= logging.INFO]
    assert loud, "the failing claim was not logged at WARNING"
    for record in loud:
        assert record.exc_info is None and PHONE not in record.getMessage(), record.getMessage()
    full = [r for r in ours if r.exc_info is not None]
    assert full and all(r.levelno == logging.DEBUG for r in full)
    exc_info = full[0].exc_info
    assert exc_info is not None and PHONE in str(exc_info[1])  # the whole error is there


def test_a_failed_hand_back_at_close_is_logged_by_its_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """close() hands claimed records that never ran back to the store: when that fails, the
    WARNING says so in one line, as for every other store error; the whole error (which may
    quote a row) only at DEBUG."""
    from .test_worker import stop_with_records_claimed_but_not_started

    detail = f'violates check constraint "c"\nDETAIL:  Failing row contains ({PHONE}, {TEXT})'

    class Refusing(MemoryStore):
        def unclaim(self, owner: str, event_ids: Sequence[str]) -> int:
            raise ValueError(detail)

    caplog.set_level(logging.DEBUG, logger="aerostic_webhooks")
    worker, release = stop_with_records_claimed_but_not_started(Refusing())
    release.set()
    worker.close()
    [failed] = [r for r in caplog.records if "could not hand back" in r.getMessage()]
    assert failed.levelno == logging.WARNING
    assert failed.exc_info is None and PHONE not in failed.getMessage()
    assert 'ValueError: violates check constraint "c"' in failed.getMessage()
    full = [r for r in caplog.records if r.exc_info is not None and r.exc_info[1] is not None]
    assert full and all(r.levelno == logging.DEBUG for r in full)
