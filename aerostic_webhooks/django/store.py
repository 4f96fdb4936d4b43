"""A ``Store`` on the Django ORM: the default store of the Django app, on any database."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import overload

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import Case, Count, F, Min, QuerySet, TextField, Value, When
from django.db.models.functions import Greatest

from ..errors import StoreUnavailable, error_summary
from ..stores.base import LEASE_LAPSED, Record, Status, due_times, utcnow
from .models import WebhookEvent

__all__ = ["PURGE_BATCH", "DjangoStore"]

#: On SQLite, ``purge`` deletes (and ``requeue_failed`` requeues) this many rows a statement,
#: pausing ``_PURGE_PAUSE`` seconds between statements, as ``SQLiteStore`` does: one DELETE of
#: 150,000 rows held the database's one write lock for over a second, and every delivery
#: meanwhile waited (or, past the connection's timeout, was refused).
PURGE_BATCH = 1000
_PURGE_PAUSE = 0.005


@overload
def _to_db(value: datetime) -> datetime: ...
@overload
def _to_db(value: None) -> None: ...
@overload
def _to_db(value: datetime | None) -> datetime | None: ...
def _to_db(value: datetime | None) -> datetime | None:
    if value is None or settings.USE_TZ:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)  # naive UTC when USE_TZ=False


def _text(value: str) -> str:
    """Text PostgreSQL can keep: it refuses NUL in text (an error's message may hold one)."""
    return value.replace("\x00", "\ufffd")


def _from_db(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _record(row: WebhookEvent) -> Record:
    received = _from_db(row.received_at)
    assert received is not None
    return Record(
        event_id=row.event_id,
        event_type=row.event_type,
        body=bytes(row.body),
        received_at=received,
        status=Status(row.status),
        attempts=row.attempts,
        last_error=row.last_error or None,
        next_attempt_at=_from_db(row.next_attempt_at),
        lease_owner=row.lease_owner,
        lease_expires_at=_from_db(row.lease_expires_at),
        updated_at=_from_db(row.updated_at),
    )


class DjangoStore:
    """Records in the ``WebhookEvent`` table of database ``using``.

    Duplicates are refused by the unique ``event_id`` (two deliveries racing: one insert
    wins, the other's ``IntegrityError`` means "duplicate"). Claims lock their rows with
    ``SELECT ... FOR UPDATE SKIP LOCKED`` where the database supports it, so workers on
    PostgreSQL never wait for each other, and update only rows still due, so they never
    take the same row twice on any database.
    """

    def __init__(self, using: str = "default") -> None:
        self.using = using

    def _rows(self) -> QuerySet[WebhookEvent]:
        rows: QuerySet[WebhookEvent] = WebhookEvent.objects.using(self.using)
        return rows

    def add(self, record: Record) -> bool:
        next_attempt, due = due_times(record)
        try:
            with transaction.atomic(using=self.using):
                self._rows().create(
                    event_id=record.event_id,
                    event_type=record.event_type,
                    body=record.body,
                    received_at=_to_db(record.received_at),
                    status=record.status.value,
                    attempts=record.attempts,
                    last_error=_text(record.last_error or ""),
                    next_attempt_at=_to_db(next_attempt),
                    lease_owner=record.lease_owner,
                    lease_expires_at=_to_db(record.lease_expires_at),
                    updated_at=_to_db(record.received_at),
                    due_at=_to_db(due),
                )
        except IntegrityError as error:
            if self._duplicate(error, record.event_id):
                return False
            raise StoreUnavailable(
                f"the database could not record the delivery: {error_summary(error)}"
            ) from error
        except DatabaseError as error:
            raise StoreUnavailable(
                f"the database could not record the delivery: {error_summary(error)}"
            ) from error
        return True

    def _duplicate(self, error: IntegrityError, event_id: str) -> bool:
        """Whether ``error`` is the unique event id's refusal: any other constraint's (a CHECK
        or a trigger the project added, say) must not be acknowledged as a duplicate."""
        sqlstate = getattr(error.__cause__, "sqlstate", None)  # psycopg; psycopg2's pgcode
        sqlstate = sqlstate or getattr(error.__cause__, "pgcode", None)
        if isinstance(sqlstate, str):
            return sqlstate == "23505"  # unique_violation
        # Other databases: the row is there. (The failed insert's savepoint is rolled back,
        # so the transaction can still read.)
        return bool(self._rows().filter(event_id=event_id).exists())

    def add_many(self, records: Sequence[Record]) -> list[bool]:
        """``add`` for several deliveries in one transaction: all are recorded, or none."""
        added: dict[int, bool] = {}
        # In id order, so that two processes' batches take the unique index's locks in the same
        # order and cannot deadlock (PostgreSQL, MySQL).
        in_order = sorted(range(len(records)), key=lambda n: records[n].event_id)
        try:
            with transaction.atomic(using=self.using):
                for n in in_order:
                    added[n] = self.add(records[n])
        except DatabaseError as error:  # the commit itself failed
            raise StoreUnavailable(
                f"the database could not record the deliveries: {error_summary(error)}"
            ) from error
        return [added[n] for n in range(len(records))]

    def _claim(self, candidates: QuerySet[WebhookEvent], owner: str, lease: float) -> list[Record]:
        now = utcnow()
        expires = _to_db(now + timedelta(seconds=lease))
        with transaction.atomic(using=self.using):
            if connections[self.using].features.has_select_for_update_skip_locked:
                candidates = candidates.select_for_update(skip_locked=True)
            ids = list(candidates.values_list("pk", flat=True))
            if not ids:
                return []
            self._rows().filter(pk__in=ids, due_at__lte=_to_db(now)).update(
                # First: MySQL assigns left to right, so this must read the old status.
                last_error=Case(
                    When(status=Status.PROCESSING.value, then=Value(LEASE_LAPSED)),
                    default=F("last_error"),
                    output_field=TextField(),
                ),
                status=Status.PROCESSING.value,
                attempts=F("attempts") + 1,
                next_attempt_at=None,
                lease_owner=owner,
                lease_expires_at=expires,
                due_at=expires,
                updated_at=_to_db(now),
            )
            rows = self._rows().filter(pk__in=ids, lease_owner=owner, lease_expires_at=expires)
            return [_record(row) for row in rows.order_by("due_at", "received_at")]

    def claim(self, owner: str, *, limit: int, lease: float) -> list[Record]:
        due = self._rows().filter(due_at__lte=_to_db(utcnow())).order_by("due_at")[:limit]
        return self._claim(due, owner, lease)

    def take(self, event_id: str, owner: str, *, lease: float) -> Record | None:
        due = self._rows().filter(event_id=event_id, due_at__lte=_to_db(utcnow()))
        taken = self._claim(due, owner, lease)
        return taken[0] if taken else None

    def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
        expires = _to_db(utcnow() + timedelta(seconds=lease))
        self._held_many(event_ids, owner).update(lease_expires_at=expires, due_at=expires)

    def _held_many(self, event_ids: Sequence[str], owner: str) -> QuerySet[WebhookEvent]:
        rows: QuerySet[WebhookEvent] = self._rows().filter(
            event_id__in=list(event_ids), status=Status.PROCESSING.value, lease_owner=owner
        )
        return rows

    def _finish(self, event_ids: Sequence[str], owner: str, **changes: object) -> int:
        """Release the records ``owner`` holds among ``event_ids`` with ``changes``; how many."""
        updated: int = self._held_many(event_ids, owner).update(
            lease_owner=None, lease_expires_at=None, updated_at=_to_db(utcnow()), **changes
        )
        return updated

    def complete(self, event_id: str, owner: str) -> bool:
        return self.complete_many(owner, [event_id]) == 1

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        return self._finish(event_ids, owner, status=Status.DONE.value, due_at=None)

    def reschedule(self, event_id: str, owner: str, *, at: datetime, error: str) -> bool:
        return (
            self._finish(
                [event_id],
                owner,
                status=Status.PENDING.value,
                next_attempt_at=_to_db(at),
                due_at=_to_db(at),
                last_error=_text(error),
            )
            == 1
        )

    def fail(self, event_id: str, owner: str, *, error: str) -> bool:
        return (
            self._finish(
                [event_id], owner, status=Status.FAILED.value, due_at=None, last_error=_text(error)
            )
            == 1
        )

    def unclaim(self, owner: str, event_ids: Sequence[str]) -> int:
        now = _to_db(utcnow())
        return self._finish(
            event_ids,
            owner,
            status=Status.PENDING.value,
            # A record added as processing may have none to give back.
            attempts=Greatest(F("attempts") - 1, Value(0)),
            next_attempt_at=now,
            due_at=now,
        )

    def release(self, event_id: str, owner: str) -> bool:
        deleted, _ = self._held_many([event_id], owner).delete()
        return deleted == 1

    def _requeue(self, rows: QuerySet[WebhookEvent]) -> int:
        now = _to_db(utcnow())
        return int(
            rows.exclude(status=Status.PROCESSING.value).update(
                status=Status.PENDING.value,
                attempts=0,
                next_attempt_at=now,
                due_at=now,
                updated_at=now,
            )
        )

    def requeue_rows(self, rows: QuerySet[WebhookEvent]) -> int:
        """``requeue`` for the records among ``rows`` in one UPDATE (the admin's action):
        how many were queued (not those being processed)."""
        return self._requeue(rows)

    def requeue(self, event_id: str) -> bool:
        return self._requeue(self._rows().filter(event_id=event_id)) == 1

    def requeue_failed(self) -> int:
        """On SQLite in batches of ``PURGE_BATCH``, pausing between them, as ``purge`` (and as
        ``SQLiteStore.requeue_failed``): one UPDATE of a large backlog of dead letters held
        the write lock while every delivery waited. Records that fail again while it runs
        are left failed (it takes as many as were failed at the start)."""
        failed = self._rows().filter(status=Status.FAILED.value)
        if connections[self.using].vendor != "sqlite":
            return self._requeue(failed)
        return _in_batches(failed, self._requeue, most=failed.count())

    def get(self, event_id: str) -> Record | None:
        row = self._rows().filter(event_id=event_id).first()
        return None if row is None else _record(row)

    def list(
        self,
        *,
        status: Status | None = None,
        event_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Record]:
        rows = self._rows()
        if status is not None:
            rows = rows.filter(status=Status(status).value)
        if event_type is not None:
            rows = rows.filter(event_type=event_type)
        rows = rows.order_by("-received_at", "-pk")[offset : offset + limit]
        return [_record(row) for row in rows]

    def counts(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        for status, count in self._rows().values_list("status").annotate(n=Count("pk")):
            counts[Status(status)] = count
        return counts

    def next_due(self) -> datetime | None:
        return _from_db(self._rows().aggregate(first=Min("due_at"))["first"])

    def purge(self, *, older_than: datetime) -> int:
        old = self._rows().filter(
            status__in=[Status.DONE.value, Status.FAILED.value], received_at__lt=_to_db(older_than)
        )
        if connections[self.using].vendor != "sqlite":
            deleted, _ = old.delete()
            return int(deleted)
        return _in_batches(old, lambda batch: int(batch.delete()[0]))

    def maintain(self) -> None:
        """Nothing to keep up: the database does its own."""

    def close(self) -> None:
        """Django manages the connections."""


def _in_batches(
    rows: QuerySet[WebhookEvent],
    change: Callable[[QuerySet[WebhookEvent]], int],
    *,
    most: int | None = None,
) -> int:
    """``change`` ``rows`` ``PURGE_BATCH`` at a time, pausing between batches (SQLite's one
    write lock): until ``most`` rows are done, or without it until a batch comes short. How
    many were changed."""
    total = 0
    while most is None or most > 0:
        size = PURGE_BATCH if most is None else min(most, PURGE_BATCH)
        batch = list(rows.values_list("pk", flat=True)[:size])
        if not batch:
            break
        # rows' conditions again, not the ids alone: a row changed since its id was read
        # (requeued, say) is left as it now is.
        total += change(rows.filter(pk__in=batch))
        if most is not None:
            most -= len(batch)
            if most <= 0:
                break
        elif len(batch) < PURGE_BATCH:
            break
        time.sleep(_PURGE_PAUSE)
    return total
