"""Background processing: claim due records, run handlers on a thread pool, record the outcome."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import TypeVar

from .stores.base import Record, Store, utcnow

__all__ = ["DEFAULT_RETRY_DELAYS", "LoopThread", "Worker", "new_owner_id"]

logger = logging.getLogger("aerostic_webhooks")

#: Seconds to wait before each retry: 30 s, 5 min, 30 min, 2 h, 6 h (six attempts in all).
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (30.0, 300.0, 1800.0, 7200.0, 21600.0)

T = TypeVar("T")

# How often the store's upkeep runs (a SQLite WAL checkpoint): often enough that deliveries
# never have to do it, whatever the handlers are doing.
_MAINTAIN_INTERVAL = 1.0

#: Runs the handlers of one record; returns ``None`` on success, else the error to keep.
Process = Callable[[Record], "str | None"]


def new_owner_id() -> str:
    """A lease owner id that names the host and process, for whoever reads the store."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LoopThread:
    """An event loop on a daemon thread, where ``async def`` handlers run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the loop and block the calling thread until it is done."""
        return asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), self._ensure()).result()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="aerostic-webhooks-loop", daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            if not thread.is_alive():
                loop.close()


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


class Worker:
    """Runs ``process`` on due records from the store, on ``concurrency`` handler threads.

    Each handler thread claims one record at a time, when woken by a new delivery (a token on
    a queue), or when its wait runs out (a retry falling due, work recorded by another
    process). A housekeeping thread renews the leases of running records, so a slow handler
    is not taken up twice, and purges records past retention.
    """

    def __init__(
        self,
        store: Store,
        process: Process,
        *,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        poll_interval: float = 1.0,
        retention: timedelta = timedelta(days=7),
        purge_interval: float = 3600.0,
        coalesce_seconds: float = 0.002,
        context: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if any(delay < 0 for delay in retry_delays):
            raise ValueError("retry delays must not be negative")
        self.store = store
        self._process = process
        self._concurrency = concurrency
        self._lease = lease_seconds
        self._retry_delays = tuple(retry_delays)
        self._poll_interval = poll_interval
        self._retention = retention
        self._purge_interval = purge_interval
        self._coalesce = coalesce_seconds
        self._context = context or nullcontext
        self._lock = threading.Lock()
        self._reset()

    @property
    def max_attempts(self) -> int:
        return len(self._retry_delays) + 1

    def _reset(self) -> None:
        """Fresh state; also used in a forked child, where the parent's threads do not exist."""
        self._pid = os.getpid()
        self.owner = new_owner_id()
        # Each claim holds its lease under an owner of its own: were a lease to lapse and
        # another thread of this worker take the record up, the first run's outcome must not
        # settle the second's.
        self._claims = itertools.count()
        self._tokens: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._changed = threading.Condition(threading.Lock())
        self._in_flight: dict[str, Record] = {}
        self._claiming = 0
        self._idle = 0
        self._token_out = False
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        return bool(self._threads) and self._pid == os.getpid()

    def start(self) -> None:
        """Start the threads; safe to call often and from several threads."""
        if self.running:
            return
        with self._lock:
            if self._pid != os.getpid():
                self._reset()
            if self._threads:
                return
            # Each start gets its own queue and stop flag: threads of an earlier start that
            # are still finishing a handler must not take the new ones' tokens.
            self._tokens = queue.SimpleQueue()
            self._stopped = threading.Event()
            threads = [
                threading.Thread(
                    target=self._handle_loop,
                    args=(self._tokens, self._stopped),
                    name=f"aerostic-webhooks-handler-{n}",
                )
                for n in range(self._concurrency)
            ]
            threads.append(
                threading.Thread(
                    target=self._housekeeping,
                    args=(self._stopped,),
                    name="aerostic-webhooks-housekeeping",
                )
            )
            for thread in threads:
                thread.daemon = True
                thread.start()
            self._threads = threads

    def wake(self) -> None:
        """Tell an idle handler thread that a record may be due now.

        Busy threads look for more work before they go idle, and one token at a time is out,
        so under load this costs the request two attribute reads, not a thread switch.
        """
        if self._idle and not self._token_out:
            self._token_out = True
            self._tokens.put(True)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no record is due now and none is running; ``False`` if ``timeout`` ran out."""
        self.start()
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                if not self._in_flight and not self._claiming:
                    due = self.store.next_due()
                    if due is None or due > utcnow():
                        return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.wake()
            with self._changed:
                self._changed.wait(min(remaining, 0.05))

    def close(self, timeout: float = 10.0) -> None:
        """Stop claiming, wait up to ``timeout`` for running handlers, and stop the threads.

        A handler still running after ``timeout`` keeps its record leased; once the lease
        ends, the next worker takes the record up again.
        """
        with self._lock:
            threads, self._threads = self._threads, []
            if not threads or self._pid != os.getpid():
                return
            self._stopped.set()
            for _ in range(self._concurrency):
                self._tokens.put(False)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))

    def _handle_loop(self, tokens: queue.SimpleQueue[bool], stopped: threading.Event) -> None:
        while not stopped.is_set():
            if self._step(stopped):
                continue
            # Say we are idle, then look once more: a delivery recorded before wake() saw
            # us idle is found by this step; one recorded after it gets us a token.
            with self._changed:
                self._idle += 1
            try:
                if self._step(stopped):
                    continue
                try:
                    if not tokens.get(timeout=self._wait_for()):
                        return  # close() asked us to stop
                    # Let a burst of deliveries gather, then take it in one go: one thread
                    # switch for the burst instead of one per delivery.
                    stopped.wait(self._coalesce)
                except queue.Empty:
                    pass
                self._token_out = False
            finally:
                with self._changed:
                    self._idle -= 1

    def _step(self, stopped: threading.Event) -> bool:
        """Claim one due record and process it; ``False`` if there was none."""
        with self._context():
            record = self._claim(stopped)
            if record is None:
                return False
            self._run(record)
            return True

    def _wait_for(self) -> float:
        """Sleep until the next record falls due, but at most ``poll_interval``."""
        try:
            with self._context():
                due = self.store.next_due()
        except Exception:
            return self._poll_interval
        if due is None:
            return self._poll_interval
        return min(self._poll_interval, max((due - utcnow()).total_seconds(), 0.001))

    def _claim(self, stopped: threading.Event) -> Record | None:
        with self._changed:
            self._claiming += 1
        records: list[Record] = []
        try:
            owner = f"{self.owner}:{next(self._claims)}"
            records = self.store.claim(owner, limit=1, lease=self._lease)
        except Exception:
            logger.warning("could not claim work from the store; trying again", exc_info=True)
            stopped.wait(self._poll_interval)
        finally:
            with self._changed:
                for record in records:
                    self._in_flight[record.event_id] = record
                self._claiming -= 1
                self._changed.notify_all()
        return records[0] if records else None

    def _run(self, record: Record) -> None:
        try:
            try:
                error = self._process(record)
            except BaseException as exc:  # process() reports handler errors; this is our bug
                logger.exception("processing %s failed unexpectedly", record.event_id)
                error = f"{type(exc).__name__}: {exc}"
            self._settle(record, error)
        finally:
            with self._changed:
                # Once settled, another thread may already hold the record again (a retry due
                # at once): leave its entry alone.
                if self._in_flight.get(record.event_id) is record:
                    del self._in_flight[record.event_id]
                self._changed.notify_all()

    def _settle(self, record: Record, error: str | None) -> None:
        """Record the outcome: done, pending again after the backoff delay, or failed."""
        owner = record.lease_owner or self.owner
        try:
            if error is None:
                self.store.complete(record.event_id, owner)
            elif record.attempts >= self.max_attempts:
                self.store.fail(record.event_id, owner, error=error)
                logger.error(
                    "%s failed after %d attempts; kept as failed (retry it with retry())",
                    record.event_id,
                    record.attempts,
                )
            else:
                delay = self._retry_delays[record.attempts - 1]
                at = utcnow() + timedelta(seconds=delay)
                self.store.reschedule(record.event_id, owner, at=at, error=error)
                logger.warning(
                    "%s will be retried in %gs (attempt %d of %d failed)",
                    record.event_id,
                    delay,
                    record.attempts,
                    self.max_attempts,
                )
        except Exception:
            logger.warning(
                "could not record the outcome of %s; it is retried when its lease ends",
                record.event_id,
                exc_info=True,
            )

    def _housekeeping(self, stopped: threading.Event) -> None:
        next_renewal = next_purge = time.monotonic()
        while not stopped.is_set():
            with self._context():
                now = time.monotonic()
                if now >= next_renewal:
                    self._renew()
                    next_renewal = now + self._lease / 3
                if now >= next_purge:
                    self._purge()
                    next_purge = now + self._purge_interval
                self._maintain()
            stopped.wait(min(self._lease / 3, _MAINTAIN_INTERVAL))

    def _maintain(self) -> None:
        try:
            self.store.maintain()
        except Exception:
            logger.warning("store upkeep failed; trying again", exc_info=True)

    def _renew(self) -> None:
        with self._changed:
            held = [(r.lease_owner or self.owner, r.event_id) for r in self._in_flight.values()]
        try:
            for owner, event_id in held:
                self.store.renew(owner, [event_id], lease=self._lease)
        except Exception:
            logger.warning("could not renew leases; trying again", exc_info=True)

    def _purge(self) -> None:
        try:
            purged = self.store.purge(older_than=utcnow() - self._retention)
        except Exception:
            logger.warning("could not purge old records; trying again later", exc_info=True)
            return
        if purged:
            logger.info("purged %d records older than %s", purged, self._retention)
