"""Background processing: claim due records, run handlers on a thread pool, record the outcome."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

from .stores.base import Record, Store, utcnow

__all__ = ["DEFAULT_RETRY_DELAYS", "LoopThread", "Worker", "new_owner_id"]

logger = logging.getLogger("aerostic_webhooks")

#: Seconds to wait before each retry: 30 s, 5 min, 30 min, 2 h, 6 h (six attempts in all).
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (30.0, 300.0, 1800.0, 7200.0, 21600.0)

T = TypeVar("T")

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
    """Claims due records from the store and runs ``process`` on each, ``concurrency`` at a time.

    One dispatcher thread claims work when woken (a new delivery, a finished job) or when
    the next retry falls due, renews the leases of running records so that a slow handler is
    not taken up twice, and purges records past retention.
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
        self._lock = threading.Lock()
        self._reset()

    @property
    def max_attempts(self) -> int:
        return len(self._retry_delays) + 1

    def _reset(self) -> None:
        """Fresh state; also used in a forked child, where the parent's threads do not exist."""
        self._pid = os.getpid()
        self.owner = new_owner_id()
        self._changed = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        self._in_flight: dict[str, Record] = {}
        self._claiming = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._pid == os.getpid()

    def start(self) -> None:
        """Start the dispatcher thread; safe to call often and from several threads."""
        if self.running:
            return
        with self._lock:
            if self._pid != os.getpid():
                self._reset()
            if self._thread is not None:
                return
            self._stopping = False
            self._pool = ThreadPoolExecutor(self._concurrency, "aerostic-webhooks-handler")
            self._thread = threading.Thread(
                target=self._dispatch_loop, name="aerostic-webhooks-worker", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

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
            thread, pool = self._thread, self._pool
            if thread is None or self._pid != os.getpid():
                return
            self._stopping = True
        self.wake()
        thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._in_flight and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
        if pool is not None:
            pool.shutdown(wait=not self._in_flight)
        with self._lock:
            self._thread = None
            self._pool = None

    def _dispatch_loop(self) -> None:
        next_renewal = time.monotonic() + self._lease / 3
        next_purge = time.monotonic()
        while not self._stopping:
            now = time.monotonic()
            if now >= next_renewal:
                self._renew()
                next_renewal = now + self._lease / 3
            if now >= next_purge:
                self._purge()
                next_purge = now + self._purge_interval
            self._wake.clear()
            claimed = self._claim()
            if claimed:
                continue
            until_housekeeping = min(next_renewal, next_purge) - now
            # Only look at the next due time when a slot is free and the store answered;
            # otherwise a due record we cannot take yet would make this loop spin.
            if claimed is None:
                sleep = min(self._poll_interval, max(until_housekeeping, 0.0))
            else:
                sleep = self._sleep_for(until_housekeeping)
            self._wake.wait(sleep)

    def _claim(self) -> int | None:
        """Claim and submit due records; the count, or ``None`` if no slot is free or it failed."""
        with self._changed:
            free = self._concurrency - len(self._in_flight)
            if free <= 0:
                return None
            self._claiming = True
        records: list[Record] = []
        failed = False
        try:
            records = self.store.claim(self.owner, limit=free, lease=self._lease)
        except Exception:
            failed = True
            logger.warning("could not claim work from the store; trying again", exc_info=True)
        finally:
            with self._changed:
                for record in records:
                    self._in_flight[record.event_id] = record
                self._claiming = False
                self._changed.notify_all()
        pool = self._pool
        for record in records:
            if pool is not None:
                pool.submit(self._run, record)
        return None if failed else len(records)

    def _sleep_for(self, until_housekeeping: float) -> float:
        sleep = min(self._poll_interval, max(until_housekeeping, 0.0))
        try:
            due = self.store.next_due()
        except Exception:
            return sleep
        if due is not None:
            sleep = min(sleep, max((due - utcnow()).total_seconds(), 0.0))
        return sleep

    def _run(self, record: Record) -> None:
        try:
            try:
                error = self._process(record)
            except Exception as exc:  # process() reports handler errors; this is our own bug
                logger.exception("processing %s failed unexpectedly", record.event_id)
                error = f"{type(exc).__name__}: {exc}"
            self._settle(record, error)
        finally:
            with self._changed:
                self._in_flight.pop(record.event_id, None)
                self._changed.notify_all()
            self.wake()

    def _settle(self, record: Record, error: str | None) -> None:
        """Record the outcome: done, pending again after the backoff delay, or failed."""
        try:
            if error is None:
                self.store.complete(record.event_id, self.owner)
            elif record.attempts >= self.max_attempts:
                self.store.fail(record.event_id, self.owner, error=error)
                logger.error(
                    "%s failed after %d attempts; kept as failed (retry it with retry())",
                    record.event_id,
                    record.attempts,
                )
            else:
                delay = self._retry_delays[record.attempts - 1]
                at = utcnow() + timedelta(seconds=delay)
                self.store.reschedule(record.event_id, self.owner, at=at, error=error)
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

    def _renew(self) -> None:
        with self._changed:
            event_ids = list(self._in_flight)
        if not event_ids:
            return
        try:
            self.store.renew(self.owner, event_ids, lease=self._lease)
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
