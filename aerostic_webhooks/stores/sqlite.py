"""The default store: an SQLite file (WAL mode) that several processes on one host can share."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from ..errors import StoreUnavailable, error_summary
from .base import LEASE_LAPSED, Record, Status, due_times

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "is_inbox"]

_TABLE = "aerostic_webhook_records"
# Each entry upgrades the schema by one version; a file is migrated on open.
_MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE {_TABLE} (
        event_id TEXT PRIMARY KEY,
        event_type TEXT NOT NULL,
        body BLOB NOT NULL,
        received_at REAL NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at REAL,
        lease_owner TEXT,
        lease_expires_at REAL,
        updated_at REAL,
        -- when the record can next be claimed: next_attempt_at if pending,
        -- lease_expires_at if processing, NULL once done or failed
        due_at REAL
    );
    CREATE INDEX {_TABLE}_due ON {_TABLE} (due_at) WHERE due_at IS NOT NULL;
    CREATE INDEX {_TABLE}_received ON {_TABLE} (received_at);
    CREATE INDEX {_TABLE}_status ON {_TABLE} (status, received_at);
    """,
    # Every delivery and every claim and completion updated the status index: a fifth of a
    # delivery's INSERT. Only failed records (the dead letters) need an index of their own;
    # pending and processing ones are in the due index, and done ones are most of the table.
    f"""
    DROP INDEX {_TABLE}_status;
    CREATE INDEX {_TABLE}_failed ON {_TABLE} (received_at) WHERE status = 'failed';
    UPDATE {_TABLE} SET due_at = NULL WHERE due_at IS NOT NULL AND status IN ('done', 'failed');
    UPDATE {_TABLE} SET due_at = received_at WHERE due_at IS NULL AND status = 'processing';
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)
# The worker's connection checkpoints at SQLite's default 1,000 pages; deliveries only at
# 10,000 (about 40 MB of WAL), a safety net for a process whose records no worker takes.
_INTAKE_CHECKPOINT_PAGES = 10_000
_COLUMNS = (
    "event_id, event_type, body, received_at, status, attempts, last_error, "
    "next_attempt_at, lease_owner, lease_expires_at, updated_at"
)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


_FORK_LOCK = threading.Lock()
# The intake's own wait for the write lock: from 50 us, doubling, to at most 2 ms a sleep.
_RETRY_FIRST = 0.00005
_RETRY_MAX = 0.002
_SQLITE_BUSY = 5  # SQLite's primary result code (sqlite3.SQLITE_BUSY from Python 3.11)

T = TypeVar("T")


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is None:
        return "database is locked" in str(error)
    return bool(code & 0xFF == _SQLITE_BUSY)


def _when_free(statement: Callable[[], T], timeout: float) -> T:
    """Run ``statement`` on a connection with no busy timeout, retrying while another
    connection holds the write lock, for up to ``timeout`` seconds in all.

    SQLite's own busy handler sleeps 1 ms, then 2, 5, 10 ms... before each new try, while a
    delivery holds the lock for about 50 us: gunicorn workers sharing the file spent most of
    a collision asleep. Nothing was written by a statement refused as busy, so it is safe to
    run again.
    """
    delay, deadline = _RETRY_FIRST, 0.0
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as error:
            if not _is_busy(error):
                raise
            now = time.monotonic()
            deadline = deadline or now + timeout
            if now >= deadline:
                raise
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, _RETRY_MAX)


class _Connection:
    """One SQLite connection shared by threads under a lock, reopened after a fork or a close.

    With ``retry_busy`` (seconds) and a file in WAL mode, SQLite's own busy timeout is off
    and ``execute`` waits for the write lock in short steps instead (``_when_free``). Without
    WAL a refused autocommit statement drops its locks, so retrying it could starve behind
    readers: SQLite's busy handler, which keeps them, waits there.
    """

    def __init__(
        self, connect: Callable[[], sqlite3.Connection], retry_busy: float | None = None
    ) -> None:
        self._connect = connect
        self._retry_busy = retry_busy
        self.retry_busy: float | None = None  # in effect, once the journal mode is known
        # Reentrant, so that a fork from a thread inside ``use`` does not wait on itself
        # (see _hold_connections_across_fork).
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = self._open()
        _CONNECTIONS.add(self)

    def _open(self) -> sqlite3.Connection:
        conn = self._connect()
        self.retry_busy = None
        wal = conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        if self._retry_busy is not None and wal:
            conn.execute("PRAGMA busy_timeout=0")
            self.retry_busy = self._retry_busy
        return conn

    @contextmanager
    def use(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            conn = self._conn
            if conn is None:  # closed: an application started again (a second lifespan)
                conn = self._conn = self._open()
            if not write:
                yield conn
                return
            self.execute(conn, "BEGIN IMMEDIATE")
            try:
                yield conn
                self.execute(conn, "COMMIT")  # busy only without WAL
            except BaseException:
                # SQLite may have rolled back already (disk full); a COMMIT that failed
                # (busy) has not, and the next user of the connection must not write into it.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def execute(
        self, conn: sqlite3.Connection, sql: str, parameters: Sequence[object] = ()
    ) -> sqlite3.Cursor:
        """``conn.execute``, waiting for the write lock the way this connection does."""
        if self.retry_busy is None:
            return conn.execute(sql, parameters)
        return _when_free(lambda: conn.execute(sql, parameters), self.retry_busy)

    def _forked(self) -> None:
        """In a forked child: the parent's connection is not ours, and its lock may have been
        held by a thread of the parent at the fork, which would keep it held here forever."""
        with _FORK_LOCK:
            if self._pid != os.getpid():
                self._lock = threading.RLock()
                self._conn = None
                self._pid = os.getpid()

    def close(self) -> None:
        if self._pid != os.getpid():
            self._forked()  # never wait for a lock a thread of the parent may have held
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()


_CONNECTIONS: weakref.WeakSet[_Connection] = weakref.WeakSet()
_HELD_ACROSS_FORK: list[_Connection] = []
# How long a fork waits for a thread to leave SQLite: a statement waits for the write lock
# for at most the store's busy timeout (5 s by default).
_FORK_WAIT = 10.0


def _hold_connections_across_fork() -> None:
    """Before a fork: wait until no thread of this process is inside SQLite.

    A child forked while a thread was in a transaction inherits SQLite's in-process record
    of that thread's locks, and its own connections then find the file locked for good: a
    web worker forked so from a ``gunicorn --preload`` master would answer 503 to every
    delivery. A fork from inside ``use`` itself cannot be helped, and does not wait.
    """
    pid = os.getpid()
    for connection in list(_CONNECTIONS):
        if connection._pid == pid and connection._lock.acquire(timeout=_FORK_WAIT):
            _HELD_ACROSS_FORK.append(connection)


def _release_connections_after_fork() -> None:
    while _HELD_ACROSS_FORK:
        _HELD_ACROSS_FORK.pop()._lock.release()


def _forget_connections_after_fork() -> None:
    _HELD_ACROSS_FORK.clear()  # the child's connections make new locks (_forked)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_hold_connections_across_fork,
        after_in_parent=_release_connections_after_fork,
        after_in_child=_forget_connections_after_fork,
    )


# purge() deletes this many records a transaction (a few milliseconds of the write lock),
# and sleeps this long between them: longer than a waiting delivery sleeps between tries.
_PURGE_BATCH = 1000
_PURGE_PAUSE = 0.005
_PURGE = (
    f"DELETE FROM {_TABLE} WHERE rowid IN (SELECT rowid FROM {_TABLE} "
    "WHERE status IN ('done', 'failed') AND received_at < ? LIMIT ?)"
)

_INSERT = (
    f"INSERT OR IGNORE INTO {_TABLE} ({_COLUMNS}, due_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _row(record: Record) -> tuple[object, ...]:
    """A record as the parameters of ``_INSERT``."""
    next_attempt, due = due_times(record)
    return (
        record.event_id,
        record.event_type,
        record.body,
        _ts(record.received_at),
        record.status.value,
        record.attempts,
        record.last_error,
        _ts(next_attempt),
        record.lease_owner,
        _ts(record.lease_expires_at),
        _ts(record.received_at),
        _ts(due),
    )


def _record(row: sqlite3.Row) -> Record:
    return Record(
        event_id=row[0],
        event_type=row[1],
        body=bytes(row[2]),
        received_at=datetime.fromtimestamp(row[3], timezone.utc),
        status=Status(row[4]),
        attempts=row[5],
        last_error=row[6],
        next_attempt_at=_dt(row[7]),
        lease_owner=row[8],
        lease_expires_at=_dt(row[9]),
        updated_at=_dt(row[10]),
    )


class SQLiteStore:
    """A ``Store`` in one SQLite file.

    WAL mode lets readers and one writer work at once; every change is one short
    transaction, so processes sharing the file (gunicorn workers, the worker command) wait
    at most ``busy_timeout`` seconds for each other. ``synchronous`` is SQLite's own setting:
    ``"NORMAL"`` (the default) keeps every acknowledged delivery when the process crashes or
    is killed, and costs no fsync per delivery; ``"FULL"`` also survives power loss or a
    kernel crash, at the price of an fsync per delivery (about 2.5x fewer deliveries/s here).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "aerostic_webhooks.sqlite3",
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "NORMAL",
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous}")
        self.path = os.fspath(path)
        if self.path in ("", ":memory:"):
            # Each of the store's connections would get a database of its own, and the
            # worker would never see what deliveries recorded.
            raise ValueError(
                f"SQLiteStore needs a file, not {self.path!r}: for an in-memory store use "
                "MemoryStore()"
            )
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous.upper()
        # Two connections: deliveries are recorded on one, the worker and the inspection
        # methods use the other, so receive() never queues behind the worker's transactions
        # in this process (SQLite itself orders the writes of both, as it does across processes).
        self._intake = _Connection(self._open_intake, retry_busy=busy_timeout)
        self._work = _Connection(self._open)
        self._closes = 0  # a batched purge that sees it change stops: close() came meanwhile

    def _open_intake(self) -> sqlite3.Connection:
        """The deliveries' connection: it leaves WAL checkpoints to the worker's connection,
        so a delivery's commit never waits for one (unless the WAL grows very large because
        no worker runs anywhere)."""
        conn = self._open()
        conn.execute(f"PRAGMA wal_autocheckpoint={_INTAKE_CHECKPOINT_PAGES}")
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise StoreUnavailable(
                f"cannot open the SQLite inbox at {self.path!r}: {error_summary(error)} "
                f"(does the directory {str(Path(self.path).parent)!r} exist and is it writable?)"
            ) from error
        try:
            # A new file's switch to WAL takes an exclusive lock, and SQLite refuses at once
            # (busy timeout or not) a lock it could only wait for by deadlocking: gunicorn
            # workers opening a new file together meet here. So the retries do all the
            # waiting, within busy_timeout, with SQLite's own busy handler off meanwhile.
            conn.execute("PRAGMA busy_timeout=0")
            _when_free(lambda: conn.execute("PRAGMA journal_mode=WAL"), self._busy_timeout)
            conn.execute(f"PRAGMA busy_timeout={round(self._busy_timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            self._migrate(conn)
        except sqlite3.Error as error:
            conn.close()
            raise StoreUnavailable(
                f"cannot use the SQLite inbox at {self.path!r}: {error_summary(error)}"
            ) from error
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring the schema up to date; an up-to-date file is only read (it may be read-only)."""
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this library's {SCHEMA_VERSION}"
                )
            for step in _MIGRATIONS[version:]:
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        with self._cursor() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def _cursor(self, write: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """The worker's connection; ``write`` wraps the block in one IMMEDIATE transaction."""
        return self._work.use(write)

    def add(self, record: Record) -> bool:
        try:
            with self._intake.use() as conn:
                cursor = self._intake.execute(conn, _INSERT, _row(record))
        except sqlite3.Error as error:
            raise StoreUnavailable(
                f"SQLite could not record the delivery: {error_summary(error)}"
            ) from error
        return cursor.rowcount == 1

    def add_many(self, records: Sequence[Record]) -> list[bool]:
        """``add`` for several deliveries in one transaction: all are recorded, or none."""
        try:
            with self._intake.use(write=True) as conn:
                return [conn.execute(_INSERT, _row(r)).rowcount == 1 for r in records]
        except sqlite3.Error as error:
            raise StoreUnavailable(
                f"SQLite could not record the deliveries: {error_summary(error)}"
            ) from error

    def _claim_where(
        self, conn: sqlite3.Connection, event_ids: Sequence[str], owner: str, lease: float
    ) -> list[Record]:
        now = time.time()
        expires = now + lease
        marks = ",".join("?" * len(event_ids))
        conn.execute(
            f"UPDATE {_TABLE} SET status = 'processing', attempts = attempts + 1, "
            "next_attempt_at = NULL, lease_owner = ?, lease_expires_at = ?, due_at = ?, "
            "updated_at = ?, last_error = CASE status WHEN 'processing' THEN ? "
            f"ELSE last_error END WHERE event_id IN ({marks})",
            (owner, expires, expires, now, LEASE_LAPSED, *event_ids),
        )
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM {_TABLE} WHERE event_id IN ({marks}) ORDER BY received_at",
            tuple(event_ids),
        ).fetchall()
        return [_record(row) for row in rows]

    def claim(self, owner: str, *, limit: int, lease: float) -> list[Record]:
        with self._cursor(write=True) as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    f"SELECT event_id FROM {_TABLE} WHERE due_at <= ? ORDER BY due_at LIMIT ?",
                    (time.time(), limit),
                )
            ]
            return self._claim_where(conn, ids, owner, lease) if ids else []

    def take(self, event_id: str, owner: str, *, lease: float) -> Record | None:
        with self._cursor(write=True) as conn:
            row = conn.execute(
                f"SELECT 1 FROM {_TABLE} WHERE event_id = ? AND due_at <= ?",
                (event_id, time.time()),
            ).fetchone()
            if row is None:
                return None
            return self._claim_where(conn, [event_id], owner, lease)[0]

    def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
        expires = time.time() + lease
        with self._cursor(write=True) as conn:
            conn.executemany(
                f"UPDATE {_TABLE} SET lease_expires_at = ?, due_at = ? "
                "WHERE event_id = ? AND status = 'processing' AND lease_owner = ?",
                [(expires, expires, event_id, owner) for event_id in event_ids],
            )

    @staticmethod
    def _finish_sql(assignments: str) -> str:
        """Release a record its owner holds, with ``assignments`` (params: theirs, then
        ``updated_at``, ``event_id``, ``owner``)."""
        return (
            f"UPDATE {_TABLE} SET {assignments}, lease_owner = NULL, lease_expires_at = NULL, "
            "updated_at = ? WHERE event_id = ? AND status = 'processing' AND lease_owner = ?"
        )

    def _finish(self, event_id: str, owner: str, assignments: str, *params: object) -> bool:
        with self._cursor() as conn:
            cursor = conn.execute(
                self._finish_sql(assignments), (*params, time.time(), event_id, owner)
            )
        return cursor.rowcount == 1

    def complete(self, event_id: str, owner: str) -> bool:
        return self.complete_many(owner, [event_id]) == 1

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        now = time.time()
        with self._cursor(write=True) as conn:  # one transaction, not one per record
            cursor = conn.executemany(
                self._finish_sql("status = 'done', due_at = NULL"),
                [(now, event_id, owner) for event_id in event_ids],
            )
        return max(cursor.rowcount, 0)

    def reschedule(self, event_id: str, owner: str, *, at: datetime, error: str) -> bool:
        return self._finish(
            event_id,
            owner,
            "status = 'pending', next_attempt_at = ?, due_at = ?, last_error = ?",
            at.timestamp(),
            at.timestamp(),
            error,
        )

    def fail(self, event_id: str, owner: str, *, error: str) -> bool:
        return self._finish(
            event_id, owner, "status = 'failed', due_at = NULL, last_error = ?", error
        )

    def unclaim(self, owner: str, event_ids: Sequence[str]) -> int:
        now = time.time()
        with self._cursor(write=True) as conn:
            cursor = conn.executemany(
                self._finish_sql(
                    "status = 'pending', attempts = MAX(attempts - 1, 0), next_attempt_at = ?, "
                    "due_at = ?"
                ),
                [(now, now, now, event_id, owner) for event_id in event_ids],
            )
        return max(cursor.rowcount, 0)

    def release(self, event_id: str, owner: str) -> bool:
        with self._cursor() as conn:
            cursor = conn.execute(
                f"DELETE FROM {_TABLE} WHERE event_id = ? AND status = 'processing' "
                "AND lease_owner = ?",
                (event_id, owner),
            )
        return cursor.rowcount == 1

    # Named placeholders: Python 3.12 deprecates numbered ones (?1) bound from a sequence.
    _REQUEUE = (
        f"UPDATE {_TABLE} SET status = 'pending', attempts = 0, next_attempt_at = :now, "
        "due_at = :now, updated_at = :now WHERE status != 'processing'"
    )
    # requeue_failed() goes in batches, as purge() does: failed records, from their index.
    _REQUEUE_FAILED = (
        _REQUEUE
        + f" AND rowid IN (SELECT rowid FROM {_TABLE} WHERE status = 'failed' LIMIT :batch)"
    )

    def requeue(self, event_id: str) -> bool:
        with self._cursor() as conn:
            cursor = conn.execute(
                self._REQUEUE + " AND event_id = :event_id",
                {"now": time.time(), "event_id": event_id},
            )
        return cursor.rowcount == 1

    def requeue_failed(self) -> int:
        """In batches of ``_PURGE_BATCH``, one transaction each, pausing between them, as
        ``purge``: one UPDATE of 150,000 dead letters held the write lock for half a second,
        and deliveries with a shorter busy timeout were refused meanwhile. Records that fail
        again while it runs are left failed (it takes as many as were failed at the start)."""
        with self._cursor() as conn:
            (left,) = conn.execute(
                f"SELECT COUNT(*) FROM {_TABLE} WHERE status = 'failed'"
            ).fetchone()
        total = 0
        while left > 0:
            now = time.time()
            with self._cursor() as conn:
                batch = min(left, _PURGE_BATCH)
                changed = conn.execute(self._REQUEUE_FAILED, {"now": now, "batch": batch}).rowcount
            total += changed
            left -= batch
            if changed < batch:
                break
            if left > 0:
                time.sleep(_PURGE_PAUSE)
        return total

    def get(self, event_id: str) -> Record | None:
        with self._cursor() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM {_TABLE} WHERE event_id = ?", (event_id,)
            ).fetchone()
        return None if row is None else _record(row)

    def list(
        self,
        *,
        status: Status | None = None,
        event_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Record]:
        sql, params = self._list_query(status, event_type)
        with self._cursor() as conn:
            rows = conn.execute(sql, (*params, limit, offset)).fetchall()
        return [_record(row) for row in rows]

    @staticmethod
    def _list_query(
        status: Status | None, event_type: str | None
    ) -> tuple[str, tuple[object, ...]]:
        """``list()``'s statement, with parameters for all but its ``LIMIT`` and ``OFFSET``."""
        clauses: list[str] = []
        params: tuple[object, ...] = ()
        source = _TABLE
        if status is not None:
            # A literal, not a parameter: SQLite uses a partial index only for a condition it
            # can see when it plans the statement.
            clauses.append(f"status = '{Status(status).value}'")
            if status in (Status.PENDING, Status.PROCESSING):
                # The backlog, from the due index: not a walk through every record kept.
                source = f"{_TABLE} INDEXED BY {_TABLE}_due"
                clauses.append("due_at IS NOT NULL")
        if event_type is not None:
            clauses.append("event_type = ?")
            params = (event_type,)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return (
            f"SELECT {_COLUMNS} FROM {source} {where} "
            "ORDER BY received_at DESC, rowid DESC LIMIT ? OFFSET ?",
            params,
        )

    def counts(self) -> dict[Status, int]:
        """Pending and processing from the due index, failed from its own, done the rest."""
        counts = dict.fromkeys(Status, 0)
        with self._cursor() as conn:
            conn.execute("BEGIN")  # one snapshot for the three counts
            try:
                (total,) = conn.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()
                for status, count in conn.execute(
                    f"SELECT status, COUNT(*) FROM {_TABLE} WHERE due_at IS NOT NULL "
                    "AND status IN ('pending', 'processing') GROUP BY status"
                ):
                    counts[Status(status)] = count
                (counts[Status.FAILED],) = conn.execute(
                    f"SELECT COUNT(*) FROM {_TABLE} WHERE status = 'failed'"
                ).fetchone()
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        counts[Status.DONE] = total - sum(counts.values())
        return counts

    def next_due(self) -> datetime | None:
        with self._cursor() as conn:
            # The condition lets SQLite answer from the partial index on due_at instead of
            # scanning every record kept (done ones included).
            row = conn.execute(
                f"SELECT MIN(due_at) FROM {_TABLE} WHERE due_at IS NOT NULL"
            ).fetchone()
        return _dt(row[0])

    def purge(self, *, older_than: datetime) -> int:
        """Delete in batches of ``_PURGE_BATCH``, one transaction each, pausing between them.

        A week of a busy receiver's records deleted in one statement held the write lock for
        seconds, and deliveries waited out their busy timeout (503s) meanwhile; the pause
        lets those waiting for the lock (sleeping up to ``_RETRY_MAX`` a try) take it."""
        cutoff = older_than.timestamp()
        closes = self._closes
        total = 0
        while True:
            with self._cursor() as conn:
                deleted = conn.execute(_PURGE, (cutoff, _PURGE_BATCH)).rowcount
            total += deleted
            if deleted < _PURGE_BATCH:
                return total
            time.sleep(_PURGE_PAUSE)
            if self._closes != closes:
                # close() came meanwhile (a worker's, which waits only so long for a purge):
                # another batch would open a connection that nothing closes. The next
                # purge takes the rest.
                return total

    def maintain(self) -> None:
        """Checkpoint the WAL on the worker's connection, so that deliveries never do, even
        while every handler is busy and the worker commits nothing."""
        with self._cursor() as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self._closes += 1
        self._intake.close()
        self._work.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"


def is_inbox(path: str | os.PathLike[str]) -> bool:
    """Whether the SQLite file at ``path`` holds an inbox, read without changing anything
    (opened as a ``SQLiteStore``, any database would be given the tables and WAL mode).

    ``False`` for a database without the inbox's table or a file that is not a database;
    ``StoreUnavailable`` if the file cannot be read. One case leaves files: should another
    process close a WAL database's last connection during the check, its ``-wal`` and
    ``-shm`` files stay beside it (harmless; SQLite uses or removes them later).
    """
    file = Path(path).resolve()
    # With no WAL file there is nothing unwritten to read, and immutable mode reads the
    # file alone: a read-only open of a WAL database would otherwise leave -wal and -shm
    # files beside it that it cannot remove.
    mode = "ro" if Path(f"{file}-wal").exists() else "ro&immutable=1"
    try:
        with closing(sqlite3.connect(f"{file.as_uri()}?mode={mode}", uri=True)) as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)
            ).fetchone()
    except sqlite3.OperationalError as error:  # cannot open or read it
        raise StoreUnavailable(
            f"cannot read the SQLite file at {str(path)!r}: {error_summary(error)}"
        ) from None
    except sqlite3.DatabaseError:  # not a database
        return False
    return found is not None
