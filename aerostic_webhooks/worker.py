"""Background processing: claim due records, run handlers on a thread pool, record the outcome."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import operator
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import SupportsIndex, TypeVar

from .errors import error_text, log_failure
from .stores.base import LEASE_LAPSED, Record, Status, Store, utcnow

__all__ = [
    "DEFAULT_RETRY_DELAYS",
    "LoopThread",
    "Worker",
    "check_settings",
    "error_text",
    "is_number",
    "lease_works",
    "new_owner_id",
    "offset_fits",
    "retention_works",
]

logger = logging.getLogger("aerostic_webhooks")

#: Seconds to wait before each retry: 30 s, 5 min, 30 min, 2 h, 6 h (six attempts in all).
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (30.0, 300.0, 1800.0, 7200.0, 21600.0)

T = TypeVar("T")

# A claim hands each free thread about this many seconds of work, judged by how long records
# have taken to run lately: a batch of quick records costs one store call, not one each, and
# a slow handler gets a record to itself.
_CLAIM_BUDGET = 0.01
_MAX_CLAIM = 64

# How often the store's upkeep runs (a SQLite WAL checkpoint): often enough that deliveries
# never have to do it, whatever the handlers are doing. A delivery checkpoints once the WAL
# holds 10,000 pages, about 1,700 deliveries of one commit each. At 1 s, gunicorn workers
# whose handlers were all busy reached that, and their p99 at concurrency 1 was 11-16 ms (a
# no-op handler's: 1.2-1.7 ms); at 0.25 s it takes some 6,900 such deliveries a second.
_MAINTAIN_INTERVAL = 0.25

_FORK_LOCK = threading.Lock()

#: Runs the handlers of one record; returns ``None`` on success, else the error to keep.
Process = Callable[[Record], "str | None"]


def offset_fits(seconds: float) -> bool:
    """Whether a date this many seconds before or after now is one a ``datetime`` can hold.

    ``nan``, infinities and spans of thousands of years are not: a lease, retry delay or
    retention like that would fail at every use, long after it was configured.
    """
    try:
        now, offset = utcnow(), timedelta(seconds=seconds)
        now + offset, now - offset  # each overflows if it falls outside years 1-9999
    except (OverflowError, ValueError):
        return False
    return True


def lease_works(seconds: float) -> bool:
    """Whether a worker can hold leases of this many seconds."""
    return seconds > 0 and offset_fits(seconds)


def retention_works(retention: timedelta) -> bool:
    """Whether a worker can keep records this long: positive, and a date can be that old."""
    return retention > timedelta(0) and offset_fits(retention.total_seconds())


def check_settings(
    *, concurrency: int, lease_seconds: float, retry_delays: Iterable[float], retention: timedelta
) -> tuple[float, ...]:
    """Raise ``ValueError`` for a setting a worker could not work with (``TypeError`` for the
    wrong kind of value), naming the setting rather than failing in a comparison.

    Returns the retry delays as plain floats, read once: they may come from a generator."""
    # An integer of another kind (numpy's) does too: what range() takes.
    if isinstance(concurrency, bool) or not isinstance(concurrency, SupportsIndex):
        raise TypeError(f"concurrency must be an int, got {type(concurrency).__name__}")
    if not is_number(lease_seconds):
        raise TypeError(f"lease_seconds must be a number, got {type(lease_seconds).__name__}")
    if isinstance(retry_delays, (str, bytes)) or not isinstance(retry_delays, Iterable):
        raise TypeError(
            f"retry_delays must be a sequence of numbers, got {type(retry_delays).__name__}"
        )
    delays = tuple(retry_delays)
    for delay in delays:
        if not is_number(delay):
            raise TypeError(f"retry delays must be numbers, got {type(delay).__name__}")
    if not isinstance(retention, timedelta):
        raise TypeError(f"retention must be a datetime.timedelta, got {type(retention).__name__}")
    if operator.index(concurrency) < 1:
        raise ValueError("concurrency must be at least 1")
    if not lease_works(lease_seconds):
        raise ValueError("lease_seconds must be a positive, finite number of seconds")
    if not all(delay >= 0 and offset_fits(delay) for delay in delays):
        raise ValueError("retry delays must be finite numbers of seconds, none negative")
    if not retention_works(retention):
        raise ValueError("retention must be a positive timedelta that a date can be off by")
    # Plain floats: a float of another kind (numpy's) keeps its kind through sums, and
    # RedisStore sends repr(time.time() + seconds), which Redis must read as a number.
    return tuple(float(delay) for delay in delays)


def is_number(value: object) -> bool:
    """An ``int`` or ``float`` (numpy's too), not a ``bool``: what a setting of seconds takes."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
                    target=_run_until_stopped,
                    args=(loop,),
                    name="aerostic-webhooks-loop",
                    daemon=True,
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop, waiting up to ``timeout`` for the handler it is running."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)


def _run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """The loop thread: the loop is closed by its own thread, however long ``close`` waited."""
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


class Worker:
    """Runs ``process`` on due records from the store, on ``concurrency`` handler threads.

    A handler thread looks for work when woken by a new delivery (a token on a queue), or when
    its wait runs out (a retry falling due, work recorded by another process). One thread at a
    time claims from the store, as many records as there are free threads, so a record never
    waits behind a busy one; the others run what it claimed. A housekeeping thread renews the
    leases of claimed records, so a slow handler is not taken up twice; another purges
    records past retention.
    """

    def __init__(
        self,
        store: Store,
        process: Process,
        *,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        retry_delays: Iterable[float] = DEFAULT_RETRY_DELAYS,
        poll_interval: float = 1.0,
        retention: timedelta = timedelta(days=7),
        purge_interval: float = 3600.0,
        coalesce_seconds: float = 0.01,
        context: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self._retry_delays = check_settings(
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            retry_delays=retry_delays,
            retention=retention,
        )
        self.store = store
        self._process = process
        self._concurrency = operator.index(concurrency)
        self._lease = float(lease_seconds)  # a plain float, as check_settings says why
        self._max_attempts = len(self._retry_delays) + 1  # read once per record
        self._poll_interval = poll_interval
        self._retention = retention
        self._purge_interval = purge_interval
        self._coalesce = coalesce_seconds
        self._context = context or nullcontext
        self._lock = threading.Lock()
        self._reset()

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
        # Claimed records, running or waiting in _ready for a free thread.
        self._in_flight: dict[str, Record] = {}
        self._claim_lock = threading.Lock()
        self._claiming = 0
        self._draining = 0
        # Every wake() counts here. When a claim came back short, _looked keeps the count as
        # it was before that claim: until it moves (or a wait runs out), the store has nothing
        # due for us, and going idle costs no empty claim.
        self._wakes = 0
        self._looked: int | None = None
        # When a claim last came back short (everything due was taken): see _step.
        self._drained_at = -float("inf")
        # Handled records not yet marked done in the store, from any thread; see _complete.
        self._done: list[Record] = []
        # Outcomes a failed store call did not record, by claim: the records, the error
        # (None: handled, to mark done) and when that first failed; housekeeping tries again
        # (see _settle).
        self._unsettled: list[tuple[str, list[Record], str | None, float]] = []
        # Whether worker_context raised at its last use: warn once a spell, not once a step.
        self._context_failing = False
        # Seconds a record takes to run and settle, a moving average; pessimistic at first.
        self._run_seconds = 1.0
        self._idle = 0
        self._token_out = False
        self._stopped = threading.Event()
        self._finished = threading.Event()
        self._threads: list[threading.Thread] = []
        # The current start's claimed records waiting for a free thread (see close).
        self._ready: collections.deque[Record] = collections.deque()

    @property
    def max_attempts(self) -> int:
        """Attempts before a record is failed for good: the first, then one per retry delay."""
        return self._max_attempts

    @property
    def running(self) -> bool:
        return bool(self._threads) and self._pid == os.getpid()

    def start(self) -> None:
        """Start the threads; safe to call often and from several threads."""
        if self.running:
            return
        if self._pid != os.getpid():
            # Forked: the parent's threads are gone, and its lock may have been held by one.
            with _FORK_LOCK:
                if self._pid != os.getpid():
                    self._lock = threading.Lock()
                    self._reset()
        with self._lock:
            if self._threads:
                return
            # Each start gets its own queue, stop flag and claimed records: threads of an
            # earlier start that are still finishing a handler must not take the new ones'.
            self._tokens = queue.SimpleQueue()
            self._stopped = threading.Event()
            self._finished = threading.Event()
            ready: collections.deque[Record] = collections.deque()
            self._ready = ready
            threads = [
                threading.Thread(
                    target=self._handle_loop,
                    args=(self._tokens, self._stopped, ready),
                    name=f"aerostic-webhooks-handler-{n}",
                )
                for n in range(self._concurrency)
            ]
            threads.append(
                threading.Thread(
                    target=self._housekeeping,
                    args=(self._finished,),
                    name="aerostic-webhooks-housekeeping",
                )
            )
            threads.append(
                threading.Thread(
                    target=self._purging,
                    args=(self._finished,),
                    name="aerostic-webhooks-purge",
                )
            )
            for thread in threads:
                thread.daemon = True
                thread.start()
            self._threads = threads

    def wake(self) -> None:
        """Tell an idle handler thread that a record may be due now.

        Busy threads look for more work before they go idle, a thread that is claiming hands
        a token on once it is done, and one token at a time is out: under load this costs
        the request a few attribute reads, not a thread switch.
        """
        self._wakes += 1
        if self._idle and not self._token_out and not self._claim_lock.locked():
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
                self._draining += 1
                try:
                    self._changed.wait(min(remaining, 0.05))
                finally:
                    self._draining -= 1

    def close(self, timeout: float = 10.0) -> None:
        """Stop claiming, wait up to ``timeout`` for running handlers, and stop the threads.

        A handler still running after ``timeout`` keeps its record leased; once the lease
        ends, the next worker takes the record up again. Records claimed but not started by
        then are handed back to the store unrun (its ``unclaim``), due at once with no
        attempt charged; a store without ``unclaim`` leaves them to their leases too.
        """
        if self._pid != os.getpid():
            self._threads = []  # the parent's; a forked child has none to stop
            return
        with self._lock:
            threads, self._threads = self._threads, []
            if not threads:
                return
            # This start's flag: a start() while we wait for its threads makes new ones.
            finished = self._finished
            ready = self._ready
            self._stopped.set()
            for _ in range(self._concurrency):
                self._tokens.put(False)
        deadline = time.monotonic() + timeout
        *handlers, housekeeping, purging = threads
        for thread in handlers:
            thread.join(max(deadline - time.monotonic(), 0))
        # Leases are renewed until the handlers are done or the timeout ends: stopped any
        # sooner, another worker could take up a record whose handler is still running.
        finished.set()
        # A little past the timeout if need be: the store is closed next, and housekeeping
        # may be finishing a renewal or a checkpoint.
        housekeeping.join(max(deadline - time.monotonic(), 0.05))
        purging.join(max(deadline - time.monotonic(), 0.05))
        # What the handler threads still running have not taken is no longer theirs to take.
        unstarted: list[Record] = []
        while True:
            try:
                unstarted.append(ready.popleft())
            except IndexError:
                break
        if unstarted:
            self._unclaim(unstarted)
        with self._changed:
            unfinished = len(self._in_flight)
        if unfinished:
            logger.warning(
                "stopped after %gs with %d record(s) still being handled; each runs again "
                "once its lease ends",
                timeout,
                unfinished,
            )

    def _unclaim(self, records: Sequence[Record]) -> None:
        """Hand claimed records that were never run back to the store (see ``close``)."""
        unclaim: Callable[[str, Sequence[str]], int] | None = getattr(self.store, "unclaim", None)
        if unclaim is None:
            logger.warning(
                "%d record(s) claimed but not started are left to their leases: the store "
                "has no unclaim(), so each is counted an attempt when it is taken up again",
                len(records),
            )
            self._forget(records)
            return
        try:
            with self._context():
                for owner, owned in self._by_owner(records).items():
                    unclaim(owner, [record.event_id for record in owned])
        except Exception as error:
            log_failure(
                logger,
                logging.WARNING,
                "could not hand back %d record(s) claimed but not started (%s): left to their "
                "leases, each is counted an attempt when it is taken up again",
                len(records),
                error=error,
            )
        else:
            logger.info(
                "%d record(s) claimed but not started were handed back to the store, due now",
                len(records),
            )
        finally:
            self._forget(records)

    def _handle_loop(
        self,
        tokens: queue.SimpleQueue[bool],
        stopped: threading.Event,
        ready: collections.deque[Record],
    ) -> None:
        while not stopped.is_set():
            if self._step(stopped, ready):
                continue
            # Say we are idle, then look once more: a delivery recorded before wake() saw
            # us idle is found by this step; one recorded after it gets us a token.
            with self._changed:
                self._idle += 1
            try:
                if self._step(stopped, ready):
                    continue
                try:
                    if not tokens.get(timeout=self._wait_for()):
                        break  # close() asked us to stop
                    # Let a burst of deliveries gather, then take it in one go: one claim and
                    # one thread switch for the burst instead of one per delivery. 10 ms is
                    # nothing to a handler the sender is not waiting for, and under load on
                    # SQLite it lets a web process answer a third more requests than 2 ms.
                    stopped.wait(self._coalesce)
                except queue.Empty:
                    self._looked = None  # a retry or another process's record may be due
                self._token_out = False
            finally:
                with self._changed:
                    self._idle -= 1
        # Stopping: records this start claimed are run, not left leased until the lease ends.
        while self._step(stopped, ready):
            pass

    def _step(self, stopped: threading.Event, ready: collections.deque[Record]) -> bool:
        """Run one claimed record, claiming from the store first if none is waiting.

        ``False`` if there was nothing to run, or another thread is claiming: this one then
        goes idle rather than queue for the store, and the claimer wakes it if it finds more.
        Once stopped, only records already claimed are run. Successes are marked done in one
        store call once the claimed records run out (or there are many, or handlers are slow).
        """
        if self._context is nullcontext:  # entering one would cost a no-op handler a tenth
            return self._step_in_context(stopped, ready)
        try:
            with self._context():
                stepped = self._step_in_context(stopped, ready)
        except Exception as error:
            self._context_failed(stopped, error)
            return False
        self._context_failing = False
        return stepped

    def _context_failed(self, stopped: threading.Event, error: Exception) -> None:
        """The worker's context raised (Django's, when its database is out of reach): say so
        once a spell, and wait a second before the thread tries again.

        Here, as for every store error, the log at WARNING has the error's summary, never
        its traceback (``log_failure``): a database error's text may quote a row."""
        with self._changed:
            first, self._context_failing = not self._context_failing, True
        log_failure(
            logger,
            logging.WARNING if first else logging.DEBUG,
            "the worker's context (worker_context) failed (%s); trying again in a second",
            error=error,
        )
        stopped.wait(1.0)

    def _step_in_context(self, stopped: threading.Event, ready: collections.deque[Record]) -> bool:
        """``_step`` once inside the worker's context."""
        try:
            record = ready.popleft()
        except IndexError:
            record = None
            if (
                not stopped.is_set()
                and self._looked != self._wakes
                and self._claim_lock.acquire(blocking=False)
            ):
                try:
                    # All that was due was claimed a moment ago: let the deliveries that
                    # came since gather for the rest of the window, so a steady stream is
                    # claimed in batches rather than a few records a transaction.
                    pause = self._drained_at + self._coalesce - time.monotonic()
                    if pause > 0:
                        stopped.wait(pause)
                    wakes = self._wakes
                    records = [] if stopped.is_set() else self._claim(stopped, wakes)
                finally:
                    self._claim_lock.release()
                if records:
                    record = records[0]
                    ready.extend(records[1:])
                # Help with the rest; and wake() gave no token during the claim, which
                # may have missed what it was called for.
                if len(records) > 1 or self._wakes != wakes:
                    self.wake()
        if record is None:
            self._complete()
            return False
        self._run(record)
        if not ready or len(self._done) >= _MAX_CLAIM or self._run_seconds > _CLAIM_BUDGET:
            self._complete()
        return True

    def _wait_for(self) -> float:
        """Sleep until the next record falls due, but at most ``poll_interval``.

        What is due now while another thread claims is that thread's to take (and what its
        claim missed was announced by a wake() it hands on), so we do not poll every
        millisecond meanwhile.
        """
        try:
            with self._context():
                due = self.store.next_due()
        except Exception:
            return self._poll_interval
        if due is None:
            return self._poll_interval
        wait = (due - utcnow()).total_seconds()
        if wait <= 0 and self._claim_lock.locked():
            return self._poll_interval
        return min(self._poll_interval, max(wait, 0.001))

    def _claim(self, stopped: threading.Event, wakes: int) -> list[Record]:
        """Claim due records for this thread and the idle ones (see ``_CLAIM_BUDGET``);
        ``wakes`` is the wake count as the claim began."""
        with self._changed:
            self._claiming += 1
        records: list[Record] = []
        self._looked = None
        try:
            owner = f"{self.owner}:{next(self._claims)}"
            per_thread = int(_CLAIM_BUDGET / max(self._run_seconds, 1e-6)) or 1
            limit = min((min(self._idle, self._concurrency - 1) + 1) * per_thread, _MAX_CLAIM)
            records = self.store.claim(owner, limit=limit, lease=self._lease)
            if len(records) < limit:
                self._looked = wakes
                self._drained_at = time.monotonic()
        except Exception as error:
            log_failure(
                logger,
                logging.WARNING,
                "could not claim work from the store (%s); trying again",
                error=error,
            )
            stopped.wait(self._poll_interval)
        finally:
            with self._changed:
                for record in records:
                    self._in_flight[record.event_id] = record
                self._claiming -= 1
                if self._draining:
                    self._changed.notify_all()
        return records

    def _run(self, record: Record) -> None:
        """Run a record's handlers; a success joins ``_done``, anything else is settled now."""
        started = time.perf_counter()
        error: str | None = "not run"
        settling = False
        try:
            try:
                if record.attempts > self._max_attempts and record.last_error == LEASE_LAPSED:
                    # Its attempts are spent and the last ended with no outcome: a handler
                    # that kills its process (out of memory, a crash) would otherwise be
                    # claimed and run once a lease, forever.
                    error = f"{LEASE_LAPSED}; not run again after {record.attempts - 1} attempts"
                else:
                    error = self._process(record)
            except BaseException as exc:  # process() reports handler errors; this is our bug
                logger.exception("processing %s failed unexpectedly", record.event_id)
                error = error_text(exc)
            if error is not None:
                settling = True
                self._settle(
                    record.lease_owner or self.owner, [record], error=error, failing_since=None
                )
        finally:
            self._run_seconds += (time.perf_counter() - started - self._run_seconds) * 0.2
            if error is None:
                self._done.append(record)
            elif not settling:
                self._forget((record,))

    def _complete(self) -> None:
        """Mark the handled records done: one store call for each claim they came from."""
        if not self._done:
            return
        with self._changed:
            records, self._done = self._done, []
        by_owner = self._by_owner(records)
        self._settle_each([(owner, owned, None, None) for owner, owned in by_owner.items()])

    def _by_owner(self, records: Sequence[Record]) -> dict[str, list[Record]]:
        """Records by the claim that holds them: a store call settles one claim's records."""
        by_owner: dict[str, list[Record]] = {}
        for record in records:
            by_owner.setdefault(record.lease_owner or self.owner, []).append(record)
        return by_owner

    def _complete_unsettled(self, *, last_try: bool = False) -> None:
        """Try again to record the outcomes that a failed store call left unrecorded."""
        if not self._unsettled:
            return
        with self._changed:
            unsettled, self._unsettled = self._unsettled, []
        self._settle_each(unsettled, last_try=last_try)

    def _settle_each(
        self,
        outcomes: Sequence[tuple[str, list[Record], str | None, float | None]],
        *,
        last_try: bool = False,
    ) -> None:
        """``_settle`` each claim's outcome (owner, records, error, failing since).

        Should a store call raise a ``BaseException`` (this thread is going down), the claims
        not yet tried are left to their leases as well: kept in flight with no one to settle
        them, their leases would be renewed for as long as the worker runs.
        """
        for n, (owner, records, error, failing_since) in enumerate(outcomes):
            try:
                self._settle(
                    owner, records, error=error, failing_since=failing_since, last_try=last_try
                )
            except BaseException:
                self._forget([record for _, rest, _, _ in outcomes[n + 1 :] for record in rest])
                raise

    def _settle(
        self,
        owner: str,
        records: list[Record],
        *,
        error: str | None,
        failing_since: float | None,
        last_try: bool = False,
    ) -> None:
        """Record the outcome of one claim's records: done, or (with ``error``) the failure
        of its one record, to retry later or keep as failed.

        If the store call fails, the records stay leased and housekeeping tries again for up
        to a lease: left to lapse at once, their leases would have them run again, a record
        on its last attempt would end failed although its handler succeeded, and a failure
        would be kept as "lease expired" instead of the handler's error. After that, or at
        close, they are left to their leases.
        """
        try:
            if error is None:
                done = self.store.complete_many(owner, [record.event_id for record in records])
                # A bool is an int, but says nothing of how many (a custom store's "it worked").
                if isinstance(done, int) and not isinstance(done, bool) and done < len(records):
                    lost = len(records) - done
                    if failing_since is not None:
                        # A retry: the call that failed may have marked them done all the same
                        # (its reply lost, say); those are not lost.
                        lost = self._not_marked_done(records, lost)
                    if lost:
                        logger.warning(
                            "%d of %d handled records were no longer this worker's to mark "
                            "done (their leases ran out): they run again",
                            lost,
                            len(records),
                        )
            else:
                self._retry_or_fail(owner, records[0], error)
        except Exception as failure:
            now = time.monotonic()
            since = now if failing_since is None else failing_since
            outcome = (
                f"mark {len(records)} handled record(s) done"
                if error is None
                else f"record the failure of {records[0].event_id}"
            )
            if last_try or now - since >= self._lease:
                log_failure(
                    logger,
                    logging.WARNING,
                    "could not %s for %.1fs; left to the lease: once it ends, a record with "
                    "attempts left runs again, one with none is kept as failed ('lease expired')"
                    " (%s)",
                    outcome,
                    now - since,
                    error=failure,
                )
            else:
                with self._changed:
                    self._unsettled.append((owner, records, error, since))
                log_failure(
                    logger,
                    logging.WARNING if failing_since is None else logging.DEBUG,
                    "could not %s (%s); trying again while the lease lasts",
                    outcome,
                    error=failure,
                )
                return
        except BaseException:
            self._forget(records)  # this thread is going down: leave them to their leases
            raise
        self._forget(records)

    def _not_marked_done(self, records: Sequence[Record], short: int) -> int:
        """How many of a claim's handled records are not done as this claim left them (done,
        and not claimed since); ``short`` if the store cannot say."""
        try:
            found = [self.store.get(record.event_id) for record in records]
        except Exception:
            return short
        return sum(
            1
            for record, now in zip(records, found, strict=True)
            if now is None or now.status != Status.DONE or now.attempts != record.attempts
        )

    def _forget(self, records: Sequence[Record]) -> None:
        """Settled records are no longer this worker's to renew or wait for."""
        with self._changed:
            for record in records:
                # Once settled, another thread may already hold the record again (a retry
                # due at once): leave its entry alone.
                if self._in_flight.get(record.event_id) is record:
                    del self._in_flight[record.event_id]
            if self._draining:
                self._changed.notify_all()

    def _retry_or_fail(self, owner: str, record: Record, error: str) -> None:
        """Record a failure: pending again after the backoff delay, or failed for good."""
        if record.attempts >= self._max_attempts:
            if self.store.fail(record.event_id, owner, error=error):
                logger.error(
                    "%s failed after %d attempts; kept as failed (retry it with retry())",
                    record.event_id,
                    record.attempts,
                )
                return
        else:
            delay = self._retry_delays[record.attempts - 1]
            at = utcnow() + timedelta(seconds=delay)
            if self.store.reschedule(record.event_id, owner, at=at, error=error):
                self.wake()  # it may be due at once, and a claim under way may have missed it
                logger.warning(
                    "%s will be retried in %gs (attempt %d of %d failed)",
                    record.event_id,
                    delay,
                    record.attempts,
                    self._max_attempts,
                )
                return
        # The store holds the record under no lease of ours: its lease ran out (renewals
        # failing as well, say), and it was taken up again or settled already.
        logger.warning(
            "could not record the failure of %s: its lease was no longer this worker's "
            "(taken up again, or settled already)",
            record.event_id,
        )

    def _housekeeping(self, finished: threading.Event) -> None:
        next_renewal = time.monotonic()
        while not finished.is_set():
            try:
                with self._context():
                    now = time.monotonic()
                    if now >= next_renewal:
                        self._renew()
                        next_renewal = now + self._lease / 3
                    self._complete()  # what a thread that went on to a slow handler left
                    self._complete_unsettled()
                    self._maintain()
            except Exception as error:
                self._context_failed(finished, error)
            finished.wait(min(self._lease / 3, _MAINTAIN_INTERVAL))
        try:
            with self._context():
                # A last try, once the handler threads have stopped or close()'s timeout ran
                # out.
                self._complete_unsettled(last_try=True)
        except Exception as error:
            log_failure(
                logger,
                logging.WARNING,
                "the worker's context (worker_context) failed at close (%s): outcomes not yet "
                "recorded are left to their leases",
                error=error,
            )

    def _purging(self, finished: threading.Event) -> None:
        """Purge records past retention at start and every ``purge_interval``, on a thread of
        its own: purging a week of a busy receiver's records takes seconds, and on the
        housekeeping thread it held up lease renewals meanwhile, so a slow handler's record
        could be taken up by another worker while it still ran."""
        while not finished.is_set():
            try:
                with self._context():
                    self._purge()
            except Exception as error:
                self._context_failed(finished, error)
                continue
            finished.wait(self._purge_interval)

    def _maintain(self) -> None:
        try:
            self.store.maintain()
        except Exception as error:
            log_failure(
                logger, logging.WARNING, "store upkeep failed (%s); trying again", error=error
            )

    def _renew(self) -> None:
        with self._changed:
            held = [(r.lease_owner or self.owner, r.event_id) for r in self._in_flight.values()]
        try:
            for owner, event_id in held:
                self.store.renew(owner, [event_id], lease=self._lease)
        except Exception as error:
            log_failure(
                logger, logging.WARNING, "could not renew leases (%s); trying again", error=error
            )

    def _purge(self) -> None:
        try:
            purged = self.store.purge(older_than=utcnow() - self._retention)
        except Exception as error:
            log_failure(
                logger,
                logging.WARNING,
                "could not purge old records (%s); trying again later",
                error=error,
            )
            return
        if purged:
            logger.info("purged %d records older than %s", purged, self._retention)
