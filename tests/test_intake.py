"""The intake: asyncio requests' deliveries recorded on one thread, many per store call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from aerostic_webhooks import (
    Event,
    MemoryStore,
    Receipt,
    SQLiteStore,
    StoreUnavailable,
    WebhookReceiver,
)
from aerostic_webhooks.intake import _STOP, MAX_BATCH, Intake, handler_pool, off_loop
from aerostic_webhooks.stores import Record, Status
from aerostic_webhooks.stores.base import utcnow

from .contract import SECRET, sample_body, signed

if TYPE_CHECKING:
    from aerostic_webhooks.stores.redis import RedisStore

T = TypeVar("T")


class Recorder:
    """A ``write`` that notes its batches and can be held, so that requests queue meanwhile."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    async def hold(self, intake: Intake[int, int], item: int) -> asyncio.Future[int]:
        """Submit ``item`` and wait until its write is under way and held at the gate."""
        self.gate.clear()
        first = asyncio.ensure_future(intake.submit(item))
        await asyncio.to_thread(self.entered.wait, WAIT)
        return first

    def __call__(self, batch: list[int]) -> list[int | BaseException]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(list(batch))
        self.threads.add(threading.current_thread().name)
        return [ValueError(f"odd {n}") if n % 2 else n * 10 for n in batch]


WAIT = 10.0  # seconds: a request not answered by then is a hang, and fails the test


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` with a deadline, so that a request left unanswered fails the test."""
    return asyncio.run(asyncio.wait_for(coroutine, WAIT))


async def submit_all(intake: Intake[int, int], items: Sequence[int]) -> list[int | BaseException]:
    results = await asyncio.gather(*(intake.submit(n) for n in items), return_exceptions=True)
    return list(results)


def test_each_request_gets_its_own_outcome_in_order() -> None:
    write = Recorder()
    intake: Intake[int, int] = Intake(write)
    try:
        results = run(submit_all(intake, range(6)))
    finally:
        intake.close()
    assert [r if isinstance(r, int) else str(r) for r in results] == [
        0, "odd 1", 20, "odd 3", 40, "odd 5"
    ]  # fmt: skip
    assert write.threads == {"aerostic-webhooks-intake"}


def test_requests_that_queue_during_a_write_share_the_next_one() -> None:
    write = Recorder()
    intake: Intake[int, int] = Intake(write)

    async def scenario() -> list[object]:
        first = await write.hold(intake, 0)  # the other 49 requests queue meanwhile
        rest = [asyncio.ensure_future(intake.submit(n)) for n in range(2, 100, 2)]
        await asyncio.sleep(0.05)
        write.gate.set()
        return list(await asyncio.gather(first, *rest))

    try:
        results = run(scenario())
    finally:
        intake.close()
    assert results == [n * 10 for n in range(0, 100, 2)]
    assert write.batches == [[0], list(range(2, 100, 2))]


def test_a_write_that_raises_refuses_the_whole_batch() -> None:
    def broken(batch: list[int]) -> list[int]:
        raise OSError("disk gone")

    intake: Intake[int, int] = Intake(broken)
    try:
        results = run(submit_all(intake, [1, 2, 3]))
    finally:
        intake.close()
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert all(isinstance(r, RuntimeError) and isinstance(r.__cause__, OSError) for r in results)
    assert len({id(r) for r in results}) == 3  # one each: a shared one would share a traceback


def test_a_write_that_raises_is_logged_by_its_summary_and_in_full_at_debug_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database's error may quote the row it refused on the lines after the first."""
    caplog.set_level(logging.DEBUG, logger="aerostic_webhooks")

    def broken(batch: list[int]) -> list[int]:
        raise OSError("disk gone\nDETAIL:  Failing row contains (+919876543210)")

    intake: Intake[int, int] = Intake(broken)
    try:
        run(submit_all(intake, [1, 2]))
    finally:
        intake.close()
    ours = [r for r in caplog.records if r.name == "aerostic_webhooks"]
    [loud] = [r for r in ours if r.levelno >= logging.INFO]
    assert loud.levelno == logging.ERROR and loud.exc_info is None
    assert "OSError: disk gone" in loud.getMessage()
    assert "+919876543210" not in loud.getMessage()
    [full] = [r for r in ours if r.exc_info is not None]
    assert full.levelno == logging.DEBUG


def test_a_write_with_the_wrong_number_of_outcomes_refuses_the_batch() -> None:
    intake: Intake[int, int] = Intake(lambda batch: [1])
    try:
        results = run(submit_all(intake, [1, 2]))
    finally:
        intake.close()
    assert all(isinstance(r, RuntimeError) for r in results), results


def test_a_cancelled_request_does_not_disturb_the_others() -> None:
    write = Recorder()
    intake: Intake[int, int] = Intake(write)

    async def scenario() -> list[int]:
        blocker = await write.hold(intake, 0)  # 2 and 4 queue behind it, together
        doomed = asyncio.ensure_future(intake.submit(2))
        kept = asyncio.ensure_future(intake.submit(4))
        await asyncio.sleep(0)  # both are queued
        doomed.cancel()  # the client went away while its delivery waited
        write.gate.set()
        return [await blocker, await kept]

    try:
        assert run(scenario()) == [0, 40]
    finally:
        intake.close()
    assert write.batches == [[0], [2, 4]]  # written all the same, and answered to nobody


def test_an_outcome_a_future_refuses_fails_its_request_and_no_other() -> None:
    def write(batch: list[int]) -> list[object]:
        # StopIteration cannot be set on a future (it would end the awaiting coroutine oddly)
        return [StopIteration() if n == 1 else n * 10 for n in batch]

    intake: Intake[int, int] = Intake(write)  # type: ignore[arg-type]
    try:
        results = run(submit_all(intake, range(3)))
    finally:
        intake.close()
    assert results[0] == 0 and results[2] == 20
    assert isinstance(results[1], RuntimeError)
    # Up to Python 3.12 the future refuses it with a TypeError, which the intake wraps; from
    # 3.13 the future takes it and wraps it in a RuntimeError itself.
    cause = TypeError if sys.version_info < (3, 13) else StopIteration
    assert isinstance(results[1].__cause__, cause)


def test_requests_from_several_loops_are_each_answered_on_their_own() -> None:
    write = Recorder()
    intake: Intake[int, int] = Intake(write)
    results: dict[int, list[int | BaseException]] = {}

    def serve(offset: int) -> None:
        results[offset] = run(submit_all(intake, range(offset, offset + 40, 2)))

    threads = [threading.Thread(target=serve, args=(base,)) for base in (0, 1000, 2000)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        intake.close()
    for offset in (0, 1000, 2000):
        assert results[offset] == [n * 10 for n in range(offset, offset + 40, 2)]


def test_close_stops_the_thread_and_a_later_request_starts_another() -> None:
    write = Recorder()
    intake: Intake[int, int] = Intake(write)
    assert run(intake.submit(2)) == 20
    thread = intake._thread
    assert thread is not None
    intake.close(5)
    assert not thread.is_alive()
    try:
        assert run(intake.submit(4)) == 40
    finally:
        intake.close(5)


def check_in_a_forked_child(check: Callable[[], bool], then: Callable[[], None]) -> None:
    """Run ``check`` in a forked child, and ``then`` in the parent meanwhile; the child must
    answer True before ``WAIT`` seconds (an alarm ends a child that hangs)."""
    read, send = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.alarm(int(WAIT))
        try:
            code = 0 if check() else 1
        except BaseException:
            code = 2
        os.write(send, bytes([code]))
        os._exit(0)
    then()
    os.close(send)
    try:
        assert os.read(read, 1) == bytes([0])
    finally:
        os.waitpid(pid, 0)
        os.close(read)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_starts_afresh_even_if_the_lock_was_held_at_the_fork() -> None:
    write = Recorder()
    intake: Intake[int, int] = Intake(write)
    assert run(intake.submit(2)) == 20  # the parent's thread is running
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # another thread of the parent, in the middle of a submit at the fork
        with intake._lock:
            held.set()
            release.wait(WAIT)

    def let_go() -> None:
        release.set()
        holder.join(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(WAIT)
    try:
        # The child: the parent's thread and its lock holder do not exist there.
        check_in_a_forked_child(lambda: run(intake.submit(6)) == 60, let_go)
    finally:
        intake.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_receives_large_bodies_on_a_pool_of_its_own() -> None:
    """The parent's pool threads do not exist in a child: work sent to the inherited pool
    would wait forever (a gunicorn worker forked after the app received at import time)."""
    large = sample_body("message.received", id="large-0", text="x" * 70_000)  # over 64 KB
    pool, both = off_loop(), threading.Barrier(2)
    for running in [pool.submit(both.wait, WAIT) for _ in range(2)]:
        running.result(WAIT)  # the parent's pool has all its threads, so a child has none
    with WebhookReceiver(SECRET, store=MemoryStore(), process="external") as receiver:

        def receive_another() -> bool:
            (outcome,) = run(receive_all(receiver, [large]))
            return getattr(outcome, "duplicate", None) is False

        check_in_a_forked_child(receive_another, lambda: None)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_runs_inline_handlers_on_a_pool_of_its_own() -> None:
    """As for large bodies: the parent's idle handler thread does not exist in the child, and
    an inherited pool would count on it and never start one."""
    assert handler_pool().submit(lambda: True).result(WAIT)
    with WebhookReceiver(SECRET, store=MemoryStore(), process="inline") as receiver:

        def receive_another() -> bool:
            (outcome,) = run(receive_all(receiver, [sample_body("message.received", id="in-0")]))
            return getattr(outcome, "duplicate", None) is False

        check_in_a_forked_child(receive_another, lambda: None)


def test_a_request_racing_close_is_answered() -> None:
    intake: Intake[int, int] = Intake(lambda batch: [n * 10 for n in batch])
    assert run(intake.submit(1)) == 10
    real = intake._queue

    class CloseFirst:
        """The thread's queue, where ``close()`` runs in another thread just before a
        request's put: the narrowest race between the two."""

        def put(self, item: object) -> None:
            if item is not _STOP:
                closer = threading.Thread(target=intake.close, args=(WAIT,))
                closer.start()
                closer.join(0.2)  # returns at once unless submit holds close() off
            real.put(item)

    intake._queue = CloseFirst()  # type: ignore[assignment]
    try:
        assert run(intake.submit(2)) == 20  # not stranded behind the closing thread's stop
    finally:
        intake.close(WAIT)


def test_close_during_a_write_stops_that_thread_though_a_request_starts_another() -> None:
    write = Recorder()
    intake: Intake[int, int] = Intake(write)

    async def scenario() -> tuple[list[int], float, bool]:
        first = await write.hold(intake, 2)
        old = intake._thread
        assert old is not None
        closer = threading.Thread(target=intake.close, args=(WAIT,))
        started = time.monotonic()
        closer.start()
        while intake._thread is not None:  # close() has marked the old thread's queue
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(intake.submit(4))  # a new thread, a new queue
        write.gate.set()
        answers = [await first, await second]
        await asyncio.to_thread(closer.join, WAIT)
        return answers, time.monotonic() - started, old.is_alive()

    try:
        answers, took, old_alive = run(scenario())
    finally:
        intake.close(WAIT)
    assert answers == [20, 40]
    assert not old_alive
    assert took < WAIT / 2  # close() did not wait out its timeout


# -- the receiver's intake ------------------------------------------------------------------


def deliveries(count: int, prefix: str = "m") -> list[bytes]:
    return [sample_body("message.received", id=f"{prefix}-{n}") for n in range(count)]


async def receive_all(receiver: WebhookReceiver, bodies: Sequence[bytes]) -> list[object]:
    calls = (receiver.receive_async(body, signed(body)) for body in bodies)
    return list(await asyncio.gather(*calls, return_exceptions=True))


class CountingSQLite(SQLiteStore):
    """An SQLite store that counts its write calls."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[int] = []

    def add_many(self, records: Sequence[Record]) -> list[bool]:
        self.calls.append(len(records))
        return super().add_many(records)


def test_concurrent_deliveries_are_recorded_in_few_transactions(tmp_path: Path) -> None:
    store = CountingSQLite(tmp_path / "inbox.sqlite3")
    bodies = deliveries(200)
    with WebhookReceiver(SECRET, store=store, process="external") as receiver:
        receipts = run(receive_all(receiver, bodies + bodies[:50]))
        assert [getattr(r, "duplicate", r) for r in receipts] == [False] * 200 + [True] * 50
        assert store.counts()[Status.PENDING] == 200
        assert sorted(r.body for r in store.list(limit=500)) == sorted(bodies)
    assert sum(store.calls) == 250
    assert len(store.calls) < 250  # batched: the requests queued during a write share the next


def test_a_redelivery_in_the_same_batch_is_a_duplicate(tmp_path: Path) -> None:
    body = sample_body("message.received", id="twice")
    with WebhookReceiver(SECRET, store=SQLiteStore(tmp_path / "i.sqlite3")) as receiver:
        first, second = run(receive_all(receiver, [body, body]))
    assert [first.duplicate, second.duplicate] == [False, True]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_an_event_id_no_store_can_keep_is_replaced_and_fails_no_other_delivery(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """An ``event_id=`` rule that makes a lone surrogate: SQLite and Redis raised
    UnicodeEncodeError, a 503 at every retry, and the intake refused the deliveries written
    with it too. It is replaced by the default identity, loudly, as other unusable ids are."""
    store: SQLiteStore | RedisStore
    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "inbox.sqlite3")
    else:
        from aerostic_webhooks.stores.redis import RedisStore

        url, prefix = (request.getfixturevalue(name) for name in ("redis_url", "redis_prefix"))
        store = RedisStore(url, prefix=prefix)

    def own_id(event: Event) -> str:
        data_id = getattr(event.data, "id", "")
        return "own:caf\udce9" if data_id == "m-2" else f"own:{data_id}"

    bodies = deliveries(5)
    with WebhookReceiver(SECRET, store=store, process="external", event_id=own_id) as receiver:
        receipts = run(receive_all(receiver, bodies))
        assert all(isinstance(r, Receipt) and not r.duplicate for r in receipts), receipts
        ids = [r.event_id for r in receipts if isinstance(r, Receipt)]
        assert ids == ["own:m-0", "own:m-1", "message.received:m-2", "own:m-3", "own:m-4"]
        assert store.counts()[Status.PENDING] == 5
        again = run(receive_all(receiver, bodies[2:3]))  # the sender's retry: a duplicate
        assert [getattr(r, "duplicate", r) for r in again] == [True]
    assert "returned no usable id" in caplog.text


def test_a_record_the_store_cannot_write_fails_only_its_own_delivery(tmp_path: Path) -> None:
    """A store that raises for one record (an error of its own, not StoreUnavailable): the
    others written with it are recorded one by one, and only that delivery is refused."""

    class Picky(SQLiteStore):
        def add(self, record: Record) -> bool:
            if record.event_id.endswith(":m-1"):
                raise ValueError("cannot keep this one")
            return super().add(record)

        def add_many(self, records: Sequence[Record]) -> list[bool]:
            if any(record.event_id.endswith(":m-1") for record in records):
                raise ValueError("cannot keep this one")
            return super().add_many(records)

    store = Picky(tmp_path / "inbox.sqlite3")
    with WebhookReceiver(SECRET, store=store, process="external") as receiver:
        results = run(receive_all(receiver, deliveries(4)))
        outcomes = [type(r).__name__ for r in results]
        assert outcomes == ["Receipt", "StoreUnavailable", "Receipt", "Receipt"], results
        assert store.counts()[Status.PENDING] == 3


def test_a_failed_transaction_acknowledges_none_of_its_deliveries(tmp_path: Path) -> None:
    class Failing(SQLiteStore):
        def add_many(self, records: Sequence[Record]) -> list[bool]:
            raise StoreUnavailable("SQLite could not record the deliveries: disk I/O error")

    store = Failing(tmp_path / "inbox.sqlite3")
    with WebhookReceiver(SECRET, store=store) as receiver:
        results = run(receive_all(receiver, deliveries(5)))
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert len({id(r) for r in results}) == 5  # one error each, not one shared


@pytest.mark.parametrize("answer", [None, [True], [True] * 7, 42])
def test_an_add_many_with_a_broken_answer_is_503_not_500(answer: object) -> None:
    class Broken(MemoryStore):
        blocking = True

        # Deliberately not a list[bool]: how the receiver copes with a broken store.
        def add_many(self, records: Sequence[Record]) -> object:  # type: ignore[override]
            return answer

    with WebhookReceiver(SECRET, store=Broken(), process="external") as receiver:
        results = run(receive_all(receiver, deliveries(3)))
    assert all(isinstance(r, StoreUnavailable) for r in results), results


def test_a_failed_commit_leaves_the_intake_connection_usable(tmp_path: Path) -> None:
    class RollbackJournal(SQLiteStore):
        """Where WAL is refused (some filesystems): a reader then blocks a writer's commit."""

        def _open(self) -> sqlite3.Connection:
            conn = super()._open()
            conn.execute("PRAGMA journal_mode=DELETE")
            return conn

    path = tmp_path / "inbox.sqlite3"
    store = RollbackJournal(path, busy_timeout=0.1)
    now = utcnow()
    pending = [Record(n, "message.received", b"{}", now, next_attempt_at=now) for n in "abc"]
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM aerostic_webhook_records").fetchone()  # a shared lock
    with pytest.raises(StoreUnavailable):
        store.add_many(pending[:1])  # its COMMIT is refused: the database is locked
    reader.execute("COMMIT")
    reader.close()
    assert store.add(pending[1]) is True  # committed on its own, not into the failed batch
    assert store.add_many(pending[2:]) == [True]
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        kept = conn.execute("SELECT event_id FROM aerostic_webhook_records").fetchall()
    assert sorted(row[0] for row in kept) == ["b", "c"]


def test_sqlite_add_many_is_one_transaction(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    now = utcnow()
    good = Record("a", "message.received", b"{}", now, next_attempt_at=now)
    # Deliberately not bytes: SQLite cannot bind it, so the insert fails.
    bad = good._replace(event_id="b", body=object())  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable):
        store.add_many([good, bad])
    assert store.get("a") is None  # rolled back with the failed one
    assert store.add_many([good, good._replace(event_id="c"), good]) == [True, True, False]
    store.close()


def test_a_store_without_add_many_is_written_one_record_at_a_time() -> None:
    class OwnStore:
        """A store of one's own, doing I/O, with no ``add_many``: the rest from a MemoryStore."""

        blocking = True

        def __init__(self) -> None:
            self.inner = MemoryStore()

        def __getattr__(self, name: str) -> object:
            if name == "add_many":
                raise AttributeError(name)
            return getattr(self.inner, name)

        def add(self, record: Record) -> bool:
            if b"fail" in record.body:
                raise sqlite3.OperationalError("disk I/O error")
            return self.inner.add(record)

    bodies = [sample_body("message.received", id=n) for n in ("ok-1", "fail-2", "ok-3")]
    store = OwnStore()
    with WebhookReceiver(SECRET, store=store, process="external") as receiver:  # type: ignore[arg-type]
        results = run(receive_all(receiver, bodies))
    assert [type(r).__name__ for r in results] == ["Receipt", "StoreUnavailable", "Receipt"]
    assert sorted(r.event_id for r in store.inner.list()) == [
        "message.received:ok-1",
        "message.received:ok-3",
    ]


def test_a_memory_store_is_written_on_the_loop(tmp_path: Path) -> None:
    on: list[str] = []

    class Noting(MemoryStore):
        def add(self, record: Record) -> bool:
            on.append(threading.current_thread().name)
            return super().add(record)

    with WebhookReceiver(SECRET, store=Noting(), process="external") as receiver:
        run(receive_all(receiver, deliveries(3)))
        assert receiver._intake._thread is None  # never started
    assert on == [threading.current_thread().name] * 3


def test_large_bodies_and_inline_handlers_stay_off_the_loop() -> None:
    on: list[str] = []

    class Noting(MemoryStore):
        def add(self, record: Record) -> bool:
            on.append(threading.current_thread().name)
            return super().add(record)

    large = sample_body("message.received", id="large", text="x" * 70_000)  # over 64 KB
    with WebhookReceiver(SECRET, store=Noting(), process="external") as receiver:
        run(receive_all(receiver, [large]))
    with WebhookReceiver(SECRET, store=MemoryStore(), process="inline") as receiver:
        receiver.on("*")(lambda event: on.append(threading.current_thread().name))
        run(receive_all(receiver, deliveries(1)))
    loop_thread = threading.current_thread().name
    assert len(on) == 2 and loop_thread not in on, on


def test_a_store_subclass_overriding_add_alone_keeps_its_add(tmp_path: Path) -> None:
    seen: list[str] = []

    class Audited(SQLiteStore):
        def add(self, record: Record) -> bool:  # its add_many (SQLiteStore's) would skip this
            seen.append(record.event_id)
            return super().add(record)

    with WebhookReceiver(SECRET, store=Audited(tmp_path / "i.sqlite3")) as receiver:
        run(receive_all(receiver, deliveries(3)))
    assert sorted(seen) == [f"message.received:m-{n}" for n in range(3)]


def test_a_receiver_subclass_with_its_own_receive_is_called_off_the_loop() -> None:
    seen: list[str] = []

    class Noting(WebhookReceiver):
        def receive(self, body: bytes | bytearray | memoryview, headers: Any) -> Any:
            seen.append(threading.current_thread().name)
            return super().receive(body, headers)

    with Noting(SECRET, store=MemoryStore(), process="external") as receiver:
        run(receive_all(receiver, deliveries(2)))
    assert len(seen) == 2 and threading.current_thread().name not in seen, seen


def test_worker_context_is_entered_around_each_intake_write(tmp_path: Path) -> None:
    # Django's connection upkeep (request_cycle) runs around the intake's ORM writes as
    # around a worker step: a long-lived thread must not keep a stale connection.
    entered: list[str] = []

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        entered.append(threading.current_thread().name)
        yield

    store = SQLiteStore(tmp_path / "inbox.sqlite3")  # blocking: written on the intake thread
    with WebhookReceiver(
        SECRET, store=store, process="external", worker_context=context
    ) as webhooks:
        body = sample_body("message.received", id="ctx")
        receipt = run(webhooks.receive_async(body, signed(body)))
        assert store.get(receipt.event_id) is not None
    assert entered == ["aerostic-webhooks-intake"]


def test_an_intake_write_whose_worker_context_raises_is_refused_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not an error the adapter would turn into a 500: nothing was recorded, the sender
    retries."""

    @contextlib.contextmanager
    def unreachable() -> Iterator[None]:
        raise RuntimeError("the database is out of reach")
        yield

    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    with WebhookReceiver(
        SECRET, store=store, process="external", worker_context=unreachable
    ) as webhooks:
        body = sample_body("message.received", id="ctx")
        with pytest.raises(StoreUnavailable):
            run(webhooks.receive_async(body, signed(body)))
        assert store.get("message.received:ctx") is None  # before close() closes the store
    assert any("worker_context failed" in r.getMessage() for r in caplog.records)


def test_close_writes_the_requests_queued_before_it() -> None:
    write = Recorder()
    intake: Intake[int, int] = Intake(write)

    async def scenario() -> list[object]:
        first = await write.hold(intake, 0)
        queued = [asyncio.ensure_future(intake.submit(n)) for n in (2, 4)]
        await asyncio.sleep(0.05)  # both wait behind the held write
        closing = asyncio.ensure_future(asyncio.to_thread(intake.close, WAIT))
        while intake._thread is not None:  # close() has queued its stop mark after them
            await asyncio.sleep(0.01)
        write.gate.set()
        await closing
        return list(await asyncio.gather(first, *queued))

    try:
        assert run(scenario()) == [0, 20, 40]
    finally:
        write.gate.set()
        intake.close()
    assert write.batches == [[0], [2, 4]]


def test_a_write_raising_a_base_exception_refuses_its_batch_and_the_next_is_written() -> None:
    batches: list[list[int]] = []

    def write(batch: list[int]) -> list[int]:
        batches.append(batch)
        if len(batches) == 1:
            raise SystemExit("the store's driver gave up")  # not an Exception
        return [n * 10 for n in batch]

    intake: Intake[int, int] = Intake(write)
    try:
        (refused,) = run(submit_all(intake, [1]))
        assert run(submit_all(intake, [2])) == [20]
    finally:
        intake.close()
    assert isinstance(refused, RuntimeError)
    assert isinstance(refused.__cause__, SystemExit)


def test_a_request_whose_loop_has_closed_does_not_stop_the_others() -> None:
    write = Recorder()
    write.gate.clear()
    intake: Intake[int, int] = Intake(write)
    gone = asyncio.new_event_loop()
    try:
        task = gone.create_task(intake.submit(0))
        gone.run_until_complete(asyncio.to_thread(write.entered.wait, WAIT))  # held in the write
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            gone.run_until_complete(task)
    finally:
        gone.close()

    async def later() -> int:
        waiting = asyncio.ensure_future(intake.submit(2))
        await asyncio.sleep(0.05)  # queued behind the held write, whose loop is gone
        write.gate.set()
        return await waiting

    try:
        assert run(later()) == 20
    finally:
        intake.close()
    assert write.batches == [[0], [2]]


def test_a_write_takes_at_most_max_batch_requests() -> None:
    write = Recorder()
    intake: Intake[int, int] = Intake(write)

    async def scenario() -> None:
        first = await write.hold(intake, 0)
        queued = [asyncio.ensure_future(intake.submit(2 * n)) for n in range(1, MAX_BATCH + 11)]
        await asyncio.sleep(0.05)
        write.gate.set()
        await asyncio.gather(first, *queued)

    try:
        run(scenario())
    finally:
        intake.close()
    assert [len(batch) for batch in write.batches] == [1, MAX_BATCH, 10]
