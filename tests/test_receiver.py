"""The pipeline: order of checks, headers, identity, dedup, handlers and their dispatch."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import pytest

from aerostic_webhooks import (
    Event,
    InvalidPayload,
    InvalidSignature,
    MemoryStore,
    MessageReceived,
    PayloadTooLarge,
    Receipt,
    StoreUnavailable,
    UnknownEvent,
    WebhookReceiver,
    sign,
)
from aerostic_webhooks.events import parse_event
from aerostic_webhooks.receiver import default_event_id
from aerostic_webhooks.stores import Record
from aerostic_webhooks.stores.base import utcnow
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body, sample_payload, signed_request

from .conftest import SECRET, wait_until


def headers_for(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Aerostic-Signature": sign(body, secret)}


def test_receive_returns_typed_receipt(receiver: WebhookReceiver) -> None:
    body = sample_body("message.received")
    receipt = receiver.receive(body, headers_for(body))
    assert isinstance(receipt, Receipt)
    assert isinstance(receipt.event, MessageReceived)
    assert receipt.event_id == "message.received:msg_abc123"
    assert receipt.duplicate is False
    record = receiver.store.get(receipt.event_id)
    assert record is not None
    assert record.body == body
    assert record.event_type == "message.received"


@pytest.mark.parametrize("event_type", sorted(SAMPLE_PAYLOADS))
def test_every_documented_sample_is_accepted(receiver: WebhookReceiver, event_type: str) -> None:
    body, headers = signed_request(SAMPLE_PAYLOADS[event_type], SECRET)
    receipt = receiver.receive(body, headers)
    assert receipt.event.event == event_type
    assert receipt.event_id == f"{event_type}:{SAMPLE_PAYLOADS[event_type]['data']['id']}"


@pytest.mark.parametrize(
    "make_headers",
    [
        lambda sig: {"X-Aerostic-Signature": sig},
        lambda sig: {"x-aerostic-signature": sig},
        lambda sig: {"X-AEROSTIC-SIGNATURE": sig},
        lambda sig: {"Content-Type": "application/json", "x-AeRoStIc-SiGnAtUrE": sig},
        lambda sig: [("content-type", "application/json"), ("x-aerostic-signature", sig)],
        lambda sig: [(b"x-aerostic-signature", sig.encode())],
        lambda sig: {"X-Aerostic-Signature": [sig]},
    ],
    ids=["canonical", "lower", "upper", "mixed", "pairs", "asgi-bytes", "multi-value"],
)
def test_header_found_whatever_the_mapping(receiver: WebhookReceiver, make_headers: Any) -> None:
    body = sample_body("contact.created")
    assert receiver.receive(body, make_headers(sign(body, SECRET))).event_id


def test_oversized_body_is_refused_before_the_signature_is_checked() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore(), max_body_bytes=100) as webhooks:
        body = b"x" * 101
        with pytest.raises(PayloadTooLarge):
            webhooks.receive(body, {})  # no signature at all: size is checked first
        assert len(webhooks.store) == 0  # type: ignore[arg-type]


def test_body_at_exactly_the_limit_is_accepted() -> None:
    body = sample_body("message.sent")
    with WebhookReceiver(SECRET, store=MemoryStore(), max_body_bytes=len(body)) as webhooks:
        assert webhooks.receive(body, headers_for(body)).duplicate is False


def test_the_default_limit_is_one_mebibyte() -> None:
    payload = sample_payload("message.received")
    payload["data"]["text"] = ""
    padding = 1_048_576 - len(json.dumps(payload).encode())
    payload["data"]["text"] = "x" * padding
    body = json.dumps(payload).encode()
    assert len(body) == 1_048_576
    with WebhookReceiver(SECRET, store=MemoryStore(), process="external") as webhooks:
        assert webhooks.receive(body, headers_for(body)).duplicate is False
        with pytest.raises(PayloadTooLarge):
            webhooks.receive(body + b" ", headers_for(body + b" "))


def test_forged_body_is_never_parsed(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[bytes] = []
    import aerostic_webhooks.receiver as module

    monkeypatch.setattr(module, "parse_event", parsed.append)
    body = sample_body("message.received")
    with pytest.raises(InvalidSignature):
        receiver.receive(body, headers_for(body, "another secret"))
    with pytest.raises(InvalidSignature):
        receiver.receive(body, {})
    assert parsed == []


def test_signed_garbage_is_invalid_payload_and_not_recorded(receiver: WebhookReceiver) -> None:
    for body in (b"", b"not json", b"\xff\xfe", b"[]", b'{"event": "message.received"}'):
        with pytest.raises(InvalidPayload):
            receiver.receive(body, headers_for(body))
    assert len(receiver.store) == 0  # type: ignore[arg-type]


def test_unknown_event_types_are_accepted(receiver: WebhookReceiver) -> None:
    payload = {"event": "order.shipped", "timestamp": "2026-01-30T15:45:00Z", "data": {"id": 7}}
    body, headers = signed_request(payload, SECRET)
    receipt = receiver.receive(body, headers)
    assert isinstance(receipt.event, UnknownEvent)
    assert receipt.event_id == "order.shipped:7"


def test_event_id_falls_back_to_a_digest_of_the_body(receiver: WebhookReceiver) -> None:
    payload = {"event": "order.shipped", "timestamp": "2026-01-30T15:45:00Z", "data": {}}
    body, headers = signed_request(payload, SECRET)
    receipt = receiver.receive(body, headers)
    assert receipt.event_id == "sha256:" + hashlib.sha256(body).hexdigest()


def test_same_id_different_type_are_different_events(receiver: WebhookReceiver) -> None:
    ids = set()
    for event_type in ("message.sent", "message.delivered", "message.read"):
        body = sample_body(event_type)  # all three samples share data.id "msg_def456"
        receipt = receiver.receive(body, headers_for(body))
        assert not receipt.duplicate
        ids.add(receipt.event_id)
    assert len(ids) == 3


def test_custom_event_id() -> None:
    def by_wamid(event: Event) -> str:
        return f"wamid:{event.data.wamid}"

    with WebhookReceiver(SECRET, store=MemoryStore(), event_id=by_wamid) as webhooks:
        first = sample_body("message.received", id="one")
        second = sample_body("message.received", id="two")  # same wamid
        assert webhooks.receive(first, headers_for(first)).event_id == "wamid:wamid.ABGGFlC..."
        assert webhooks.receive(second, headers_for(second)).duplicate is True


def test_broken_event_id_callable_falls_back_to_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: Event) -> str:
        raise KeyError("nope")

    with WebhookReceiver(SECRET, store=MemoryStore(), event_id=broken) as webhooks:
        body = sample_body("message.received")
        assert webhooks.receive(body, headers_for(body)).event_id == "message.received:msg_abc123"
    assert "event_id callable raised" in caplog.text


@pytest.mark.parametrize(
    ("bad", "said"),
    # A lone surrogate (text decoded with surrogateescape, say) is no UTF-8: SQLite, Redis and
    # PostgreSQL refuse it, and the delivery would be a 503 at every retry.
    [
        ("", "but an empty one"),
        ("x" * 513, "but one of 513 characters"),
        ("has\x00nul", "but one holding a NUL"),
        ("caf\udce9", "not UTF-8 text"),
        ("\ud83d", "not UTF-8 text"),
        (42, "but a int"),
        (b"bytes-id", "but a bytes"),
        (["a", "b"], "but a list"),
    ],
)
def test_an_event_id_no_store_could_key_falls_back_to_the_default(
    bad: object, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Deliberately answers what may be no str at all: the receiver must cope with anything.
    with WebhookReceiver(SECRET, store=MemoryStore(), event_id=lambda event: bad) as webhooks:  # type: ignore[arg-type, return-value]
        body = sample_body("message.received")
        assert webhooks.receive(body, headers_for(body)).event_id == "message.received:msg_abc123"
    assert "returned no usable id" in caplog.text
    assert said in caplog.text  # what was wrong with it


@pytest.mark.parametrize("container", [list, tuple])
def test_a_header_given_as_several_values_is_read_as_their_comma_joined_list(
    receiver: WebhookReceiver, container: type
) -> None:
    """As a server joins the lines of a repeated header: any good candidate verifies."""
    body = sample_body("message.received")
    value = container(["sha256=" + "0" * 64, sign(body, SECRET)])
    assert receiver.receive(body, {"X-Aerostic-Signature": value}).duplicate is False


def test_an_event_id_of_the_longest_usable_length_is_kept() -> None:
    longest = "x" * 512
    with WebhookReceiver(SECRET, store=MemoryStore(), event_id=lambda event: longest) as webhooks:
        body = sample_body("message.received")
        assert webhooks.receive(body, headers_for(body)).event_id == longest


def unknown_event(data: dict[str, object]) -> bytes:
    return json.dumps(
        {"event": "order.shipped", "timestamp": "2026-01-30T15:45:00Z", "data": data}
    ).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (sample_body("message.received", id="m1"), "message.received:m1"),
        (unknown_event({"id": 0}), "order.shipped:0"),  # falsy, but an id
        (unknown_event({"id": "o1"}), "order.shipped:o1"),
        (sample_body("message.received", id=""), None),  # every empty id would be one event
        (unknown_event({"id": True}), None),  # so would every true one
        (unknown_event({"id": 1.5}), None),
        (unknown_event({"ref": "o1"}), None),
    ],
)
def test_the_default_event_id_falls_back_to_the_body_digest_without_a_usable_data_id(
    body: bytes, expected: str | None
) -> None:
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert default_event_id(parse_event(body), body) == (expected or digest)


def test_a_new_delivery_wakes_the_idle_worker() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore()) as webhooks:
        # Only a wake-up can start the handler soon: the worker polls once a minute.
        webhooks._worker._poll_interval = 60.0
        handled = threading.Event()
        webhooks.on("*")(lambda event: handled.set())
        first = sample_body("message.received", id="first")
        webhooks.receive(first, headers_for(first))
        assert webhooks.drain(10) and handled.is_set()
        handled.clear()
        time.sleep(0.1)  # the worker is idle, waiting
        second = sample_body("message.received", id="second")
        webhooks.receive(second, headers_for(second))
        assert handled.wait(30)


def test_an_unknown_event_type_holding_nul_is_an_invalid_payload(
    receiver: WebhookReceiver,
) -> None:
    body = json.dumps({"event": "a\x00b", "timestamp": "2024-01-15T10:30:00Z", "data": {}})
    with pytest.raises(InvalidPayload):
        receiver.receive(body.encode(), headers_for(body.encode()))


def test_redelivery_is_acknowledged_as_duplicate_and_handled_once(
    receiver: WebhookReceiver,
) -> None:
    calls: list[str] = []
    receiver.on("message.received")(lambda event: calls.append(event.data.id))
    body = sample_body("message.received")
    # The sender's retry carries the same body; a re-serialised body must dedupe too.
    resent = json.dumps(json.loads(body), indent=2).encode()
    assert receiver.receive(body, headers_for(body)).duplicate is False
    assert receiver.receive(body, headers_for(body)).duplicate is True
    assert receiver.receive(resent, headers_for(resent)).duplicate is True
    assert receiver.drain(5)
    assert calls == ["msg_abc123"]


def test_racing_redeliveries_run_handlers_exactly_once(receiver: WebhookReceiver) -> None:
    counts: dict[str, int] = {}
    lock = threading.Lock()

    @receiver.on("*")
    def count(event: Event) -> None:
        with lock:
            counts[event.data.id] = counts.get(event.data.id, 0) + 1

    bodies = [sample_body("message.received", id=f"msg_{n}") for n in range(20)]
    barrier = threading.Barrier(16)
    receipts: list[Receipt] = []

    def deliver() -> None:
        barrier.wait()
        for body in bodies:
            receipt = receiver.receive(body, headers_for(body))
            with lock:
                receipts.append(receipt)

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert receiver.drain(10)
    assert sum(not r.duplicate for r in receipts) == 20
    assert len(receipts) == 16 * 20
    assert counts == {f"msg_{n}": 1 for n in range(20)}


def test_handlers_run_in_registration_order_by_pattern(receiver: WebhookReceiver) -> None:
    order: list[str] = []
    receiver.on("*")(lambda e: order.append(f"all:{e.event}"))
    receiver.on("message.*")(lambda e: order.append(f"message.*:{e.event}"))
    receiver.on("message.received")(lambda e: order.append(f"exact:{e.event}"))
    receiver.on("contact.created")(lambda e: order.append(f"contact:{e.event}"))
    body = sample_body("message.received")
    receiver.receive(body, headers_for(body))
    assert receiver.drain(5)
    assert order == ["all:message.received", "message.*:message.received", "exact:message.received"]
    order.clear()
    body = sample_body("contact.created")
    receiver.receive(body, headers_for(body))
    assert receiver.drain(5)
    assert order == ["all:contact.created", "contact:contact.created"]


def test_family_pattern_does_not_match_a_longer_prefix(receiver: WebhookReceiver) -> None:
    seen: list[str] = []
    receiver.on("message.*")(lambda e: seen.append(e.event))
    payload = {"event": "messages.archived", "timestamp": "2026-01-30T15:45:00Z", "data": {}}
    body, headers = signed_request(payload, SECRET)
    receiver.receive(body, headers)
    assert receiver.drain(5)
    assert seen == []


@pytest.mark.parametrize("pattern", ["", "mess*", "*.received", "message.*.x", "**"])
def test_bad_patterns_are_refused_at_registration(receiver: WebhookReceiver, pattern: str) -> None:
    with pytest.raises(ValueError):
        receiver.on(pattern)


def test_async_handlers_run(receiver: WebhookReceiver) -> None:
    seen: list[str] = []

    @receiver.on("contact.created")
    async def on_contact(event: Any) -> None:
        seen.append(event.data.name)

    body = sample_body("contact.created")
    receiver.receive(body, headers_for(body))
    assert receiver.drain(5)
    assert seen == ["John Doe"]


def test_receive_returns_while_the_handler_is_still_blocked(receiver: WebhookReceiver) -> None:
    started, release = threading.Event(), threading.Event()

    @receiver.on("message.received")
    def slow(event: Event) -> None:
        started.set()
        release.wait(10)

    body = sample_body("message.received")
    receipt = receiver.receive(body, headers_for(body))  # returns although `slow` never ends
    assert not receipt.duplicate
    assert started.wait(5), "the worker did not start the handler"
    record = receiver.store.get(receipt.event_id)
    assert record is not None and record.status == "processing"
    release.set()
    assert receiver.drain(5)
    record = receiver.store.get(receipt.event_id)
    assert record is not None and record.status == "done"


def test_store_failure_is_store_unavailable_and_nothing_acknowledged() -> None:
    class BrokenStore(MemoryStore):
        def add(self, record: Record) -> bool:
            raise OSError("disk full")

    with WebhookReceiver(SECRET, store=BrokenStore()) as webhooks:
        body = sample_body("message.received")
        with pytest.raises(StoreUnavailable) as caught:
            webhooks.receive(body, headers_for(body))
        assert caught.value.status_code == 503


def test_odd_header_mappings_never_escape_as_other_errors(receiver: WebhookReceiver) -> None:
    class Hostile:
        def get(self, key: str) -> str:
            raise RuntimeError("broken mapping")

    body = sample_body("message.received")
    with pytest.raises(InvalidSignature):
        receiver.receive(body, Hostile())  # type: ignore[arg-type]
    with pytest.raises(InvalidSignature):
        receiver.receive(body, {"X-Aerostic-Signature": 12345})  # type: ignore[arg-type]


def test_memoryview_and_bytearray_bodies(receiver: WebhookReceiver) -> None:
    body = sample_body("message.read")
    assert receiver.receive(bytearray(body), headers_for(body)).event_id
    assert receiver.receive(memoryview(body), headers_for(body)).duplicate


def test_process_must_be_known() -> None:
    with pytest.raises(ValueError, match="process"):
        WebhookReceiver(SECRET, store=MemoryStore(), process="lambda")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("process", "size"),
    [("inline", 0), ("background", 70_000)],
    ids=["inline receiver", "body too large for the loop"],
)
def test_receive_async_on_a_pool_thread_records_inside_worker_context(
    process: Any, size: int
) -> None:
    """A delivery ``receive_async`` hands to a pool thread is recorded inside
    ``worker_context`` (Django's connection upkeep), as the intake's and the worker's are."""
    import asyncio
    import contextlib
    from collections.abc import Iterator

    inside = threading.local()
    added: list[bool] = []

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        inside.yes = True
        try:
            yield
        finally:
            inside.yes = False

    class Watched(MemoryStore):
        def add(self, record: Record) -> bool:
            added.append(getattr(inside, "yes", False))
            return super().add(record)

    receiver = WebhookReceiver(SECRET, store=Watched(), process=process, worker_context=context)
    with receiver:
        body = sample_body("message.received", id="pooled", text="x" * size)
        receipt = asyncio.run(receiver.receive_async(body, headers_for(body)))
        assert receipt.event_id == "message.received:pooled"
        assert added == [True]


def test_registered_gives_the_handlers_and_hooks_in_order() -> None:
    """What the Django app carries over to the receiver it rebuilds when its settings change."""
    receiver = WebhookReceiver(SECRET, store=MemoryStore())

    def first(event: Any) -> None: ...
    def second(event: Any) -> None: ...
    def hook(event: Any, error: BaseException) -> None: ...

    receiver.on("message.*")(first)
    receiver.on("*")(second)
    receiver.on_error(hook)
    assert receiver.registered() == ((("message.*", first), ("*", second)), (hook,))
    other = WebhookReceiver(SECRET, store=MemoryStore())
    handlers, hooks = receiver.registered()
    for pattern, handler in handlers:
        other.on(pattern)(handler)
    for error_hook in hooks:
        other.on_error(error_hook)
    assert other.handlers_for("message.sent") == (first, second)
    assert other.registered() == receiver.registered()


def test_wake_runs_what_was_requeued_in_the_store_directly() -> None:
    """After a change made in the store itself (the Django admin's one UPDATE), ``wake()``
    has a running worker look now rather than at its next poll; a stopped one stays so."""
    store = MemoryStore()
    receiver = WebhookReceiver(SECRET, store=store)
    receiver._worker._poll_interval = 60.0  # so that only a wake finds the record
    ran: list[str] = []
    receiver.on("*")(lambda event: ran.append(event.event))
    receiver.wake()
    assert not receiver._worker.running
    receiver.start()
    try:
        assert receiver.drain(5)
        store.add(Record("e1", "message.sent", sample_body("message.sent"), utcnow()))
        receiver.wake()
        assert wait_until(lambda: ran == ["message.sent"], 5)
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("process", "size"),
    [("inline", 0), ("background", 70_000)],
    ids=["inline receiver", "body too large for the loop"],
)
def test_receive_async_on_a_pool_thread_whose_worker_context_raises_is_store_unavailable(
    process: Any, size: int
) -> None:
    """Nothing was recorded: a 503 the sender retries, not an error the adapter makes a 500."""
    import asyncio
    import contextlib
    from collections.abc import Iterator

    @contextlib.contextmanager
    def unreachable() -> Iterator[None]:
        raise RuntimeError("the database is out of reach")
        yield

    store = MemoryStore()
    with WebhookReceiver(SECRET, store=store, process=process, worker_context=unreachable) as r:
        body = sample_body("message.received", id="pooled", text="x" * size)
        with pytest.raises(StoreUnavailable, match="worker_context raised RuntimeError"):
            asyncio.run(r.receive_async(body, headers_for(body)))
        assert store.get("message.received:pooled") is None
