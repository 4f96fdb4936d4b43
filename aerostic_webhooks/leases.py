"""Lease renewal for records run outside a worker: the inline mode's, while handlers run."""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from .errors import log_failure
from .stores.base import Store

__all__ = ["LeaseKeeper"]

logger = logging.getLogger("aerostic_webhooks")

_FORK_LOCK = threading.Lock()


class LeaseKeeper:
    """Renews, every third of a lease, one owner's leases on the records it is running.

    Without it a handler that runs longer than the lease lets another process's worker, or
    the sender's next retry, take the record up and run it a second time. One thread, started
    at the first hold, sleeps while nothing is held; a hold costs the request a lock and a
    counter, not a thread start or a wake-up.
    """

    def __init__(
        self,
        store: Store,
        owner: str,
        lease_seconds: float,
        context: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._lease = lease_seconds
        self._context = context or nullcontext
        self._reset()

    def _reset(self) -> None:
        """Fresh state: at first, and in a forked child, where the parent's thread is gone."""
        self._changed = threading.Condition(threading.Lock())
        self._held: collections.Counter[str] = collections.Counter()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._idle = False  # the thread sleeps untimed: the next hold must wake it
        self._pid = os.getpid()  # last: other threads of a forked child test it unlocked

    @contextmanager
    def holding(self, event_id: str) -> Iterator[None]:
        """Keep ``event_id``'s lease alive until the block ends."""
        if self._pid != os.getpid():
            self._forked()
        with self._changed:
            if self._idle:
                self._idle = False
                self._changed.notify_all()
            self._held[event_id] += 1
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="aerostic-webhooks-leases"
                )
                self._thread.daemon = True
                self._thread.start()
        pid = self._pid
        try:
            yield
        finally:
            if os.getpid() == pid:  # else forked inside the hold: the parent's count, not ours
                with self._changed:
                    self._held[event_id] -= 1
                    if self._held[event_id] <= 0:
                        del self._held[event_id]

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread (a later hold starts another)."""
        if self._pid != os.getpid():
            self._forked()  # the parent's thread is not ours, and its lock may be held
            return
        with self._changed:
            thread, self._thread = self._thread, None
            self._stop.set()
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _forked(self) -> None:
        with _FORK_LOCK:
            if self._pid != os.getpid():
                self._reset()

    def _run(self, stop: threading.Event) -> None:
        while True:
            with self._changed:
                while not self._held and not stop.is_set():
                    self._idle = True  # holding() clears it as it wakes us
                    self._changed.wait()
                if not stop.is_set():
                    self._changed.wait(self._lease / 3)
                if stop.is_set():
                    return
                held = list(self._held)
            if not held:
                continue
            try:
                with self._context():
                    self._store.renew(self._owner, held, lease=self._lease)
            except Exception as error:
                log_failure(
                    logger,
                    logging.WARNING,
                    "could not renew inline leases (%s); trying again",
                    error=error,
                )
