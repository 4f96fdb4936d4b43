"""Lease renewal for records run outside a worker: the inline mode's, while handlers run."""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from .stores.base import Store

__all__ = ["LeaseKeeper"]

logger = logging.getLogger("aerostic_webhooks")

_FORK_LOCK = threading.Lock()


class LeaseKeeper:
    """Renews, every third of a lease, one owner's leases on the records it is running.

    Without it a handler that runs longer than the lease lets another process's worker, or
    the sender's next retry, take the record up and run it a second time. Its thread lives
    only while some record is held.
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
        self._pid = os.getpid()
        self._changed = threading.Condition(threading.Lock())
        self._held: collections.Counter[str] = collections.Counter()
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, event_id: str) -> Iterator[None]:
        """Keep ``event_id``'s lease alive until the block ends."""
        if self._pid != os.getpid():
            with _FORK_LOCK:
                if self._pid != os.getpid():
                    self._reset()
        with self._changed:
            self._held[event_id] += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="aerostic-webhooks-leases", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._changed:
                self._held[event_id] -= 1
                if self._held[event_id] <= 0:
                    del self._held[event_id]
                if not self._held:
                    self._changed.notify()  # the thread ends now, not a third of a lease on

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._held:
                    self._changed.wait(self._lease / 3)
                if not self._held:
                    self._thread = None
                    return
                held = list(self._held)
            try:
                with self._context():
                    self._store.renew(self._owner, held, lease=self._lease)
            except Exception:
                logger.warning("could not renew inline leases; trying again", exc_info=True)
