"""An acknowledged event is never lost: default store, store failures, processes, crashes."""

from __future__ import annotations

import collections
import mmap
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from aerostic_webhooks import (
    Event,
    MemoryStore,
    SQLiteStore,
    StoreUnavailable,
    WebhookReceiver,
    sign,
)
from aerostic_webhooks.stores import Record, Status, Store
from aerostic_webhooks.stores import sqlite as sqlite_module
from aerostic_webhooks.stores.base import utcnow
from aerostic_webhooks.testing import sample_body

from .conftest import SECRET
from .servers import free_port

DELIVERER = Path(__file__).with_name("_deliverer.py")


def signed(event_type: str = "message.received", **data: object) -> tuple[bytes, dict[str, str]]:
    body = sample_body(event_type, **data)
    return body, {"X-Aerostic-Signature": sign(body, SECRET)}


# -- the default store --------------------------------------------------------------------------


def test_default_store_is_sqlite_at_the_env_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.sqlite3"
    monkeypatch.setenv("AEROSTIC_WEBHOOKS_DB", str(path))
    with WebhookReceiver(SECRET) as webhooks:
        assert isinstance(webhooks.store, SQLiteStore)
        webhooks.receive(*signed())
    assert path.exists()
    with SQLiteStore(path) as store:
        assert store.get("message.received:msg_abc123") is not None


def test_default_store_without_env_is_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AEROSTIC_WEBHOOKS_DB")
    monkeypatch.chdir(tmp_path)
    with WebhookReceiver(SECRET) as webhooks:
        assert isinstance(webhooks.store, SQLiteStore)
    assert (tmp_path / "aerostic_webhooks.sqlite3").exists()


def test_a_bad_path_fails_at_construction_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "inbox.sqlite3"
    with pytest.raises(StoreUnavailable, match="cannot open the SQLite inbox") as caught:
        WebhookReceiver(SECRET, store=SQLiteStore(missing))
    assert str(missing) in str(caught.value)


def test_sqlite_uses_wal_and_a_schema_version(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "inbox.sqlite3") as store:
        assert store.schema_version == sqlite_module.SCHEMA_VERSION
    conn = sqlite3.connect(tmp_path / "inbox.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_later_schema_migrates_an_existing_file_and_keeps_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "inbox.sqlite3"
    with WebhookReceiver(SECRET, store=SQLiteStore(path)) as webhooks:
        webhooks.receive(*signed())
    later = (
        *sqlite_module._MIGRATIONS,
        f"ALTER TABLE {sqlite_module._TABLE} ADD COLUMN note TEXT DEFAULT 'migrated'",
    )
    monkeypatch.setattr(sqlite_module, "_MIGRATIONS", later)
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", len(later))
    with SQLiteStore(path) as store:
        assert store.schema_version == len(later)
        assert store.get("message.received:msg_abc123") is not None
    conn = sqlite3.connect(path)
    assert conn.execute(f"SELECT note FROM {sqlite_module._TABLE}").fetchall() == [("migrated",)]
    conn.close()


def test_a_version_1_file_loses_the_status_index_and_keeps_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "inbox.sqlite3"
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_module, "_MIGRATIONS", sqlite_module._MIGRATIONS[:1])
        patch.setattr(sqlite_module, "SCHEMA_VERSION", 1)
        with SQLiteStore(path) as store:
            for name in ("a", "b", "c"):
                store.add(Record(name, "message.sent", b"{}", utcnow()))
            store.claim("w", limit=2, lease=30)
            store.complete("a", "w")
            store.fail("b", "w", error="gave up")
            before = store.counts()
    # What version 1 wrote for records added in these states: a done one with a lease was
    # due (claimable), a processing one without a lease never was.
    conn = sqlite3.connect(path)
    table = sqlite_module._TABLE
    conn.execute(
        f"INSERT INTO {table} (event_id, event_type, body, received_at, status, due_at) "
        "VALUES ('leased-done', 'x', x'', 1.0, 'done', 2.0), ('orphan', 'x', x'', 1.0, "
        "'processing', NULL)"
    )
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store:
        assert store.schema_version == 2
        assert store.counts() == before | {
            Status.DONE: before[Status.DONE] + 1,
            Status.PROCESSING: before[Status.PROCESSING] + 1,
        }
        assert [r.event_id for r in store.list(status=Status.FAILED)] == ["b"]
        assert [r.event_id for r in store.claim("x", limit=10, lease=30)] == ["orphan", "c"]
    conn = sqlite3.connect(path)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert f"{sqlite_module._TABLE}_status" not in indexes
    assert f"{sqlite_module._TABLE}_failed" in indexes


@pytest.mark.parametrize(
    ("status", "index"),
    [(Status.FAILED, "failed"), (Status.PENDING, "due"), (Status.PROCESSING, "due")],
)
def test_sqlite_lists_dead_letters_and_the_backlog_from_an_index(
    tmp_path: Path, status: Status, index: str
) -> None:
    """Neither walks through every record kept (a week of done ones, bodies included)."""
    path = tmp_path / "inbox.sqlite3"
    SQLiteStore(path).close()
    sql, params = SQLiteStore._list_query(status, None)
    conn = sqlite3.connect(path)
    plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (*params, 9, 0)))
    conn.close()
    assert f"USING INDEX {sqlite_module._TABLE}_{index}" in plan


@pytest.mark.parametrize("ahead", [1, 97])
def test_a_file_from_a_newer_version_is_refused(tmp_path: Path, ahead: int) -> None:
    """Even one version ahead (a rolled-back deployment): never opened, never downgraded."""
    path = tmp_path / "inbox.sqlite3"
    SQLiteStore(path).close()
    newer = sqlite_module.SCHEMA_VERSION + ahead
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    with pytest.raises(StoreUnavailable, match="newer"):
        SQLiteStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == newer
    conn.close()


# -- a store that cannot record: 503, nothing acknowledged ---------------------------------------


def _make_read_only(path: Path) -> None:
    if os.geteuid() != 0:
        path.chmod(0o444)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file read-only for root")
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {result.stderr.decode().strip()}")


@pytest.fixture
def read_only_inbox(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "inbox.sqlite3"
    with SQLiteStore(path) as store:
        assert store.schema_version == sqlite_module.SCHEMA_VERSION
    _make_read_only(path)
    yield path
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_a_read_only_sqlite_file_gives_store_unavailable(read_only_inbox: Path) -> None:
    with WebhookReceiver(SECRET, store=SQLiteStore(read_only_inbox)) as webhooks:
        with pytest.raises(StoreUnavailable) as caught:
            webhooks.receive(*signed())
        assert caught.value.status_code == 503


def test_a_full_sqlite_disk_gives_store_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    with store._intake.use() as conn:  # SQLite's own limit makes it report SQLITE_FULL
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
    with WebhookReceiver(SECRET, store=store) as webhooks:
        big = "x" * 100_000
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="full"):
            webhooks.receive(*signed(text=big))
        assert time.monotonic() - started < 2.5  # refused at once, not retried as if busy
        assert store.get("message.received:msg_abc123") is None


class Holder(threading.Thread):
    """Another process's transaction, as far as SQLite can tell: a lock held a while."""

    def __init__(self, path: Path, seconds: float, begin: str = "BEGIN IMMEDIATE") -> None:
        super().__init__()
        self.path, self.seconds, self.begin = path, seconds, begin
        self.held = threading.Event()
        self.released_at = 0.0

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(self.begin)
        conn.execute("SELECT COUNT(*) FROM aerostic_webhook_records").fetchone()
        self.held.set()
        time.sleep(self.seconds)
        self.released_at = time.monotonic()
        conn.execute("COMMIT")
        conn.close()

    def __enter__(self) -> Holder:
        self.start()
        assert self.held.wait(10), "the holder never took its lock"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.join(10)


def pending(*event_ids: str) -> list[Record]:
    now = utcnow()
    return [Record(n, "message.received", b"{}", now, next_attempt_at=now) for n in event_ids]


class RollbackJournal(SQLiteStore):
    """A file where WAL is refused (some network filesystems): readers block a commit."""

    def _open(self) -> sqlite3.Connection:
        conn = super()._open()
        conn.execute("PRAGMA journal_mode=DELETE")
        return conn


@pytest.mark.parametrize("many", [False, True], ids=["add", "add_many"])
def test_a_delivery_waits_for_the_write_lock_and_is_recorded(tmp_path: Path, many: bool) -> None:
    path = tmp_path / "inbox.sqlite3"
    store = SQLiteStore(path, busy_timeout=5)
    with Holder(path, 0.3) as holder:
        recorded = store.add_many(pending("a", "b")) if many else [store.add(*pending("a"))]
        done = time.monotonic()
    assert all(recorded)
    assert done >= holder.released_at  # it waited for the lock rather than failing
    assert store.get("a") is not None
    store.close()


@pytest.mark.parametrize("many", [False, True], ids=["add", "add_many"])
def test_a_write_lock_held_past_the_busy_timeout_is_store_unavailable(
    tmp_path: Path, many: bool
) -> None:
    path = tmp_path / "inbox.sqlite3"
    store = SQLiteStore(path, busy_timeout=0.2)
    with Holder(path, 2.0):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            store.add_many(pending("a")) if many else store.add(*pending("a"))
        waited = time.monotonic() - started
    assert 0.15 <= waited < 1.5  # about busy_timeout: neither at once nor until the release
    assert store.get("a") is None
    store.close()


def test_opening_a_locked_file_gives_up_after_busy_timeout_not_twice_that(
    tmp_path: Path,
) -> None:
    # The switch to WAL is retried in short steps; SQLite's own busy handler must not wait a
    # whole busy_timeout of its own before the first retry.
    path = tmp_path / "inbox.sqlite3"
    SQLiteStore(path).close()
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")  # a file another tool left in rollback mode
    conn.close()
    with Holder(path, 2.0, begin="BEGIN EXCLUSIVE"):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            SQLiteStore(path, busy_timeout=0.3)
        waited = time.monotonic() - started
    assert 0.25 <= waited < 0.5


def test_without_wal_sqlite_itself_waits_for_readers(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite3"
    store = RollbackJournal(path, busy_timeout=5)
    # A refused autocommit INSERT drops its locks, so retried it could starve behind readers
    # that keep coming; SQLite's busy handler keeps them and waits.
    assert store._intake.retry_busy is None
    with Holder(path, 0.3, begin="BEGIN") as reader:  # a reader's shared lock
        assert store.add(*pending("a")) is True
        assert store.add_many(pending("b", "c")) == [True, True]
        assert time.monotonic() >= reader.released_at
    assert store.counts()[Status.PENDING] == 3
    store.close()


def test_only_a_busy_database_is_retried() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("no such table: nowhere")  # as Python 3.10 raises it

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        sqlite_module._when_free(broken, timeout=5)
    assert calls == [1]
    conn = sqlite3.connect(":memory:")
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # SQLite's own code
        sqlite_module._when_free(lambda: conn.execute("SELECT * FROM nowhere"), timeout=5)
    assert time.monotonic() - started < 1.0
    conn.close()


def copy_the_seed(path: Path, many: int) -> None:
    """``many`` copies of the record ``seed`` in the SQLite inbox at ``path``, in one go."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        columns = ", ".join(
            name for (_, name, *_) in conn.execute(f"PRAGMA table_info({sqlite_module._TABLE})")
        )
        copied = columns.replace("event_id", "'old' || n", 1)
        conn.execute(
            f"WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ?) "
            f"INSERT INTO {sqlite_module._TABLE} ({columns}) SELECT {copied} "
            f"FROM seq, {sqlite_module._TABLE} WHERE event_id = 'seed'",
            (many,),
        )


def deliveries_while(
    operation: Callable[[], int], web_side: SQLiteStore
) -> tuple[int, list[float]]:
    """Run ``operation`` (a long write on another connection) on a thread and deliver to
    ``web_side`` every 10 ms meanwhile: its result, and how long each delivery waited. A
    delivery that waited out its busy timeout fails the test (StoreUnavailable)."""
    result: list[int] = []
    running = threading.Thread(target=lambda: result.append(operation()))
    running.start()
    waits = []
    try:
        n = 0
        while running.is_alive():
            started = time.monotonic()
            assert web_side.add(*pending(f"new{n}")) is True
            waits.append(time.monotonic() - started)
            n += 1
            time.sleep(0.01)
    finally:
        running.join()
    assert len(result) == 1, "the operation raised"
    return result[0], waits


def test_a_large_sqlite_requeue_failed_does_not_hold_deliveries_past_their_busy_timeout(
    tmp_path: Path,
) -> None:
    # The dead letters of a handler broken for a day or two, requeued at once (`inbox retry
    # --failed`): one UPDATE of 150,000 held the write lock for about 0.5 s, and a delivery
    # on another connection with a shorter busy timeout was refused (503) meanwhile.
    path = tmp_path / "inbox.sqlite3"
    worker_side = SQLiteStore(path)
    seed = Record("seed", "message.received", b"{}", utcnow(), status=Status.FAILED, attempts=6)
    worker_side.add(seed.replace(last_error="ValueError: CRM is down"))
    many = 150_000
    copy_the_seed(path, many)
    web_side = SQLiteStore(path, busy_timeout=0.1)
    requeued, waits = deliveries_while(worker_side.requeue_failed, web_side)
    assert requeued == many + 1
    assert waits  # some were recorded while the requeue ran
    assert web_side.counts() == {
        Status.PENDING: many + 1 + len(waits),
        Status.PROCESSING: 0,
        Status.DONE: 0,
        Status.FAILED: 0,
    }
    one = worker_side.get(f"old{many}")
    assert one is not None and one.status is Status.PENDING
    assert (one.attempts, one.last_error) == (0, "ValueError: CRM is down")
    worker_side.close()
    web_side.close()


def test_a_large_sqlite_purge_does_not_hold_deliveries_past_their_busy_timeout(
    tmp_path: Path,
) -> None:
    # A week of records at a busy receiver, past retention at once (the worker's first purge
    # after a pause, or `inbox purge` by hand): one DELETE of them all held the write lock
    # for seconds, and a delivery on another connection waited out its busy timeout (503).
    path = tmp_path / "inbox.sqlite3"
    worker_side = SQLiteStore(path)
    old = utcnow() - timedelta(days=30)
    worker_side.add(Record("seed", "message.received", b"{}", old, status=Status.DONE))
    many = 150_000
    copy_the_seed(path, many)
    web_side = SQLiteStore(path, busy_timeout=0.1)
    purged, waits = deliveries_while(
        lambda: worker_side.purge(older_than=utcnow() - timedelta(days=7)), web_side
    )
    assert purged == many + 1
    assert waits  # some were recorded while the purge ran
    assert web_side.counts()[Status.PENDING] == len(waits)
    worker_side.close()
    web_side.close()


def test_an_unreachable_redis_gives_store_unavailable_quickly(redis_url: str) -> None:
    from aerostic_webhooks.stores.redis import RedisStore

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    with WebhookReceiver(SECRET, store=store) as webhooks:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            webhooks.receive(*signed())
        assert time.monotonic() - started < 4.5  # inside the sender's 5 s limit


def test_a_redis_that_stops_gives_store_unavailable(tmp_path: Path, redis_url: str) -> None:
    from aerostic_webhooks.stores.redis import RedisStore

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed, so no private Redis can be started and stopped")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=1.0)
        deadline = time.monotonic() + 10
        while True:
            try:
                store.client.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with WebhookReceiver(SECRET, store=store) as webhooks:
            assert webhooks.receive(*signed(id="before")).duplicate is False
            process.send_signal(signal.SIGTERM)
            process.wait(10)
            with pytest.raises(StoreUnavailable):
                webhooks.receive(*signed(id="after"))
    finally:
        process.kill()
        process.wait()


# -- every store, end to end ----------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "inbox.sqlite3")
    from aerostic_webhooks.stores.redis import RedisStore

    url, prefix = (request.getfixturevalue(name) for name in ("redis_url", "redis_prefix"))
    return RedisStore(url, prefix=prefix)


def test_end_to_end_on_every_store(any_store: Store) -> None:
    seen: list[str] = []
    with WebhookReceiver(SECRET, store=any_store, retry_delays=(0,)) as webhooks:

        @webhooks.on("*")
        def handler(event: Event) -> None:
            seen.append(event.data.id)
            if event.data.id == "bad":
                raise RuntimeError("always fails")

        assert webhooks.receive(*signed(id="good")).duplicate is False
        assert webhooks.receive(*signed(id="good")).duplicate is True
        webhooks.receive(*signed(id="bad"))
        assert webhooks.drain(10)
        assert sorted(seen) == ["bad", "bad", "good"]
        counts = any_store.counts()
        assert counts[Status.DONE] == 1
        assert counts[Status.FAILED] == 1
        [failed] = any_store.list(status=Status.FAILED)
        assert failed.last_error == "RuntimeError: always fails"
        assert webhooks.retry(failed.event_id)
        assert webhooks.drain(10)
        assert seen.count("bad") == 4


# -- several processes ---------------------------------------------------------------------------


def _store_spec(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:{tmp_path / 'shared.sqlite3'}"
    url, prefix = (request.getfixturevalue(name) for name in ("redis_url", "redis_prefix"))
    return f"redis:{url}|{prefix}"


def _open(spec: str) -> Store:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        return SQLiteStore(where)
    from aerostic_webhooks.stores.redis import RedisStore

    url, _, prefix = where.partition("|")
    return RedisStore(url, prefix=prefix)


def _runs(counter: Path) -> list[tuple[int, str]]:
    if not counter.exists():
        return []
    lines = counter.read_text().splitlines()
    return [(int(pid), event_id) for pid, event_id in (line.split() for line in lines)]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_four_processes_of_eight_threads_run_each_event_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    spec = _store_spec(kind, tmp_path, request)
    counter = tmp_path / "runs.txt"
    command = [sys.executable, str(DELIVERER), spec, str(counter), "deliver"]
    command += ["--events", "200", "--threads", "8", "--copies", "5"]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()[-2000:]
    acks = [line for stdout, _ in outputs for line in stdout.decode().splitlines()]
    assert len(acks) == 4 * 8 * 200 * 5
    runs = collections.Counter(event_id for _, event_id in _runs(counter))
    assert runs == {f"msg_{n}": 1 for n in range(200)}
    store = _open(spec)
    assert store.counts()[Status.DONE] == 200
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_sigkill_mid_run_loses_nothing_and_repeats_nothing_done(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    spec = _store_spec(kind, tmp_path, request)
    counter = tmp_path / "runs.txt"
    command = [sys.executable, str(DELIVERER), spec, str(counter), "deliver"]
    command += ["--events", "300", "--threads", "1", "--copies", "1", "--lease", "1"]
    command += ["--handler-seconds", "0.02"]
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert victim.stdout is not None
    acked: list[str] = []
    while len(acked) < 150:
        line = victim.stdout.readline()
        assert line, victim.stderr.read().decode() if victim.stderr else "deliverer ended early"
        acked.append(line.decode().strip())
    # Kill while the worker holds records, as the store shows them. (Killed before its
    # threads started, or, on a loaded machine, once it had run everything, it would leave
    # nothing in flight: both happened when the kill waited for a first handler run.)
    watcher = _open(spec)
    deadline = time.monotonic() + 30
    while not watcher.counts()[Status.PROCESSING] and time.monotonic() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    watcher.close()
    victim.wait(10)
    acked += [line.decode().strip() for line in victim.stdout.read().splitlines()]
    victim.stdout.close()
    assert victim.stderr is not None
    victim.stderr.close()

    store = _open(spec)
    done_before = {r.event_id for r in store.list(status=Status.DONE, limit=1000)}
    left_processing = {r.event_id for r in store.list(status=Status.PROCESSING, limit=1000)}
    store.close()
    assert left_processing, "the kill should have left work in flight"

    recovery = [sys.executable, str(DELIVERER), spec, str(counter), "recover", "--lease", "1"]
    subprocess.run(recovery, check=True, timeout=120, capture_output=True)

    runs = _runs(counter)
    processed = collections.Counter(event_id for _, event_id in runs)
    for event_id in acked:  # every acknowledged event was processed
        assert processed[event_id.removeprefix("message.received:")] >= 1, event_id
    victim_pid = victim.pid
    for event_id in done_before:  # nothing done before the kill ran again after it
        short = event_id.removeprefix("message.received:")
        assert [pid for pid, e in runs if e == short] == [victim_pid], event_id
    store = _open(spec)
    for event_id in left_processing:  # taken up again once the dead worker's lease ended
        record = store.get(event_id)
        assert record is not None
        assert record.status is Status.DONE
        assert record.attempts >= 2
    counts = store.counts()
    assert counts[Status.PENDING] == counts[Status.PROCESSING] == 0
    store.close()


def _fork(body: Callable[[], None]) -> int:
    """Fork and run ``body`` in the child, which exits 0 if it returns, 1 if it raises."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def _exit_code(pid: int, timeout: float = 20.0) -> int:
    """A forked child's exit code, or -1 if it had not finished after ``timeout`` seconds
    (then it is killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


def _in_child(body: Callable[[], None], timeout: float = 20.0) -> int:
    """Run ``body`` in a forked child; its exit code as ``_exit_code`` gives it."""
    return _exit_code(_fork(body), timeout)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_processes_creating_the_same_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    # gunicorn -w N without --preload: each worker builds the app, so N processes create
    # one new SQLite file at the same moment. Switching it to WAL collided: SQLite refuses
    # that lock at once, busy timeout or not, and a worker failed to boot (in 16 of 20
    # tries of this test before the fix).
    for attempt in range(10):
        path = tmp_path / f"inbox{attempt}.sqlite3"
        go = mmap.mmap(-1, 1)  # shared with the children: they spin on it, then start together

        def worker(go: mmap.mmap = go, path: Path = path) -> None:
            while go[0] == 0:
                pass
            SQLiteStore(path).close()

        pids = [_fork(worker) for _ in range(2)]
        time.sleep(0.02)
        go[0] = 1
        assert [_exit_code(pid) for pid in pids] == [0, 0], f"attempt {attempt}"
        with SQLiteStore(path) as store:
            assert store.schema_version == sqlite_module.SCHEMA_VERSION


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
# Python 3.12+ warns about forking a process with threads: that is the case under test.
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_forked_child_records_and_processes_although_the_parent_was_busy(
    tmp_path: Path,
) -> None:
    # A gunicorn master with --preload may fork while its own worker threads are inside the
    # store: the child must not inherit a lock that nobody will ever release.
    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    webhooks = WebhookReceiver(SECRET, store=store)
    webhooks.on("*")(lambda event: None)
    webhooks.start()
    held: list[Any] = [store._intake._lock, store._work._lock, webhooks._worker._lock]
    for lock in held:
        lock.acquire()
    try:

        def child() -> None:
            body = sample_body("message.received", id="from-the-child")
            receipt = webhooks.receive(body, {"X-Aerostic-Signature": sign(body, SECRET)})
            assert webhooks.drain(10)
            kept = store.get(receipt.event_id)
            assert kept is not None and kept.status is Status.DONE
            webhooks.close()

        assert _in_child(child) == 0
    finally:
        for lock in held:
            lock.release()
        webhooks.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_forked_child_records_although_a_thread_of_the_parent_was_in_a_transaction(
    tmp_path: Path,
) -> None:
    """A ``gunicorn --preload`` master whose worker threads write (claims, checkpoints) as
    it forks: a child forked mid-transaction would inherit SQLite's in-process record of
    the parent's locks and find the file locked for good. The fork waits for the thread."""
    store = SQLiteStore(tmp_path / "inbox.sqlite3", busy_timeout=0.5)
    inside = threading.Event()

    def a_request_in_add_many() -> None:
        with store._intake.use(write=True):
            inside.set()
            time.sleep(0.3)

    def child() -> None:
        assert store.add(Record("from-the-child", "message.sent", b"{}", utcnow()))
        store.close()

    writer = threading.Thread(target=a_request_in_add_many)
    writer.start()
    try:
        assert inside.wait(10)
        assert _exit_code(_fork(child)) == 0
        assert store.get("from-the-child") is not None
    finally:
        writer.join(10)
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_that_only_closes_the_store_does_not_wait_for_the_parents_locks(
    tmp_path: Path,
) -> None:
    # An "external" web process forked while a thread of the parent was inside the store,
    # shut down before it recorded anything.
    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    held = [store._intake._lock, store._work._lock]
    for lock in held:
        lock.acquire()
    try:
        assert _in_child(store.close, timeout=5) == 0
    finally:
        for lock in held:
            lock.release()
        store.close()


def test_a_closed_store_reopens_when_used_again(tmp_path: Path) -> None:
    """A second application lifespan (one TestClient per test) uses the store it closed."""
    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    assert store.add(Record("first", "message.received", b"{}", utcnow()))
    store.close()
    assert store.add(Record("second", "message.received", b"{}", utcnow()))
    assert [r.event_id for r in store.claim("w", limit=5, lease=30)] == ["first", "second"]
    store.close()
    store.close()  # twice is fine


@pytest.mark.parametrize("path", ["", ":memory:"])
def test_sqlite_store_refuses_an_in_memory_database(path: str) -> None:
    with pytest.raises(ValueError, match="MemoryStore"):
        SQLiteStore(path)
