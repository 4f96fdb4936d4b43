"""Group commit for asyncio servers: one thread records deliveries, many per store call.

Handing each request's blocking store write to a pool thread costs an asyncio server more
than the write itself: every hop is several GIL and futex hand-offs between the loop and the
thread. Instead each request queues its verified delivery and awaits a future; one thread
writes whatever has queued meanwhile in one call, then settles the futures with one call
back into each loop. Nothing waits to fill a batch: a batch is what arrived during the
previous write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, NamedTuple, TypeVar

from .errors import log_failure

__all__ = ["HANDLER_THREADS", "INLINE_MAX_BYTES", "Intake", "handler_pool", "off_loop"]

logger = logging.getLogger("aerostic_webhooks")

T = TypeVar("T")
R = TypeVar("R")

#: The most deliveries written in one call: a bound on one transaction's size and time.
MAX_BATCH = 256
#: Up to this size a body is verified and parsed on the loop; larger ones go to a thread whole.
INLINE_MAX_BYTES = 65536


class _Waiting(NamedTuple):
    item: object
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[object]


_STOP = object()
_ALL: weakref.WeakSet[Intake[object, object]] = weakref.WeakSet()


class Intake(Generic[T, R]):
    """Runs ``write`` on its own thread over batches of the items awaited with ``submit``.

    ``write`` takes a batch and returns one outcome per item, in order: a result, or an
    exception to raise in that item's awaiting coroutine. It must not raise itself; if it
    does anyway, every item of the batch gets that exception.
    """

    def __init__(self, write: Callable[[list[T]], Sequence[R | BaseException]]) -> None:
        self._write = write
        self._reset()
        _ALL.add(self)  # type: ignore[arg-type]

    def _reset(self) -> None:
        """Fresh state: at first, and in a forked child, where the parent's thread is gone and
        its lock may have been held at the fork."""
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def submit(self, item: T) -> R:
        """Queue ``item`` for the next batch and wait for its outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        # Held only for a put (and once per thread for its start), so fine on the loop; it
        # makes sure an item never lands behind the stop mark of a thread that is closing.
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._start()
            self._queue.put(_Waiting(item, loop, future))
        return await future  # type: ignore[return-value]

    def _start(self) -> None:
        """A thread of its own queue (the caller holds the lock)."""
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(self._queue,), name="aerostic-webhooks-intake", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, then stop the thread (``submit`` would start another)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(_STOP)  # the last item of this thread's queue
        thread.join(timeout)

    def _run(self, waiting: queue.SimpleQueue[object]) -> None:
        stop = False
        while not stop:
            batch: list[_Waiting] = []
            item = waiting.get()
            while True:
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)  # type: ignore[arg-type]
                if len(batch) == MAX_BATCH:
                    break
                try:
                    item = waiting.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._settle(batch)

    def _settle(self, batch: list[_Waiting]) -> None:
        outcomes: Sequence[object]
        try:
            outcomes = self._write([w.item for w in batch])  # type: ignore[misc]
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
        except BaseException as error:  # every waiting request is refused instead
            log_failure(
                logger,
                logging.ERROR,
                "the intake's write raised; %d deliveries refused (%s)",
                len(batch),
                error=error,
            )
            outcomes = [_failure(error) for _ in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[object], object]]]
        by_loop = {}
        for w, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(w.loop, []).append((w.future, outcome))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, settled)


def _failure(error: BaseException) -> RuntimeError:
    """One exception per waiting request (one instance raised in many would share a traceback)."""
    failure = RuntimeError(f"the intake's write raised {type(error).__name__}")
    failure.__cause__ = error
    return failure


def _resolve(settled: list[tuple[asyncio.Future[object], object]]) -> None:
    for future, outcome in settled:
        if future.done():  # the request was cancelled (the client went away)
            continue
        try:
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        except BaseException as error:  # e.g. StopIteration, which a future refuses
            future.set_exception(_failure(error))


_executor: ThreadPoolExecutor | None = None
_handler_executor: ThreadPoolExecutor | None = None
#: Threads for receives that run handlers or other code of the user's: as many as the
#: thread pool Starlette runs a synchronous endpoint on.
HANDLER_THREADS = 40


def off_loop() -> ThreadPoolExecutor:
    """Two threads for receive work that cannot run on a loop and is ours (large bodies).

    Few on purpose: every thread that runs Python competes with the event loop for the GIL,
    and with many of them the loop waits its turn for hundreds of milliseconds.
    """
    global _executor  # noqa: PLW0603 (one pool per process, made on first use)
    if _executor is None:
        _executor = ThreadPoolExecutor(2, thread_name_prefix="aerostic-webhooks-receive")
    return _executor


def handler_pool() -> ThreadPoolExecutor:
    """Threads for receives whose time is the user's: an inline receiver's handlers, a
    subclass's own ``receive``. Those mostly wait (on I/O, on a lock), so two threads would
    make each delivery wait for the handlers of the ones before it, past the sender's limit.
    """
    global _handler_executor  # noqa: PLW0603 (one pool per process, made on first use)
    if _handler_executor is None:
        _handler_executor = ThreadPoolExecutor(
            HANDLER_THREADS, thread_name_prefix="aerostic-webhooks-inline"
        )
    return _handler_executor


def _after_fork() -> None:
    global _executor, _handler_executor  # noqa: PLW0603 (the parent's threads are gone)
    _executor = _handler_executor = None
    for intake in list(_ALL):
        intake._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
