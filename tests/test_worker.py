"""Background processing: retries, dead letters, leases, drain and close; and inline mode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aerostic_webhooks import (
    Event,
    MemoryStore,
    ProcessingFailed,
    StoreUnavailable,
    WebhookReceiver,
    sign,
)
from aerostic_webhooks.stores import Record, SQLiteStore, Status, Store
from aerostic_webhooks.stores.base import LEASE_LAPSED, utcnow
from aerostic_webhooks.testing import sample_body
from aerostic_webhooks.worker import Worker

from .conftest import REDIS_URL, SECRET, wait_until


def deliver(webhooks: WebhookReceiver, event_type: str = "message.received", **data: Any) -> str:
    body = sample_body(event_type, **data)
    return webhooks.receive(body, {"X-Aerostic-Signature": sign(body, SECRET)}).event_id


def status_of(store: Store, event_id: str) -> Status | None:
    record = store.get(event_id)
    return None if record is None else record.status


def test_failing_handler_is_retried_then_dead_lettered_with_its_error() -> None:
    errors: list[tuple[str, str]] = []
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=(0, 0)) as webhooks:

        @webhooks.on("message.received")
        def broken(event: Event) -> None:
            raise ValueError("CRM is down")

        @webhooks.on_error
        def alert(event: Event, error: BaseException) -> None:
            errors.append((event.event, str(error)))

        event_id = deliver(webhooks)
        assert webhooks.drain(5)
        record = webhooks.store.get(event_id)
        assert record is not None
        assert record.status is Status.FAILED
        assert record.attempts == 3
        assert record.last_error == "ValueError: CRM is down"
        assert errors == [("message.received", "CRM is down")] * 3


def test_a_handler_that_recovers_completes_the_record() -> None:
    attempts: list[int] = []
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=(0, 0, 0)) as webhooks:

        @webhooks.on("message.received")
        def flaky(event: Event) -> None:
            attempts.append(1)
            if len(attempts) < 3:
                raise ConnectionError("try later")

        event_id = deliver(webhooks)
        assert webhooks.drain(5)
        record = webhooks.store.get(event_id)
        assert record is not None and record.status is Status.DONE
        assert record.attempts == 3
        assert len(attempts) == 3


def test_one_failing_handler_does_not_stop_the_others_and_retry_runs_all() -> None:
    calls: list[str] = []
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=(0,)) as webhooks:
        webhooks.on("*")(lambda e: calls.append("first"))

        @webhooks.on("*")
        def second(event: Event) -> None:
            calls.append("second")
            raise RuntimeError("boom")

        webhooks.on("*")(lambda e: calls.append("third"))
        deliver(webhooks)
        assert webhooks.drain(5)
    assert calls == ["first", "second", "third"] * 2


def test_drain_does_not_wait_for_retries_scheduled_later() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=(3600,)) as webhooks:
        webhooks.on("*")(lambda e: 1 / 0)
        event_id = deliver(webhooks)
        started = time.monotonic()
        assert webhooks.drain(5)
        assert time.monotonic() - started < 4
        record = webhooks.store.get(event_id)
        assert record is not None
        assert record.status is Status.PENDING
        assert record.next_attempt_at is not None
        assert record.next_attempt_at > utcnow() + timedelta(minutes=59)
        assert record.last_error == "ZeroDivisionError: division by zero"


def test_default_backoff_is_spread_over_hours() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore()) as webhooks:
        webhooks.on("*")(lambda e: 1 / 0)
        event_id = deliver(webhooks)
        assert webhooks.drain(5)
        record = webhooks.store.get(event_id)
        assert record is not None and record.next_attempt_at is not None
        delay = (record.next_attempt_at - utcnow()).total_seconds()
        assert 20 < delay <= 30
    from aerostic_webhooks.worker import DEFAULT_RETRY_DELAYS, Worker

    # The README's schedule: 30 s, 5 min, 30 min, 2 h, 6 h, longer than the sender's retries.
    assert DEFAULT_RETRY_DELAYS == (30, 300, 1800, 7200, 21600)
    assert Worker(MemoryStore(), lambda record: None).max_attempts == 6


def test_max_attempts_follows_the_retry_delays_and_cannot_be_set_apart_from_them() -> None:
    """Set on its own, it could outrun the delays: the retry after the last would have none."""
    from aerostic_webhooks.worker import Worker

    worker = Worker(MemoryStore(), lambda record: None, retry_delays=(0, 5))
    assert worker.max_attempts == 3
    with pytest.raises(AttributeError):
        worker.max_attempts = 4  # type: ignore[misc]


def test_a_claim_holds_its_record_for_30_seconds_by_default() -> None:
    """The README's lease: a record whose worker died is taken up again within a minute."""
    started, release = threading.Event(), threading.Event()
    with WebhookReceiver(SECRET, store=MemoryStore()) as webhooks:

        @webhooks.on("*")
        def slow(event: Event) -> None:
            started.set()
            release.wait(5)

        event_id = deliver(webhooks)
        try:
            assert started.wait(5)
            record = webhooks.store.get(event_id)
        finally:
            release.set()
    assert record is not None and record.status is Status.PROCESSING
    assert record.lease_expires_at is not None and record.updated_at is not None
    lease = (record.lease_expires_at - record.updated_at).total_seconds()
    assert 30 <= lease < 31  # set at the claim, perhaps renewed a moment later


def test_finished_records_are_kept_seven_days_by_default() -> None:
    store = MemoryStore()
    now = utcnow()
    for event_id, age in (
        ("recent", timedelta(days=6, hours=23)),
        ("old", timedelta(days=7, hours=1)),
    ):
        store.add(Record(event_id, "message.sent", b"{}", now - age, status=Status.DONE))
    with WebhookReceiver(SECRET, store=store) as webhooks:
        webhooks.start()  # the worker purges once as it starts
        wait_until(lambda: store.get("old") is None, 5)
    assert store.get("old") is None
    assert store.get("recent") is not None


def test_retry_queues_a_failed_record_again_and_it_runs_at_once() -> None:
    fixed = threading.Event()
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=()) as webhooks:
        webhooks._worker._poll_interval = 60.0  # only a wake-up starts it within the test

        @webhooks.on("message.received")
        def handler(event: Event) -> None:
            if not fixed.is_set():
                raise RuntimeError("bug")

        event_id = deliver(webhooks)
        assert webhooks.drain(5)
        record = webhooks.store.get(event_id)
        assert record is not None and record.status is Status.FAILED
        fixed.set()
        time.sleep(0.3)  # the worker goes idle
        assert webhooks.retry(event_id) is True
        assert wait_until(lambda: status_of(webhooks.store, event_id) is Status.DONE)
        assert webhooks.retry("message.received:no-such-id") is False


def test_records_no_handler_matches_are_marked_done(receiver: WebhookReceiver) -> None:
    receiver.on("contact.created")(lambda e: None)
    event_id = deliver(receiver, "message.failed")
    assert receiver.drain(5)
    record = receiver.store.get(event_id)
    assert record is not None and record.status is Status.DONE


def test_handlers_registered_after_construction_see_recovered_work() -> None:
    store = MemoryStore()
    body = sample_body("message.received")
    store.add(
        Record(
            event_id="message.received:msg_abc123",
            event_type="message.received",
            body=body,
            received_at=utcnow(),
        )
    )
    seen: list[str] = []
    with WebhookReceiver(SECRET, store=store) as webhooks:
        # The constructor must not start processing before handlers are registered.
        time.sleep(0.05)
        webhooks.on("message.received")(lambda e: seen.append(e.data.id))
        webhooks.start()
        assert webhooks.drain(5)
    assert seen == ["msg_abc123"]


def test_a_record_left_processing_by_a_dead_worker_is_taken_up_after_its_lease() -> None:
    store = MemoryStore()
    body = sample_body("message.received")
    event_id = "message.received:msg_abc123"
    store.add(
        Record(event_id=event_id, event_type="message.received", body=body, received_at=utcnow())
    )
    [claimed] = store.claim("dead-worker", limit=1, lease=0.3)  # then the owner "dies"
    assert claimed.status is Status.PROCESSING
    seen: list[str] = []
    with WebhookReceiver(SECRET, store=store) as webhooks:
        webhooks.on("*")(lambda e: seen.append(e.data.id))
        webhooks.start()
        assert webhooks.drain(5)
        assert seen == []  # the lease still runs: not due yet
        time.sleep(0.35)
        assert webhooks.drain(5)
    assert seen == ["msg_abc123"]
    record = store.get(event_id)
    assert record is not None and record.status is Status.DONE and record.attempts == 2


def test_a_record_whose_worker_died_in_every_attempt_ends_failed_without_running() -> None:
    """A poison event (its handler kills the process) is dead-lettered once the policy's
    attempts are used up, not claimed and run once a lease forever."""
    store = MemoryStore()
    body = sample_body("message.received")
    event_id = "message.received:msg_abc123"
    store.add(Record(event_id, "message.received", body, utcnow()))
    for attempt in range(3):  # retry_delays=(0, 0) below: three attempts in all
        [claimed] = store.claim(f"worker {attempt}, killed by the handler", limit=1, lease=0.01)
        assert claimed.attempts == attempt + 1
        time.sleep(0.02)
    seen: list[str] = []
    with WebhookReceiver(SECRET, store=store, retry_delays=(0, 0)) as webhooks:
        webhooks.on("*")(lambda e: seen.append(e.data.id))
        webhooks.start()
        assert webhooks.drain(5)
    assert seen == []
    record = store.get(event_id)
    assert record is not None and record.status is Status.FAILED
    assert record.last_error == f"{LEASE_LAPSED}; not run again after 3 attempts"


def test_a_record_rescheduled_under_a_longer_retry_policy_still_runs() -> None:
    """Spent attempts alone are no reason to dead-letter without running: a deploy may
    shorten retry_delays while records wait for a retry of the old policy."""
    store = MemoryStore()
    body = sample_body("message.received")
    event_id = "message.received:msg_abc123"
    store.add(Record(event_id, "message.received", body, utcnow()))
    for _ in range(3):  # three failed attempts under the old policy
        store.claim("old worker", limit=1, lease=30)
        store.reschedule(event_id, "old worker", at=utcnow(), error="ValueError: CRM is down")
    seen: list[str] = []
    with WebhookReceiver(SECRET, store=store, retry_delays=(0,)) as webhooks:  # 2 attempts
        webhooks.on("*")(lambda e: seen.append(e.data.id))
        webhooks.start()
        assert webhooks.drain(5)
    assert seen == ["msg_abc123"]
    record = store.get(event_id)
    assert record is not None and record.status is Status.DONE


@pytest.mark.parametrize("waited", ["running", "in close()"])
def test_a_slow_handler_keeps_its_lease_and_is_not_run_twice(waited: str) -> None:
    store = MemoryStore()
    runs: list[str] = []
    started, release = threading.Event(), threading.Event()
    first = WebhookReceiver(SECRET, store=store, lease_seconds=0.3)
    second = WebhookReceiver(SECRET, store=store, lease_seconds=0.3)
    try:

        def slow(event: Event) -> None:
            runs.append("first")
            started.set()
            release.wait(5)

        first.on("*")(slow)
        second.on("*")(lambda e: runs.append("second"))
        deliver(first)
        assert started.wait(5)
        second.start()
        if waited == "running":
            time.sleep(1.0)  # three lease periods: renewals must keep the record ours
            release.set()
            assert first.drain(5)
        else:  # four lease periods, most of them while close() waits for the handler
            threading.Timer(1.2, release.set).start()
            first.close(timeout=5)
        assert second.drain(5)
        assert runs == ["first"]
        record = store.get("message.received:msg_abc123")
        assert record is not None and record.status is Status.DONE and record.attempts == 1
    finally:
        release.set()
        first.close()
        second.close()


def test_a_start_while_close_waits_leaves_no_thread_of_the_first_start_behind() -> None:
    """A delivery arriving during shutdown starts the worker again (receive() does)."""
    release = threading.Event()
    store = MemoryStore()
    store.add(Record("e1", "message.received", sample_body("message.received"), utcnow()))
    worker = Worker(
        store, lambda record: None if release.wait(5) else "not released", concurrency=1
    )
    before = set(threading.enumerate())
    worker.start()
    worker.wake()
    wait_until(lambda: bool(store.list(status=Status.PROCESSING)), 5)
    closer = threading.Thread(target=worker.close, args=(5.0,))
    closer.start()
    time.sleep(0.2)  # close() waits for the running handler
    worker.start()
    release.set()
    closer.join(10)
    worker.close(5.0)
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert [name for name in left if name.startswith("aerostic-webhooks")] == []


def test_close_waits_for_running_handlers_and_is_idempotent() -> None:
    finished = threading.Event()
    before = set(threading.enumerate())
    webhooks = WebhookReceiver(SECRET, store=MemoryStore())

    @webhooks.on("*")
    def handler(event: Event) -> None:
        time.sleep(0.2)
        finished.set()

    deliver(webhooks)
    time.sleep(0.05)
    webhooks.close(timeout=5)
    assert finished.is_set()
    webhooks.close()
    started = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not [t.name for t in started if t.name.startswith("aerostic-webhooks")]


@pytest.mark.parametrize("stop", ["close", "stop_serving"])
def test_close_waits_no_longer_than_its_timeout_in_all(
    stop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that outlives the timeout: the drain, the handler threads and the handlers'
    event loop share the one timeout, instead of each waiting it in turn."""
    release = threading.Event()
    started = threading.Event()
    webhooks = WebhookReceiver(SECRET, store=MemoryStore())

    @webhooks.on("message.received")
    async def stuck(event: Event) -> None:  # blocks the handlers' loop thread too
        started.set()
        release.wait(10)

    try:
        deliver(webhooks)
        assert started.wait(5)
        began = time.monotonic()
        getattr(webhooks, stop)(timeout=0.6)
        took = time.monotonic() - began
        assert 0.5 <= took < 1.1, took  # each part waiting the whole 0.6 s took 1.2 s or more
        assert "1 record(s) still being handled; each runs again" in caplog.text
    finally:
        release.set()


def test_retention_purges_finished_records_only() -> None:
    store = MemoryStore()
    old = utcnow() - timedelta(days=8)
    for status in Status:
        store.add(
            Record(
                event_id=f"old-{status}",
                event_type="message.sent",
                body=b"{}",
                received_at=old,
                status=status,
                lease_owner="someone" if status is Status.PROCESSING else None,
                lease_expires_at=utcnow() + timedelta(hours=1)
                if status is Status.PROCESSING
                else None,
                next_attempt_at=utcnow() + timedelta(hours=1) if status is Status.PENDING else None,
            )
        )
    with WebhookReceiver(SECRET, store=store, retention=timedelta(days=7)) as webhooks:
        webhooks.start()
        wait_until(lambda: store.get("old-done") is None, 5)
    assert store.get("old-done") is None
    assert store.get("old-failed") is None
    assert store.get("old-pending") is not None
    assert store.get("old-processing") is not None


# -- inline mode -------------------------------------------------------------------------------


def new_handler_threads(before: set[threading.Thread]) -> list[str]:
    """Names of the live handler threads started since ``before`` was taken."""
    return [
        t.name
        for t in set(threading.enumerate()) - before
        if t.is_alive() and t.name.startswith("aerostic-webhooks-handler")
    ]


def test_inline_runs_handlers_inside_receive() -> None:
    seen: list[str] = []
    before = set(threading.enumerate())
    with WebhookReceiver(SECRET, store=MemoryStore(), process="inline") as webhooks:
        webhooks.on("*")(lambda e: seen.append(e.event))
        event_id = deliver(webhooks, "contact.created")
        assert seen == ["contact.created"]  # no drain needed
        record = webhooks.store.get(event_id)
        assert record is not None and record.status is Status.DONE
        assert new_handler_threads(before) == []


def test_inline_failure_is_processing_failed_and_redelivery_is_processed_again() -> None:
    attempts: list[int] = []
    with WebhookReceiver(SECRET, store=MemoryStore(), process="inline") as webhooks:

        @webhooks.on("message.received")
        def flaky(event: Event) -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("first try fails")

        body = sample_body("message.received")
        headers = {"X-Aerostic-Signature": sign(body, SECRET)}
        with pytest.raises(ProcessingFailed) as caught:
            webhooks.receive(body, headers)
        assert caught.value.status_code == 500
        receipt = webhooks.receive(body, headers)  # the sender's redelivery
        assert receipt.duplicate is False
        assert len(attempts) == 2
        assert webhooks.receive(body, headers).duplicate is True
        assert len(attempts) == 2


def test_inline_takes_over_a_record_whose_process_died() -> None:
    store = MemoryStore()
    body = sample_body("message.received")
    store.add(
        Record(
            event_id="message.received:msg_abc123",
            event_type="message.received",
            body=body,
            received_at=utcnow(),
            status=Status.PROCESSING,
            attempts=1,
            lease_owner="a dead lambda",
            lease_expires_at=utcnow() - timedelta(seconds=1),
        )
    )
    seen: list[str] = []
    with WebhookReceiver(SECRET, store=store, process="inline") as webhooks:
        webhooks.on("*")(lambda e: seen.append(e.data.id))
        receipt = webhooks.receive(body, {"X-Aerostic-Signature": sign(body, SECRET)})
    assert receipt.duplicate is False
    assert seen == ["msg_abc123"]


def leases_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "aerostic-webhooks-leases"]


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_inline_handler_longer_than_its_lease_keeps_its_record(
    store_kind: str, tmp_path: Any
) -> None:
    store: Store = MemoryStore() if store_kind == "memory" else SQLiteStore(tmp_path / "in.db")
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []
    with WebhookReceiver(SECRET, store=store, process="inline", lease_seconds=0.3) as webhooks:

        @webhooks.on("*")
        def slow(event: Event) -> None:
            runs.append(event.event)
            started.set()
            release.wait(5)

        thread = threading.Thread(target=deliver, args=(webhooks,))
        thread.start()
        try:
            assert started.wait(5)
            time.sleep(1.0)  # more than three leases
            # Another process's worker finds nothing to take up.
            assert store.claim("another worker", limit=10, lease=30) == []
            record = store.get("message.received:msg_abc123")
            assert record is not None and record.status is Status.PROCESSING
            assert record.lease_expires_at is not None and record.lease_expires_at > utcnow()
        finally:
            release.set()
            thread.join(5)
        assert runs == ["message.received"]
        record = store.get("message.received:msg_abc123")
        assert record is not None and record.status is Status.DONE
    assert leases_threads() == []  # closed with the receiver


def test_quick_inline_deliveries_start_one_lease_thread_and_renew_nothing() -> None:
    renewals: list[int] = []

    class Counting(MemoryStore):
        def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
            renewals.append(len(event_ids))
            super().renew(owner, event_ids, lease=lease)

    started: list[threading.Thread] = []
    with WebhookReceiver(SECRET, store=Counting(), process="inline") as webhooks:
        webhooks.on("*")(lambda e: started.extend(leases_threads()))
        for n in range(200):
            deliver(webhooks, id=f"msg-{n}")
        assert len(leases_threads()) == 1
    assert len(set(started)) == 1  # one thread for all 200, not one per hold
    assert renewals == []  # none lasted a third of the 30 s lease


def test_inline_handler_completes_when_its_lease_cannot_be_renewed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class NoRenewals(MemoryStore):
        def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
            raise ConnectionError("store down for a moment")

    store = NoRenewals()
    with WebhookReceiver(SECRET, store=store, process="inline", lease_seconds=0.09) as webhooks:
        webhooks.on("*")(lambda e: time.sleep(0.2))
        event_id = deliver(webhooks)
    record = store.get(event_id)
    assert record is not None and record.status is Status.DONE
    assert "could not renew inline leases" in caplog.text


def test_inline_async_handler() -> None:
    seen: list[str] = []

    async def handler(event: Event) -> None:
        seen.append(event.event)

    with WebhookReceiver(SECRET, store=MemoryStore(), process="inline") as webhooks:
        webhooks.on("*")(handler)
        deliver(webhooks)
    assert seen == ["message.received"]


# -- external mode -----------------------------------------------------------------------------


def test_external_mode_only_records_and_a_started_worker_processes() -> None:
    store = MemoryStore()
    seen: list[str] = []
    before = set(threading.enumerate())
    with WebhookReceiver(SECRET, store=store, process="external") as web:
        web.on("*")(lambda e: seen.append(e.event))  # not run here: no worker in this one
        event_id = deliver(web)
        time.sleep(0.05)
        assert new_handler_threads(before) == []
        record = store.get(event_id)
        assert record is not None
        assert record.status is Status.PENDING
        assert seen == []
    with WebhookReceiver(SECRET, store=store, process="external") as worker:
        worker.on("*")(lambda e: seen.append(e.event))
        worker.start()
        assert worker.drain(5)
    assert seen == ["message.received"]
    record = store.get(event_id)
    assert record is not None
    assert record.status is Status.DONE


def test_worker_context_wraps_each_step_and_handlers_know_their_event_id() -> None:
    import contextlib

    from aerostic_webhooks.receiver import current_event_id

    inside = threading.local()
    entered: list[int] = []

    @contextlib.contextmanager
    def context() -> Any:
        inside.active = True
        entered.append(1)
        try:
            yield
        finally:
            inside.active = False

    seen: list[tuple[bool, str]] = []
    with WebhookReceiver(SECRET, store=MemoryStore(), worker_context=context) as webhooks:
        webhooks.on("*")(lambda e: seen.append((inside.active, current_event_id())))
        deliver(webhooks)
        assert webhooks.drain(5)
    assert seen == [(True, "message.received:msg_abc123")]
    assert entered
    with pytest.raises(LookupError):
        current_event_id()


class FlakyContext:
    """A ``worker_context`` that raises on entry (or on exit) while ``failures`` last, as
    Django's connection upkeep does when the database is out of reach."""

    def __init__(self, failures: int, *, on_exit: bool = False) -> None:
        self.failures = failures
        self.on_exit = on_exit
        self.lock = threading.Lock()

    def _fail(self) -> None:
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                raise RuntimeError("Database access not allowed")

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self.on_exit:
            self._fail()
        yield
        if self.on_exit:
            self._fail()


@pytest.mark.parametrize("on_exit", [False, True], ids=["entry", "exit"])
def test_a_worker_context_that_raises_stops_no_worker_thread(
    caplog: pytest.LogCaptureFixture, on_exit: bool
) -> None:
    """Each thread tries again a second later; had one died, its events would wait for a
    restart, acknowledged and unhandled (and pytest would report the thread's error)."""
    context = FlakyContext(6, on_exit=on_exit)
    runs: list[str] = []
    with WebhookReceiver(
        SECRET, store=MemoryStore(), concurrency=2, worker_context=context
    ) as webhooks:
        webhooks.on("*")(lambda event: runs.append(event.data.id))
        ids = [deliver(webhooks, id=f"e{n}") for n in range(3)]
        assert wait_until(lambda: context.failures == 0)
        assert wait_until(lambda: all(status_of(webhooks.store, i) is Status.DONE for i in ids))
        later = deliver(webhooks, id="later")
        assert wait_until(lambda: status_of(webhooks.store, later) is Status.DONE)
    assert sorted(runs) == ["e0", "e1", "e2", "later"]  # each once
    warnings = [r for r in caplog.records if "worker_context" in r.getMessage() and r.levelno >= 30]
    assert [r.levelname for r in warnings] == ["WARNING"]  # once a spell, not once a step


def test_inline_redelivery_while_the_first_is_running_is_not_acknowledged() -> None:
    started, release = threading.Event(), threading.Event()
    with WebhookReceiver(SECRET, store=MemoryStore(), process="inline") as webhooks:

        @webhooks.on("*")
        def slow_then_fails(event: Event) -> None:
            started.set()
            release.wait(5)
            raise RuntimeError("fails after the redelivery came in")

        body = sample_body("message.received")
        headers = {"X-Aerostic-Signature": sign(body, SECRET)}
        outcome: list[BaseException] = []

        def first() -> None:
            try:
                webhooks.receive(body, headers)
            except BaseException as error:
                outcome.append(error)

        thread = threading.Thread(target=first)
        thread.start()
        assert started.wait(5)
        # Acknowledging this copy would lose the event when the first one fails: 503 instead.
        with pytest.raises(StoreUnavailable):
            webhooks.receive(body, headers)
        release.set()
        thread.join(5)
        assert isinstance(outcome[0], ProcessingFailed)
        assert webhooks.store.get("message.received:msg_abc123") is None  # free to redeliver


def test_a_handler_calling_sys_exit_fails_its_event_but_not_the_worker() -> None:
    import sys

    seen: list[str] = []
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=(), concurrency=1) as webhooks:

        @webhooks.on("message.received")
        def exits(event: Event) -> None:
            sys.exit(1)

        webhooks.on("contact.created")(lambda e: seen.append(e.event))
        failed_id = deliver(webhooks)
        deliver(webhooks, "contact.created")
        assert webhooks.drain(5)
        record = webhooks.store.get(failed_id)
        assert record is not None
        assert record.status is Status.FAILED
        assert record.last_error == "SystemExit: 1"
    assert seen == ["contact.created"]


def test_a_lapsed_lease_taken_up_by_another_thread_is_settled_by_that_run_only() -> None:
    stalled = threading.Event()
    stalled.set()

    class StalledRenewals(MemoryStore):
        def renew(self, owner: str, event_ids: Any, *, lease: float) -> None:
            """Renewals stall at first (a long purge, a slow store): the first lease lapses."""
            if not stalled.is_set():
                super().renew(owner, event_ids, lease=lease)

    release, second_may_finish = threading.Event(), threading.Event()
    runs: list[int] = []
    with WebhookReceiver(
        SECRET, store=StalledRenewals(), lease_seconds=0.6, retry_delays=(0,), concurrency=2
    ) as webhooks:

        @webhooks.on("*")
        def handler(event: Event) -> None:
            runs.append(len(runs) + 1)
            if len(runs) == 1:
                release.wait(5)
                raise RuntimeError("the first run fails, long after its lease lapsed")
            second_may_finish.wait(5)

        event_id = deliver(webhooks)
        wait_until(lambda: len(runs) >= 2, 5)
        assert runs == [1, 2]  # the second thread took the lapsed record up
        stalled.clear()  # renewals work again: the second run keeps its lease
        release.set()  # the first run now fails and tries to settle, mid-way through the second
        time.sleep(0.3)
        second_may_finish.set()
        assert webhooks.drain(5)
        assert runs == [1, 2]
        record = webhooks.store.get(event_id)
        assert record is not None
        assert record.status is Status.DONE  # the first run's failure did not reschedule it
        assert record.last_error == LEASE_LAPSED  # nor write its error: the take-up's stays


def test_store_upkeep_runs_while_every_handler_is_busy() -> None:
    upkeep = threading.Event()

    class Counting(MemoryStore):
        def maintain(self) -> None:
            upkeep.set()

    release = threading.Event()
    with WebhookReceiver(SECRET, store=Counting(), concurrency=1) as webhooks:
        webhooks.on("*")(lambda event: release.wait(5))
        deliver(webhooks)
        upkeep.clear()
        try:
            # The only handler thread is blocked; the housekeeping thread still does upkeep,
            # so deliveries never end up doing a SQLite checkpoint themselves.
            assert upkeep.wait(3)
        finally:
            release.set()


def test_store_upkeep_runs_several_times_a_second() -> None:
    """Often enough that a busy web process's WAL never grows to the size at which a
    delivery would checkpoint it (``SQLiteStore``: 10,000 pages, about 1,700 deliveries)."""
    calls: list[float] = []

    class Counting(MemoryStore):
        def maintain(self) -> None:
            calls.append(time.monotonic())

    release = threading.Event()
    with WebhookReceiver(SECRET, store=Counting(), concurrency=1) as webhooks:
        webhooks.on("*")(lambda event: release.wait(5))
        deliver(webhooks)
        try:
            time.sleep(2)
        finally:
            release.set()
    assert len(calls) >= 5  # every 0.25 s: 8 in 2 s


class CountingStore(MemoryStore):
    """A real MemoryStore that counts the worker's store calls."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[int] = []
        self.empty_claims = 0
        self.completions: list[int] = []
        self.purges = 0

    def claim(self, owner: str, *, limit: int, lease: float) -> list[Record]:
        claimed = super().claim(owner, limit=limit, lease=lease)
        if claimed:
            self.claims.append(len(claimed))
        else:
            self.empty_claims += 1
        return claimed

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        self.completions.append(len(event_ids))
        return super().complete_many(owner, event_ids)

    def purge(self, *, older_than: datetime) -> int:
        self.purges += 1
        return super().purge(older_than=older_than)


def record_without_processing(webhooks: WebhookReceiver, ids: Sequence[str]) -> None:
    for data_id in ids:
        body = sample_body("message.received", id=data_id)
        webhooks.store.add(
            Record(f"message.received:{data_id}", "message.received", body, utcnow())
        )


def test_quick_records_are_claimed_and_completed_in_batches() -> None:
    store = CountingStore()
    seen: list[str] = []
    with WebhookReceiver(SECRET, store=store, concurrency=4) as webhooks:
        webhooks.on("*")(lambda event: seen.append(event.data.id))
        ids = [f"m{i}" for i in range(1000)]
        record_without_processing(webhooks, ids)
        assert webhooks.drain(30)
    assert sorted(seen) == sorted(ids)  # each once
    assert store.counts()[Status.DONE] == 1000
    # One store call per record would be 1000 of each; quick handlers are taken in batches.
    assert len(store.claims) < 200, store.claims
    assert len(store.completions) < 200, store.completions
    assert max(store.claims) > 1


def test_a_slow_record_does_not_hold_back_the_quick_ones_claimed_with_it() -> None:
    store = CountingStore()
    started, release = threading.Event(), threading.Event()
    quick: list[str] = []
    with WebhookReceiver(SECRET, store=store, concurrency=2) as webhooks:

        @webhooks.on("*")
        def handler(event: Event) -> None:
            if event.data.id == "slow":
                started.set()
                release.wait(10)
            else:
                quick.append(event.data.id)

        record_without_processing(webhooks, [f"warm{i}" for i in range(200)])
        assert webhooks.drain(30)  # handlers are known to be quick: claims are batched
        del quick[:]
        record_without_processing(webhooks, ["slow", *(f"q{i}" for i in range(20))])
        try:
            assert started.wait(5)  # the worker's next poll claimed them all
            wait_until(lambda: len(quick) >= 20, 0.5)  # well before the next poll
            # The quick records ran on the other thread, and are marked done, while the
            # slow one still holds its thread.
            assert sorted(quick) == sorted(f"q{i}" for i in range(20))
            wait_until(lambda: store.counts()[Status.DONE] >= 220, 3)
            assert store.counts()[Status.DONE] == 220
            assert store.counts()[Status.PROCESSING] == 1
        finally:
            release.set()
        assert webhooks.drain(10)
        assert store.counts()[Status.DONE] == 221


def test_a_steady_stream_of_deliveries_is_claimed_a_window_at_a_time() -> None:
    # A delivery every millisecond or so: the worker lets them gather for its coalescing
    # window (10 ms) between claims, rather than claiming the few that came during its
    # last batch straight away (which took 73 claims here, for 36 windows).
    store = CountingStore()
    seen: list[str] = []
    with WebhookReceiver(SECRET, store=store, concurrency=4) as webhooks:
        webhooks.on("*")(lambda event: seen.append(event.data.id))
        deliver(webhooks, id="warm")
        assert webhooks.drain(5)
        claims = len(store.claims) + store.empty_claims
        started = time.monotonic()
        for n in range(300):
            deliver(webhooks, id=f"s{n}")
            time.sleep(0.001)
        assert webhooks.drain(10)
        elapsed = time.monotonic() - started
        claimed = len(store.claims) + store.empty_claims - claims
    assert len(seen) == 301
    assert claimed <= 1.25 * elapsed / 0.01 + 5, (claimed, elapsed)


def test_close_runs_records_already_claimed_instead_of_leaving_them_leased() -> None:
    store = CountingStore()
    started, release = threading.Event(), threading.Event()
    handled: list[str] = []
    webhooks = WebhookReceiver(SECRET, store=store, concurrency=1)

    @webhooks.on("*")
    def handler(event: Event) -> None:
        if event.data.id == "blocker":
            started.set()
            release.wait(10)
        handled.append(event.data.id)

    try:
        record_without_processing(webhooks, [f"warm{i}" for i in range(200)])
        assert webhooks.drain(30)
        record_without_processing(webhooks, ["blocker", "a", "b", "c"])
        assert started.wait(5)  # the worker's next poll claimed all four at once
        assert store.claims[-1] == 4
        closing = threading.Thread(target=webhooks.close, kwargs={"timeout": 10})
        closing.start()
        time.sleep(0.1)  # close() has asked the worker to stop
        release.set()
        closing.join(15)
        assert not closing.is_alive()
        assert handled[-4:] == ["blocker", "a", "b", "c"]
        assert store.counts()[Status.DONE] == 204
        assert store.counts()[Status.PROCESSING] == 0
    finally:
        release.set()
        webhooks.close()


def test_an_idle_worker_does_not_ask_the_store_again_until_something_is_recorded() -> None:
    store = CountingStore()
    with WebhookReceiver(SECRET, store=store, concurrency=1) as webhooks:
        webhooks.on("*")(lambda event: None)
        deliver(webhooks, id="first")
        assert webhooks.drain(5)
        before = store.empty_claims
        for n in range(20):
            deliver(webhooks, id=f"m{n}")
            assert webhooks.drain(5)
        # One claim that comes back short per delivery at most (it tells the worker that
        # nothing else is due); going idle costs no further store call. A poll of the store
        # (once a second) may add one.
        assert store.empty_claims - before <= 22
        assert store.counts()[Status.DONE] == 21


class SlowClaimStore(MemoryStore):
    """A MemoryStore whose next claim that finds something takes a while after choosing its
    records (as a claim on PostgreSQL or Redis does): what happens meanwhile is missed."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_claim = False
        self.claiming = threading.Event()

    def claim(self, owner: str, *, limit: int, lease: float) -> list[Record]:
        claimed = super().claim(owner, limit=limit, lease=lease)
        if self.slow_claim and claimed:
            self.slow_claim = False
            self.claiming.set()
            time.sleep(0.05)
        return claimed


def add_due(store: Store, event_id: str) -> None:
    now = utcnow()
    store.add(Record(event_id, "message.received", b"{}", now, next_attempt_at=now))


def test_a_delivery_recorded_during_a_claim_is_not_left_for_the_next_poll() -> None:
    # The claimer then runs a slow handler; the wake() that came during its claim gave no
    # token, so the claimer must hand one on, or the delivery waits for a poll (5 s here).
    store = SlowClaimStore()
    started: dict[str, float] = {}

    def process(record: Record) -> str | None:
        started.setdefault(record.event_id, time.monotonic())
        if record.event_id == "slow":
            time.sleep(3)
        return None

    worker = Worker(store, process, concurrency=4, poll_interval=5.0, retry_delays=())
    worker.start()
    try:
        store.slow_claim = True
        add_due(store, "slow")
        worker.wake()
        assert store.claiming.wait(5)
        recorded = time.monotonic()
        add_due(store, "quick")
        worker.wake()
        deadline = recorded + 2
        while "quick" not in started and time.monotonic() < deadline:
            time.sleep(0.005)
        assert started.get("quick", deadline) - recorded < 0.5
    finally:
        worker.close(5)


def test_a_retry_due_at_once_settled_during_a_claim_runs_again_promptly() -> None:
    store = SlowClaimStore()
    runs: dict[str, list[float]] = {}

    def process(record: Record) -> str | None:
        runs.setdefault(record.event_id, []).append(time.monotonic())
        if record.event_id == "fails once" and len(runs[record.event_id]) == 1:
            store.slow_claim = True
            add_due(store, "slow")
            worker.wake()  # another thread claims "slow" now...
            assert store.claiming.wait(5)
            return "boom"  # ...and this one fails while it claims
        if record.event_id == "slow":
            time.sleep(3)
        return None

    worker = Worker(store, process, concurrency=4, poll_interval=5.0, retry_delays=(0,))
    worker.start()
    try:
        add_due(store, "fails once")
        worker.wake()
        wait_until(lambda: len(runs.get("fails once", [])) >= 2, 5)
        first, *again = runs["fails once"]
        assert again and again[0] - first < 0.5
    finally:
        worker.close(5)


# -- settings, retries, purges and outcomes ---------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_seconds": float("nan")}, "lease_seconds"),
        ({"lease_seconds": float("inf")}, "lease_seconds"),
        ({"retry_delays": (30, -1)}, "retry delays"),
        ({"retry_delays": (30, float("inf"))}, "retry delays"),
        ({"retry_delays": (float("nan"),)}, "retry delays"),
        ({"retention": timedelta(0)}, "retention"),
        ({"retention": timedelta.max}, "retention"),
    ],
    ids=[
        "no-thread",
        "no-lease",
        "nan-lease",
        "endless-lease",
        "negative-delay",
        "endless-delay",
        "nan-delay",
        "no-retention",
        "endless-retention",
    ],
)
def test_a_worker_setting_that_could_not_work_is_refused(
    setting: dict[str, Any], message: str
) -> None:
    """Refused when the receiver is built, not found out at the first claim, retry or purge."""
    with pytest.raises(ValueError, match=message):
        Worker(MemoryStore(), lambda record: None, **setting)
    with pytest.raises(ValueError, match=message):
        WebhookReceiver(SECRET, store=MemoryStore(), **setting)
    with pytest.raises(ValueError, match=message):
        WebhookReceiver(SECRET, **setting)  # the default store: refused before it is made
    assert not os.path.exists(os.environ["AEROSTIC_WEBHOOKS_DB"])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"concurrency": "4"}, "concurrency must be an int, got str"),
        ({"concurrency": 2.0}, "concurrency must be an int, got float"),
        ({"lease_seconds": "30"}, "lease_seconds must be a number, got str"),
        ({"lease_seconds": True}, "lease_seconds must be a number, got bool"),
        ({"retry_delays": 30}, "retry_delays must be a sequence of numbers, got int"),
        ({"retry_delays": "30"}, "retry_delays must be a sequence of numbers, got str"),
        ({"retry_delays": (30, None)}, "retry delays must be numbers, got NoneType"),
        ({"retention": 3600}, "retention must be a datetime.timedelta, got int"),
    ],
    ids=str,
)
def test_a_worker_setting_of_the_wrong_kind_is_named(setting: dict[str, Any], message: str) -> None:
    """Not a bare comparison error from deep inside: the message names the setting."""
    with pytest.raises(TypeError, match=re.escape(message)):
        Worker(MemoryStore(), lambda record: None, **setting)
    with pytest.raises(TypeError, match=re.escape(message)):
        WebhookReceiver(SECRET, **setting)
    assert not os.path.exists(os.environ["AEROSTIC_WEBHOOKS_DB"])


class Count:
    """An integer that is not an ``int``, as numpy's are: ``range()`` takes it."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_concurrency_may_be_an_integer_of_another_kind() -> None:
    """As numpy's are: the kind check refuses what never worked (2.0), not what did."""
    two: Any = Count(2)
    assert Worker(MemoryStore(), lambda record: None, concurrency=two)._concurrency == 2
    with WebhookReceiver(SECRET, store=MemoryStore(), concurrency=two) as webhooks:
        webhooks.on("*")(lambda event: None)
        event_id = deliver(webhooks)
        assert webhooks.drain(5)
        assert status_of(webhooks.store, event_id) is Status.DONE


@pytest.mark.parametrize(
    "delays",
    [
        lambda: map(float, ["0", "0"]),  # as from a setting "0,0" split
        lambda: (float(d) for d in (0, 0)),
        {"first": 0.0, "then": 0.0}.values,
    ],
    ids=["map", "generator", "dict-values"],
)
def test_retry_delays_may_come_in_any_iterable_a_generator_read_once(
    delays: Callable[[], Iterable[float]],
) -> None:
    """The receiver used to check a generator, using it up, and hand its worker no retries
    at all; since the kind check, a map or dict's values were refused."""
    assert Worker(MemoryStore(), lambda record: None, retry_delays=delays()).max_attempts == 3
    runs: list[str] = []
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=delays()) as webhooks:

        @webhooks.on("*")
        def fails_twice(event: Event) -> None:
            runs.append(event.data.id)
            if len(runs) < 3:
                raise ValueError("not yet")

        event_id = deliver(webhooks, id="e1")
        assert webhooks.drain(5)
    assert status_of(webhooks.store, event_id) is Status.DONE
    assert runs == ["e1"] * 3


def test_the_longest_settings_a_date_can_express_are_accepted() -> None:
    Worker(
        MemoryStore(),
        lambda record: None,
        lease_seconds=86400 * 365 * 100,
        retry_delays=(0, 86400 * 365 * 100),
        retention=timedelta(days=365 * 1000),
    )


def test_each_retry_waits_its_own_delay() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=(0, 3600)) as webhooks:
        webhooks.on("*")(lambda event: 1 / 0)
        event_id = deliver(webhooks)
        assert webhooks.drain(5)
        record = webhooks.store.get(event_id)
    assert record is not None and record.next_attempt_at is not None
    assert (record.status, record.attempts) == (Status.PENDING, 2)
    assert record.next_attempt_at > utcnow() + timedelta(minutes=59)  # the second delay


def test_the_first_failing_handlers_error_is_kept() -> None:
    def first(event: Event) -> None:
        raise ValueError("first")

    def second(event: Event) -> None:
        raise KeyError("second")

    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=()) as webhooks:
        webhooks.on("*")(first)
        webhooks.on("*")(second)
        event_id = deliver(webhooks)
        assert webhooks.drain(5)
        record = webhooks.store.get(event_id)
    assert record is not None and record.last_error == "ValueError: first"


def test_a_stored_body_that_no_longer_parses_ends_failed_not_done() -> None:
    store = MemoryStore()
    store.add(Record("bad", "message.received", b"not json", utcnow()))
    with WebhookReceiver(SECRET, store=store, retry_delays=()) as webhooks:
        webhooks.start()
        assert webhooks.drain(5)
    record = store.get("bad")
    assert record is not None and record.status is Status.FAILED and record.last_error


class Fatal(BaseException):
    """Not an Exception: what a handler's own ``KeyboardInterrupt`` subclass might be."""


def test_a_handler_raising_a_base_exception_fails_its_event_but_not_the_worker() -> None:
    seen: list[str] = []
    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=(), concurrency=1) as webhooks:

        @webhooks.on("message.received")
        def fatal(event: Event) -> None:
            raise Fatal("out")

        webhooks.on("contact.created")(lambda event: seen.append(event.event))
        event_id = deliver(webhooks)
        assert webhooks.drain(5)
        deliver(webhooks, "contact.created")
        assert webhooks.drain(5)
        record = webhooks.store.get(event_id)
    assert record is not None
    assert (record.status, record.last_error) == (Status.FAILED, "Fatal: out")
    assert seen == ["contact.created"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_raising_cancelled_error_fails_like_any_other(kind: str) -> None:
    seen: list[str] = []
    hooked: list[str] = []

    def cancelled(event: Event) -> None:
        raise asyncio.CancelledError

    async def cancelled_async(event: Event) -> None:
        raise asyncio.CancelledError

    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=()) as webhooks:
        webhooks.on("*")(cancelled if kind == "sync" else cancelled_async)
        webhooks.on("*")(lambda event: seen.append(event.event))
        webhooks.on_error(lambda event, error: hooked.append(type(error).__name__))
        event_id = deliver(webhooks)
        assert webhooks.drain(5)
        record = webhooks.store.get(event_id)
    assert seen == ["message.received"] and hooked == ["CancelledError"]
    assert record is not None and record.status is Status.FAILED


def test_an_error_hook_that_raises_changes_nothing() -> None:
    seen: list[str] = []

    def failing(event: Event) -> None:
        raise ValueError("a")

    def hook(event: Event, error: BaseException) -> None:
        raise RuntimeError("the error tracker is down")

    with WebhookReceiver(SECRET, store=MemoryStore(), retry_delays=()) as webhooks:
        webhooks.on("*")(failing)
        webhooks.on("*")(lambda event: seen.append(event.event))
        webhooks.on_error(hook)
        event_id = deliver(webhooks)
        assert webhooks.drain(5)
        record = webhooks.store.get(event_id)
    assert seen == ["message.received"]
    assert record is not None and record.last_error == "ValueError: a"


def test_a_retry_due_shortly_runs_when_due_not_at_the_next_poll() -> None:
    runs: list[float] = []

    def process(record: Record) -> str | None:
        runs.append(time.monotonic())
        return "boom" if len(runs) == 1 else None

    store = MemoryStore()
    worker = Worker(store, process, poll_interval=60.0, retry_delays=(0.3,))
    worker.start()
    try:
        add_due(store, "a")
        worker.wake()
        assert wait_until(lambda: len(runs) == 2)
    finally:
        worker.close(5)
    assert runs[1] - runs[0] >= 0.3


def test_purge_runs_again_every_purge_interval() -> None:
    store = CountingStore()
    worker = Worker(store, lambda record: None, purge_interval=0.2)
    worker.start()
    try:
        assert wait_until(lambda: store.purges >= 1)  # the purge at start is done
        old = utcnow() - timedelta(days=8)
        store.add(Record("old", "message.sent", b"{}", old, status=Status.DONE))
        assert wait_until(lambda: store.get("old") is None)
    finally:
        worker.close(5)


def test_purge_waits_its_interval_between_runs() -> None:
    store = CountingStore()
    worker = Worker(store, lambda record: None, purge_interval=3600)
    worker.start()
    try:
        assert wait_until(lambda: store.purges >= 1)  # the purge at start
        time.sleep(0.5)
        assert store.purges == 1  # the next, in an hour
    finally:
        worker.close(5)


def test_a_purge_whose_worker_context_raised_is_tried_again_a_second_later() -> None:
    """Not an hour later, at the next purge_interval: a database out of reach as the
    worker starts would put off the first purge that long."""
    store = CountingStore()
    failed: list[str] = []

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        if threading.current_thread().name == "aerostic-webhooks-purge" and not failed:
            failed.append("once")
            raise ConnectionError("database out of reach")
        yield

    worker = Worker(store, lambda record: None, purge_interval=3600, context=context)
    worker.start()
    try:
        assert wait_until(lambda: store.purges >= 1, 5)
        assert failed == ["once"]
    finally:
        worker.close(5)


class SlowPurgeStore(MemoryStore):
    """A real MemoryStore whose purge takes as long as deleting a week of a busy receiver's
    records does (seconds: SQLite's batches, or Redis's scripts of 500)."""

    def purge(self, *, older_than: datetime) -> int:
        time.sleep(1.5)
        return super().purge(older_than=older_than)


def test_a_long_purge_does_not_hold_up_lease_renewals() -> None:
    # The purge ran on the thread that renews leases: while it ran, a slow handler's lease
    # ran out and another process's worker took its record up and ran it a second time.
    store = SlowPurgeStore()
    add_due(store, "slow")
    running, release = threading.Event(), threading.Event()

    def slow(record: Record) -> None:
        running.set()
        release.wait(10)

    worker = Worker(store, slow, lease_seconds=0.5)
    worker.start()
    try:
        assert running.wait(5)
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            assert store.claim("another-process", limit=1, lease=30) == []
            time.sleep(0.05)
    finally:
        release.set()
        worker.close(5)
    assert status_of(store, "slow") is Status.DONE


def test_closing_an_idle_worker_stops_every_thread_at_once() -> None:
    worker = Worker(MemoryStore(), lambda record: None, concurrency=4, poll_interval=60.0)
    worker.start()
    threads = list(worker._threads)
    time.sleep(0.3)  # every handler thread idle, waiting up to a minute
    began = time.monotonic()
    worker.close(20)
    assert time.monotonic() - began < 10
    assert not any(thread.is_alive() for thread in threads)


def test_a_quick_record_is_marked_done_while_a_slow_one_claimed_with_it_runs() -> None:
    release = threading.Event()
    slow_started = threading.Event()

    def process(record: Record) -> None:
        if record.event_id == "slow":
            slow_started.set()
            release.wait(20)

    store = CountingStore()
    worker = Worker(store, process, concurrency=1, poll_interval=60.0)
    worker.start()
    try:
        worker._run_seconds = 1e-6  # records have run quickly lately: one claim takes both
        now = utcnow()
        store.add(Record("quick", "m", b"{}", now - timedelta(seconds=2)))
        store.add(Record("slow", "m", b"{}", now - timedelta(seconds=1)))
        worker.wake()
        assert slow_started.wait(10)
        assert store.claims == [2]
        assert wait_until(lambda: status_of(store, "quick") is Status.DONE)
        assert status_of(store, "slow") is Status.PROCESSING
    finally:
        release.set()
        worker.close(5)


class HiccupStore(MemoryStore):
    """A MemoryStore whose ``method`` raises once when a worker thread calls it."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.failed = False
        self.maintained = 0
        self.renewing = threading.Event()

    def _hiccup(self, name: str) -> None:
        worker_thread = threading.current_thread().name.startswith("aerostic-webhooks")
        if name == self.method and worker_thread and not self.failed:
            self.failed = True
            raise ConnectionError("the store hiccupped")

    def claim(self, owner: str, *, limit: int, lease: float) -> list[Record]:
        self._hiccup("claim")
        return super().claim(owner, limit=limit, lease=lease)

    def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
        self.renewing.set()
        self._hiccup("renew")
        super().renew(owner, event_ids, lease=lease)

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        self._hiccup("complete_many")
        return super().complete_many(owner, event_ids)

    def reschedule(self, event_id: str, owner: str, *, at: datetime, error: str) -> bool:
        self._hiccup("reschedule")
        return super().reschedule(event_id, owner, at=at, error=error)

    def fail(self, event_id: str, owner: str, *, error: str) -> bool:
        self._hiccup("fail")
        return super().fail(event_id, owner, error=error)

    def purge(self, *, older_than: datetime) -> int:
        self._hiccup("purge")
        return super().purge(older_than=older_than)

    def next_due(self) -> datetime | None:
        self._hiccup("next_due")
        return super().next_due()

    def maintain(self) -> None:
        self.maintained += 1
        self._hiccup("maintain")


@pytest.mark.parametrize(
    "method", ["claim", "renew", "complete_many", "reschedule", "purge", "next_due", "maintain"]
)
def test_one_store_error_stops_no_worker_thread(method: str) -> None:
    store = HiccupStore(method)
    runs: list[str] = []
    with WebhookReceiver(
        SECRET, store=store, concurrency=1, retry_delays=(0, 0, 0), lease_seconds=0.3
    ) as webhooks:

        @webhooks.on("*")
        def first_run_of_e1_fails(event: Event) -> None:
            runs.append(event.data.id)
            if runs == ["e1"]:
                store.renewing.wait(10)  # a lease renewal while it runs
                raise RuntimeError("first run fails")

        ids = [deliver(webhooks, id="e1")]
        time.sleep(0.3)
        ids.append(deliver(webhooks, id="e2"))
        assert wait_until(lambda: all(status_of(store, i) is Status.DONE for i in ids))
        maintained = store.maintained
        assert wait_until(lambda: store.maintained > maintained)  # housekeeping goes on
    assert store.failed


def test_a_success_the_store_failed_to_record_is_recorded_later_not_run_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = HiccupStore("complete_many")
    runs: list[str] = []
    # One attempt only, and a lease shorter than the test: had the record been left to its
    # lease, it would come back with its attempts spent and end failed.
    with WebhookReceiver(SECRET, store=store, retry_delays=(), lease_seconds=0.3) as webhooks:

        @webhooks.on("*")
        def handle(event: Event) -> None:
            runs.append(event.data.id)

        event_id = deliver(webhooks, id="e1")
        assert wait_until(lambda: status_of(store, event_id) is Status.DONE)
        time.sleep(0.5)  # past the lease
        assert webhooks.drain(5)
    assert store.failed
    assert status_of(store, event_id) is Status.DONE
    assert runs == ["e1"]
    warnings = [r for r in caplog.records if "could not mark" in r.getMessage()]
    assert [r.levelname for r in warnings] == ["WARNING"]


@pytest.mark.parametrize(
    ("method", "retry_delays", "status"),
    [("reschedule", (3600,), Status.PENDING), ("fail", (), Status.FAILED)],
)
def test_a_failure_the_store_failed_to_record_keeps_the_handlers_error(
    method: str, retry_delays: tuple[float, ...], status: Status
) -> None:
    """Recorded later, not left to its lease: the retry waits its delay rather than running
    at once, and a last attempt ends with the handler's error, not "lease expired"."""
    store = HiccupStore(method)
    runs: list[str] = []
    with WebhookReceiver(
        SECRET, store=store, retry_delays=retry_delays, lease_seconds=0.3
    ) as webhooks:

        @webhooks.on("*")
        def handle(event: Event) -> None:
            runs.append(event.data.id)
            raise ValueError("CRM is down")

        event_id = deliver(webhooks, id="e1")
        assert wait_until(lambda: status_of(store, event_id) is status)
        time.sleep(0.5)  # past the lease
        assert webhooks.drain(5)
    assert store.failed
    record = store.get(event_id)
    assert record is not None
    assert (record.status, record.attempts) == (status, 1)
    assert record.last_error == "ValueError: CRM is down"
    assert runs == ["e1"]


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        (ValueError("caf\udce9"), "ValueError: caf\\udce9"),
        (ValueError("a\x00b"), "ValueError: a\\x00b"),
        (Unprintable(), "Unprintable: <its message could not be read>"),
    ],
    ids=["lone-surrogate", "nul", "str-raises"],
)
def test_a_handlers_error_is_kept_whatever_its_message(
    tmp_path: Path, error: Exception, kept: str
) -> None:
    """Not a store error on every try to record it, until its lease lapses."""
    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    runs: list[str] = []
    with WebhookReceiver(SECRET, store=store, retry_delays=(3600,)) as webhooks:

        @webhooks.on("*")
        def handle(event: Event) -> None:
            runs.append(event.data.id)
            raise error

        event_id = deliver(webhooks, id="e1")
        assert webhooks.drain(5)
        record = store.get(event_id)
    assert record is not None
    assert (record.status, record.attempts, record.last_error) == (Status.PENDING, 1, kept)
    assert runs == ["e1"]


class RefusingStore(MemoryStore):
    """A MemoryStore whose ``complete_many`` refuses ``poison`` for good, and all while
    ``down``; ``reschedule`` and ``fail`` refuse all while ``down`` too."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.poison: set[str] = set()
        self.refusals = 0

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        if self.down.is_set() or self.poison & set(event_ids):
            self.refusals += 1
            raise ConnectionError("refused")
        return super().complete_many(owner, event_ids)

    def reschedule(self, event_id: str, owner: str, *, at: datetime, error: str) -> bool:
        if self.down.is_set():
            self.refusals += 1
            raise ConnectionError("refused")
        return super().reschedule(event_id, owner, at=at, error=error)

    def fail(self, event_id: str, owner: str, *, error: str) -> bool:
        if self.down.is_set():
            self.refusals += 1
            raise ConnectionError("refused")
        return super().fail(event_id, owner, error=error)


def test_close_records_a_success_the_store_failed_to_record() -> None:
    store = RefusingStore()
    store.down.set()
    with WebhookReceiver(SECRET, store=store, retry_delays=()) as webhooks:
        webhooks.on("*")(lambda event: None)
        event_id = deliver(webhooks)
        assert wait_until(lambda: store.refusals >= 1)
        time.sleep(0.3)  # housekeeping tries again, and fails again
        assert status_of(store, event_id) is Status.PROCESSING
        store.down.clear()
    assert status_of(store, event_id) is Status.DONE


def test_a_success_the_store_never_records_is_left_to_its_lease_not_held_for_ever() -> None:
    """Tried for a lease, then given up: the record ends failed (visible, and retry() takes
    it) rather than being renewed for as long as the worker runs."""
    store = RefusingStore()
    with WebhookReceiver(SECRET, store=store, retry_delays=(), lease_seconds=0.3) as webhooks:
        webhooks.on("*")(lambda event: None)
        store.poison.add("message.received:msg_1")
        event_id = deliver(webhooks, id="msg_1")
        assert wait_until(lambda: status_of(store, event_id) is Status.FAILED, 5)
        assert webhooks.drain(5)
    record = store.get(event_id)
    assert record is not None and record.last_error is not None
    assert LEASE_LAPSED in record.last_error


def test_one_claim_the_store_refuses_does_not_hold_up_the_others() -> None:
    store = RefusingStore()
    for name in ("msg_p", "msg_ok"):
        store.add(Record(f"message.received:{name}", "message.received", b"{}", utcnow()))
    worker = Worker(store, lambda record: None)
    claims = [store.claim(f"{worker.owner}:{n}", limit=1, lease=30) for n in range(2)]
    store.down.set()
    for [record] in claims:
        worker._in_flight[record.event_id] = record
        worker._done.append(record)
    worker._complete()  # an outage: both claims refused
    assert store.refusals == 2
    store.down.clear()  # over, but for msg_p
    store.poison.add("message.received:msg_p")
    worker._complete_unsettled()  # as housekeeping does every 0.25 s
    assert status_of(store, "message.received:msg_ok") is Status.DONE
    assert status_of(store, "message.received:msg_p") is Status.PROCESSING


def test_close_says_which_handled_records_it_could_not_mark_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RefusingStore()
    webhooks = WebhookReceiver(SECRET, store=store, retry_delays=())
    webhooks.on("*")(lambda event: None)
    store.down.set()
    deliver(webhooks, id="msg_c")
    assert wait_until(lambda: store.refusals >= 1)
    webhooks.close(timeout=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert not any("still being handled" in m for m in warnings), warnings
    # One attempt only (retry_delays=()): taken back once its lease ends, it is not run again.
    assert any(
        "could not mark 1 handled record(s) done" in m and "kept as failed ('lease expired')" in m
        for m in warnings
    ), warnings


class Interrupted(BaseException):
    """What a store call may raise past ``except Exception``: the calling thread goes down."""


class InterruptingStore(RefusingStore):
    """A RefusingStore whose ``complete_many`` raises ``Interrupted`` for ``interrupting``."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupting: set[str] = set()

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        if self.interrupting & set(event_ids):
            raise Interrupted
        return super().complete_many(owner, event_ids)


@pytest.mark.parametrize("retrying", [False, True], ids=["first-try", "housekeeping-retry"])
def test_a_thread_going_down_mid_settle_leaves_no_claim_in_flight_for_ever(
    retrying: bool,
) -> None:
    """The claims after the one whose store call raised a BaseException are left to their
    leases too: kept in flight, housekeeping would renew their leases for as long as the
    worker runs, and drain() would wait for them until its timeout."""
    store = InterruptingStore()
    for name in ("msg_i", "msg_ok"):
        store.add(Record(f"message.received:{name}", "message.received", b"{}", utcnow()))
    worker = Worker(store, lambda record: None)
    claims = [store.claim(f"{worker.owner}:{n}", limit=1, lease=30) for n in range(2)]
    for [record] in claims:
        worker._in_flight[record.event_id] = record
        worker._done.append(record)
    if retrying:
        store.down.set()
        worker._complete()  # an outage: both claims wait for housekeeping
        assert len(worker._unsettled) == 2
        store.down.clear()
    store.interrupting.add("message.received:msg_i")
    # As a handler thread does, or housekeeping every 0.25 s.
    settle = worker._complete_unsettled if retrying else worker._complete
    with pytest.raises(Interrupted):
        settle()
    assert worker._in_flight == {}
    assert worker._unsettled == []


@pytest.mark.parametrize(
    ("retry_delays", "claimed"),
    [((3600,), "will be retried"), ((), "kept as failed")],
    ids=["reschedule", "fail"],
)
def test_a_failure_whose_lease_was_taken_meanwhile_is_not_logged_as_recorded(
    caplog: pytest.LogCaptureFixture, retry_delays: tuple[float, ...], claimed: str
) -> None:
    """Tried again after an outage in which its lease ran out and another worker took the
    record up, the store call changes nothing (``False``): the log must not say the retry
    was scheduled, or the record kept as failed, while another worker is running it."""
    store = RefusingStore()
    event_id = "message.received:msg_l"
    store.add(Record(event_id, "message.received", b"{}", utcnow()))
    worker = Worker(store, lambda record: None, retry_delays=retry_delays)
    # A lease that has already run out: renewals failed through the outage as well.
    [record] = store.claim(f"{worker.owner}:0", limit=1, lease=0)
    worker._in_flight[event_id] = record
    store.down.set()
    worker._settle(
        f"{worker.owner}:0", [record], error="ValueError: CRM is down", failing_since=None
    )
    assert len(worker._unsettled) == 1
    [taken] = store.claim("another-worker", limit=1, lease=30)
    store.down.clear()
    worker._complete_unsettled()  # as housekeeping does every 0.25 s
    assert worker._in_flight == {}
    assert worker._unsettled == []
    assert store.get(event_id) == taken
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(claimed in message for message in messages), messages
    assert any(
        f"could not record the failure of {event_id}: its lease was no longer" in message
        for message in messages
    ), messages


def test_a_success_whose_lease_was_taken_meanwhile_is_logged_as_not_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Marked done too late (another worker holds it), it runs again: the log says so, as
    the one explanation a user gets for a handler that ran twice."""
    store = MemoryStore()
    for name in ("msg_kept", "msg_lost"):
        store.add(Record(f"message.received:{name}", "message.received", b"{}", utcnow()))
    worker = Worker(store, lambda record: None)
    owner = f"{worker.owner}:0"
    records = store.claim(owner, limit=2, lease=0)  # leases that ran out meanwhile
    taken = store.take("message.received:msg_lost", "another-worker", lease=30)
    assert taken is not None
    worker._settle(owner, records, error=None, failing_since=None)
    assert status_of(store, "message.received:msg_kept") is Status.DONE
    assert status_of(store, "message.received:msg_lost") is Status.PROCESSING
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 of 2 handled records were no longer" in m for m in messages), messages


class YesNoStore(MemoryStore):
    """A custom store whose ``complete_many`` answers "it worked", not how many."""

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        return bool(super().complete_many(owner, event_ids))


def test_a_store_that_answers_complete_many_with_a_bool_is_not_judged_by_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``True`` is an int (1): read as a count, two records marked done would be one lost."""
    store = YesNoStore()
    for name in ("msg_a", "msg_b"):
        store.add(Record(f"message.received:{name}", "message.received", b"{}", utcnow()))
    worker = Worker(store, lambda record: None)
    owner = f"{worker.owner}:0"
    records = store.claim(owner, limit=2, lease=30)
    worker._settle(owner, records, error=None, failing_since=None)
    assert all(status_of(store, r.event_id) is Status.DONE for r in records)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("no longer this worker's" in m for m in messages), messages


class LostReplyStore(MemoryStore):
    """A MemoryStore whose first ``complete_many`` marks the records done, then raises: the
    reply lost on its way back (a Redis connection dropped after the pipeline ran)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        done = super().complete_many(owner, event_ids)
        if not self.lost:
            self.lost = True
            raise ConnectionError("connection lost before the reply")
        return done


def test_a_retried_success_the_failed_call_had_recorded_is_not_said_to_run_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The retry marks none (the first call did): nothing runs again, and the log must not
    say that something does."""
    store = LostReplyStore()
    for name in ("msg_a", "msg_b", "msg_taken"):
        store.add(Record(f"message.received:{name}", "message.received", b"{}", utcnow()))
    worker = Worker(store, lambda record: None)
    owner = f"{worker.owner}:0"
    records = store.claim(owner, limit=3, lease=30)
    handled = [r for r in records if r.event_id != "message.received:msg_taken"]
    worker._settle(owner, handled, error=None, failing_since=None)
    assert store.lost
    assert all(status_of(store, r.event_id) is Status.DONE for r in handled)
    worker._complete_unsettled()
    assert not worker._unsettled
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("no longer this worker's" in m for m in messages), messages


def test_a_retried_success_whose_lease_was_taken_meanwhile_is_still_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The retry's check of what the failed call recorded does not hide a record another
    worker took up meanwhile."""
    store = HiccupStore("complete_many")
    for name in ("msg_kept", "msg_lost"):
        store.add(Record(f"message.received:{name}", "message.received", b"{}", utcnow()))
    worker = Worker(store, lambda record: None)
    owner = f"{worker.owner}:0"
    records = store.claim(owner, limit=2, lease=0)  # leases that run out meanwhile
    thread = threading.Thread(
        target=worker._settle,
        args=(owner, records),
        kwargs={"error": None, "failing_since": None},
        name="aerostic-webhooks-test",  # a worker thread's name: the store hiccups once
    )
    thread.start()
    thread.join()
    assert store.failed
    taken = store.take("message.received:msg_lost", "another-worker", lease=30)
    assert taken is not None
    worker._complete_unsettled()
    assert status_of(store, "message.received:msg_kept") is Status.DONE
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 of 2 handled records were no longer" in m for m in messages), messages


@pytest.mark.parametrize("fails", [False, True], ids=["handled", "failed"])
def test_giving_up_on_a_last_attempt_says_it_may_end_failed(
    caplog: pytest.LogCaptureFixture, fails: bool
) -> None:
    """Its attempts spent, a record left to its lease is not run again: the claim that takes
    it back keeps it as failed with "lease expired", and the warning must say so."""
    store = RefusingStore()
    store.down.set()
    runs: list[str] = []
    with WebhookReceiver(SECRET, store=store, retry_delays=(), lease_seconds=0.3) as webhooks:

        @webhooks.on("*")
        def handle(event: Event) -> None:
            runs.append(event.data.id)
            if fails:
                raise ValueError("CRM is down")

        event_id = deliver(webhooks, id="e1")

        def gave_up() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.levelno == logging.WARNING
                and re.match(r"could not .* for [0-9.]+s; ", r.getMessage())
            ]

        assert wait_until(lambda: bool(gave_up()))
        store.down.clear()
        assert wait_until(lambda: status_of(store, event_id) is Status.FAILED)
    record = store.get(event_id)
    assert record is not None and record.last_error is not None
    assert record.last_error.startswith(LEASE_LAPSED)
    assert runs == ["e1"]
    [message] = gave_up()
    assert "kept as failed ('lease expired')" in message, message


class Seconds(float):
    """A float of another kind, as numpy's float64 is: sums stay of its kind, and its repr
    is no float's (numpy's: "np.float64(30.0)")."""

    def __add__(self, other: float) -> Seconds:
        return Seconds(float(self) + other)

    __radd__ = __add__

    def __repr__(self) -> str:
        return f"Seconds({float(self)})"


def test_seconds_given_as_a_float_of_another_kind_work_with_redis(redis_prefix: str) -> None:
    """RedisStore hands its scripts repr(time.time() + lease): the kind check takes numpy's
    float64 (a float), but Redis took "np.float64(...)" for no number and refused every
    claim and renewal."""
    from aerostic_webhooks.stores.redis import RedisStore

    store = RedisStore(REDIS_URL, prefix=redis_prefix)
    runs: list[str] = []
    with WebhookReceiver(
        SECRET, store=store, lease_seconds=Seconds(30), retry_delays=(Seconds(0),)
    ) as webhooks:

        @webhooks.on("*")
        def fails_once(event: Event) -> None:
            runs.append(event.data.id)
            if len(runs) == 1:
                raise ValueError("first run fails")

        event_id = deliver(webhooks, id="e1")
        assert webhooks.drain(5)
        assert status_of(store, event_id) is Status.DONE  # before close() closes the store
    assert runs == ["e1", "e1"]


class WithoutUnclaim:
    """A store of one's own written before ``unclaim``: every other method, MemoryStore's."""

    def __init__(self) -> None:
        self._store = MemoryStore()

    def __getattr__(self, name: str) -> Any:
        if name == "unclaim":
            raise AttributeError(name)
        return getattr(self._store, name)


def stop_with_records_claimed_but_not_started(store: Store) -> tuple[Worker, threading.Event]:
    """A one-thread worker that has learnt its handlers are quick claims a slow record with
    three after it; close() then runs out of time while the slow one runs."""
    started, release = threading.Event(), threading.Event()

    def process(record: Record) -> None:
        if record.event_id == "slow":
            started.set()
            release.wait(10)

    worker = Worker(store, process, concurrency=1, retry_delays=(0,), lease_seconds=30)
    now = utcnow()
    for n in range(100):  # the worker learns that handlers take no time: it claims in batches
        store.add(Record(f"warm{n}", "message.sent", b"{}", now - timedelta(seconds=10)))
    assert worker.drain(10)
    store.add(Record("slow", "message.sent", b"{}", now - timedelta(seconds=3)))
    for name in ("a", "b", "c"):
        store.add(Record(name, "message.sent", b"{}", now - timedelta(seconds=2)))
    worker.wake()
    assert started.wait(5)
    assert (store.get("c") or Record("", "", b"", now)).status is Status.PROCESSING
    worker.close(timeout=0.2)
    return worker, release


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_close_hands_back_records_claimed_but_not_started(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Left leased, they came back once the lease ended with an attempt charged and "lease
    expired"; on their last attempt, they were dead-lettered without ever having run."""
    caplog.set_level(logging.INFO, logger="aerostic_webhooks")
    store: Store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "s.db")
    worker, release = stop_with_records_claimed_but_not_started(store)
    try:
        for name in ("a", "b", "c"):
            kept = store.get(name)
            assert kept is not None
            assert (kept.status, kept.attempts, kept.last_error) == (Status.PENDING, 0, None)
            assert kept.lease_owner is None
        slow = store.get("slow")
        assert slow is not None and slow.status is Status.PROCESSING
        assert "1 record(s) still being handled" in caplog.text
        assert "3 record(s) claimed but not started were handed back" in caplog.text
    finally:
        release.set()
    # The handler that outlived close() finishes its own record, and nothing else.
    assert wait_until(lambda: getattr(store.get("slow"), "status", None) is Status.DONE, 5)
    time.sleep(0.1)
    assert [r.event_id for r in store.list(status=Status.PENDING)] == ["c", "b", "a"]
    worker.close()
    store.close()


def test_a_store_without_unclaim_leaves_unstarted_records_to_their_leases(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aerostic_webhooks")
    store = WithoutUnclaim()
    worker, release = stop_with_records_claimed_but_not_started(store)
    try:
        for name in ("a", "b", "c"):
            kept = store.get(name)
            assert kept is not None and kept.status is Status.PROCESSING
        assert "3 record(s) claimed but not started are left to their leases" in caplog.text
        # The one still running, not the three never started too.
        assert "1 record(s) still being handled" in caplog.text
    finally:
        release.set()
    assert wait_until(lambda: getattr(store.get("slow"), "status", None) is Status.DONE, 5)
    worker.close()
