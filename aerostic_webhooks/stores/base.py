"""The Store protocol: the one source of truth for what was received and what became of it."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["LEASE_LAPSED", "Record", "Status", "Store", "due_at", "due_times", "utcnow"]

#: The error a claim gives a record taken back from a lease that ran out: its last attempt
#: ended with no outcome. The worker dead-letters such a record once its attempts are spent.
LEASE_LAPSED = "lease expired: the attempt ended with no outcome (did its worker die?)"


def utcnow() -> datetime:
    """The current time, timezone-aware, as every record keeps it."""
    return _now(_UTC)


_now = datetime.now
_UTC = timezone.utc


class Status(str, enum.Enum):
    """A record's state: pending -> processing -> done, back to pending, or failed."""

    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class Record(NamedTuple):
    """One delivery as the store keeps it (an immutable tuple: cheap on the request path).

    ``attempts`` counts handler runs started (a claim is an attempt). ``next_attempt_at`` is
    when a pending record becomes due; ``lease_owner`` and ``lease_expires_at`` say which
    worker holds a processing record and until when.
    """

    event_id: str
    event_type: str
    body: bytes
    received_at: datetime
    status: Status = Status.PENDING
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    updated_at: datetime | None = None

    def replace(self, **changes: Any) -> Record:
        """A copy with ``changes`` applied (records are immutable)."""
        return self._replace(**changes)


def due_at(record: Record) -> datetime | None:
    """When a record can next be claimed: a pending one at its next attempt, a processing one
    when its lease ends (at once without a lease: no worker holds it), never once settled."""
    if record.status is Status.PENDING:
        return record.next_attempt_at or record.received_at
    if record.status is Status.PROCESSING:
        return record.lease_expires_at or record.received_at
    return None


def due_times(record: Record) -> tuple[datetime | None, datetime | None]:
    """A record's ``(next_attempt_at, due time)`` as a store keeps them: a pending record's
    next attempt is its due time; other records have none."""
    due = due_at(record)
    return (due if record.status is Status.PENDING else None), due


@runtime_checkable
class Store(Protocol):
    """What the receiver, the worker, the CLI and the admin need of a store.

    Methods that change a claimed record take the claimant's ``owner`` and do nothing
    (returning ``False``) when the record is no longer held by it. ``add`` raises
    ``StoreUnavailable`` when it cannot persist; other methods may raise what they like and
    the worker logs it and tries again later.

    Optional: ``add_many(records) -> list[bool]``, ``add`` for several deliveries in one
    call (one transaction or round trip), which the asyncio adapters use to record the
    deliveries that arrive together; without it they call ``add`` for each.

    Optional: ``unclaim(owner, event_ids) -> int``, hand back claimed records that were never
    run: those ``owner`` still holds among ``event_ids`` become pending, due now, with the
    attempt count and error they had before the claim and no lease; it returns how many. A
    worker that stops with records claimed but not started calls it; without it they are
    left to their leases, and once a lease ends the record is claimed again with an attempt
    counted for the run that never happened (``LEASE_LAPSED``), or, on its last attempt,
    dead-lettered unrun.

    Every store shipped here has both.
    """

    def add(self, record: Record) -> bool:
        """Record a new delivery; ``False`` if one with this ``event_id`` is already kept."""
        ...

    def claim(self, owner: str, *, limit: int, lease: float) -> list[Record]:
        """Take up to ``limit`` due records (pending and due, or with an expired lease).

        A claim counts an attempt; a record taken back from an expired lease gets
        ``last_error`` ``LEASE_LAPSED``. ``take`` claims the same way."""
        ...

    def take(self, event_id: str, owner: str, *, lease: float) -> Record | None:
        """Claim one record by id if it is claimable now."""
        ...

    def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
        """Extend the leases ``owner`` holds on these records."""
        ...

    def complete(self, event_id: str, owner: str) -> bool:
        """Mark a claimed record done."""
        ...

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        """Mark the records ``owner`` holds among ``event_ids`` done; return how many."""
        ...

    def reschedule(self, event_id: str, owner: str, *, at: datetime, error: str) -> bool:
        """Put a claimed record back to pending, due at ``at``, keeping ``error``."""
        ...

    def fail(self, event_id: str, owner: str, *, error: str) -> bool:
        """Dead-letter a claimed record: status failed, ``error`` kept."""
        ...

    def release(self, event_id: str, owner: str) -> bool:
        """Forget a claimed record, so that a redelivery is taken as new (inline mode)."""
        ...

    def requeue(self, event_id: str) -> bool:
        """Make a failed, done or scheduled record due now with a fresh attempt count."""
        ...

    def requeue_failed(self) -> int:
        """``requeue`` every failed record; return how many."""
        ...

    def get(self, event_id: str) -> Record | None:
        """One record by id."""
        ...

    def list(
        self,
        *,
        status: Status | None = None,
        event_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Record]:
        """Records, newest first, optionally filtered by status and event type."""
        ...

    def counts(self) -> dict[Status, int]:
        """How many records are in each status (every status present, zero included)."""
        ...

    def next_due(self) -> datetime | None:
        """When the earliest record becomes claimable, or ``None`` if none will."""
        ...

    def purge(self, *, older_than: datetime) -> int:
        """Delete done and failed records received before ``older_than``; return how many."""
        ...

    def maintain(self) -> None:
        """Periodic upkeep, run by the worker off the request path (SQLite: a checkpoint)."""
        ...

    def close(self) -> None:
        """Release connections; a store used again afterwards reconnects (a second lifespan)."""
        ...
