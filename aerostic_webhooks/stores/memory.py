"""An in-process store: for tests and throwaway processes (nothing survives a restart)."""

from __future__ import annotations

import collections
import heapq
import itertools
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta

from .base import LEASE_LAPSED, Record, Status, due_at, utcnow

__all__ = ["MemoryStore"]


class MemoryStore:
    """A thread-safe ``Store`` kept in a dict, with a heap of due times for cheap claims.

    ``add`` takes no lock (an atomic ``dict.setdefault`` and a deque append), so the request
    path never waits for the worker, which holds the lock for everything else.
    """

    #: Its methods never wait on I/O, so async adapters may call ``add`` on the event loop.
    blocking = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}
        self._added: collections.deque[Record] = collections.deque()
        # (due time, tie-breaker, event_id); entries go stale when a record changes and are
        # dropped when they reach the top and no longer match the record.
        self._due: list[tuple[datetime, int, str]] = []
        self._seq = itertools.count()

    def _schedule(self, record: Record) -> None:
        due = due_at(record)
        if due is not None:
            heapq.heappush(self._due, (due, next(self._seq), record.event_id))

    def _top(self) -> tuple[datetime, str] | None:
        while self._added:
            self._schedule(self._added.popleft())
        while self._due:
            due, _, event_id = self._due[0]
            record = self._records.get(event_id)
            if record is not None and due_at(record) == due:
                return due, event_id
            heapq.heappop(self._due)
        return None

    def add(self, record: Record) -> bool:
        if record.status is Status.PENDING and record.next_attempt_at is None:
            record = record.replace(next_attempt_at=record.received_at)
        if self._records.setdefault(record.event_id, record) is not record:
            return False
        self._added.append(record)  # put on the heap by the next claim, under the lock
        return True

    def add_many(self, records: Sequence[Record]) -> list[bool]:
        return [self.add(record) for record in records]

    def _claimable(self, record: Record, now: datetime) -> bool:
        due = due_at(record)
        return due is not None and due <= now

    def _claim(self, record: Record, owner: str, now: datetime, expires: datetime) -> Record:
        # Built positionally: the worker's hot path, and _replace costs several times more.
        claimed = Record(
            record.event_id,
            record.event_type,
            record.body,
            record.received_at,
            Status.PROCESSING,
            record.attempts + 1,
            LEASE_LAPSED if record.status is Status.PROCESSING else record.last_error,
            None,
            owner,
            expires,
            now,
        )
        self._records[record.event_id] = claimed
        heapq.heappush(self._due, (expires, next(self._seq), record.event_id))
        return claimed

    def claim(self, owner: str, *, limit: int, lease: float) -> list[Record]:
        now = utcnow()
        expires = now + timedelta(seconds=lease)
        claimed: list[Record] = []
        with self._lock:
            while len(claimed) < limit:
                top = self._top()
                if top is None or top[0] > now:
                    break
                heapq.heappop(self._due)
                claimed.append(self._claim(self._records[top[1]], owner, now, expires))
        return claimed

    def take(self, event_id: str, owner: str, *, lease: float) -> Record | None:
        now = utcnow()
        with self._lock:
            record = self._records.get(event_id)
            if record is None or not self._claimable(record, now):
                return None
            return self._claim(record, owner, now, now + timedelta(seconds=lease))

    def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
        now = utcnow()
        with self._lock:
            for event_id in event_ids:
                record = self._held(event_id, owner)
                if record is not None:
                    renewed = record.replace(lease_expires_at=now + timedelta(seconds=lease))
                    self._records[event_id] = renewed
                    self._schedule(renewed)

    def _held(self, event_id: str, owner: str) -> Record | None:
        record = self._records.get(event_id)
        if record is None or record.status is not Status.PROCESSING:
            return None
        return record if record.lease_owner == owner else None

    def _finish(self, event_id: str, owner: str, **changes: object) -> bool:
        with self._lock:
            record = self._held(event_id, owner)
            if record is None:
                return False
            updated = record.replace(
                lease_owner=None, lease_expires_at=None, updated_at=utcnow(), **changes
            )
            self._records[event_id] = updated
            self._schedule(updated)
            return True

    def complete(self, event_id: str, owner: str) -> bool:
        return self.complete_many(owner, (event_id,)) == 1

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        now = utcnow()
        completed = 0
        with self._lock:
            for event_id in event_ids:
                record = self._held(event_id, owner)
                if record is None:
                    continue
                # Built positionally, as in _claim; a done record is never due, so no schedule.
                self._records[event_id] = Record(
                    event_id,
                    record.event_type,
                    record.body,
                    record.received_at,
                    Status.DONE,
                    record.attempts,
                    record.last_error,
                    updated_at=now,
                )
                completed += 1
        return completed

    def reschedule(self, event_id: str, owner: str, *, at: datetime, error: str) -> bool:
        return self._finish(
            event_id, owner, status=Status.PENDING, next_attempt_at=at, last_error=error
        )

    def fail(self, event_id: str, owner: str, *, error: str) -> bool:
        return self._finish(event_id, owner, status=Status.FAILED, last_error=error)

    def unclaim(self, owner: str, event_ids: Sequence[str]) -> int:
        now = utcnow()
        unclaimed = 0
        with self._lock:
            for event_id in event_ids:
                record = self._held(event_id, owner)
                if record is None:
                    continue
                handed_back = record.replace(
                    status=Status.PENDING,
                    attempts=max(record.attempts - 1, 0),
                    next_attempt_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
                self._records[event_id] = handed_back
                self._schedule(handed_back)
                unclaimed += 1
        return unclaimed

    def release(self, event_id: str, owner: str) -> bool:
        with self._lock:
            if self._held(event_id, owner) is None:
                return False
            del self._records[event_id]
            return True

    def _requeue(self, record: Record, now: datetime) -> Record:
        requeued = record.replace(
            status=Status.PENDING, attempts=0, next_attempt_at=now, updated_at=now
        )
        self._records[record.event_id] = requeued
        self._schedule(requeued)
        return requeued

    def requeue(self, event_id: str) -> bool:
        with self._lock:
            record = self._records.get(event_id)
            if record is None or record.status is Status.PROCESSING:
                return False
            self._requeue(record, utcnow())
            return True

    def requeue_failed(self) -> int:
        now = utcnow()
        with self._lock:
            failed = [r for r in tuple(self._records.values()) if r.status is Status.FAILED]
            for record in failed:
                self._requeue(record, now)
            return len(failed)

    def get(self, event_id: str) -> Record | None:
        return self._records.get(event_id)

    def list(
        self,
        *,
        status: Status | None = None,
        event_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Record]:
        if status is not None:
            status = Status(status)  # by name too ("failed"), as the other stores take it
        records = tuple(self._records.values())
        matching = [
            r
            for r in reversed(records)
            if (status is None or r.status is status)
            and (event_type is None or r.event_type == event_type)
        ]
        matching.sort(key=lambda r: r.received_at, reverse=True)
        return matching[offset : offset + limit]

    def counts(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        for record in tuple(self._records.values()):
            counts[record.status] += 1
        return counts

    def next_due(self) -> datetime | None:
        with self._lock:
            top = self._top()
        return None if top is None else top[0]

    def purge(self, *, older_than: datetime) -> int:
        with self._lock:
            old = [
                event_id
                for event_id, r in tuple(self._records.items())
                if r.status in (Status.DONE, Status.FAILED) and r.received_at < older_than
            ]
            for event_id in old:
                del self._records[event_id]
            return len(old)

    def maintain(self) -> None:
        """Nothing to keep up."""

    def close(self) -> None:
        """Nothing to release; records stay readable."""

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._records)
