"""The Store contract, held against every store that ships in the core."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest

from aerostic_webhooks import MemoryStore, SQLiteStore, StoreUnavailable
from aerostic_webhooks.stores import Record, Status, Store
from aerostic_webhooks.stores.base import LEASE_LAPSED, utcnow
from aerostic_webhooks.worker import error_text

try:
    from .django_settings import POSTGRES_AVAILABLE
except ImportError:  # no Django here
    POSTGRES_AVAILABLE = False


class ShippedStore(Store, Protocol):
    """A store that ships here: ``add_many`` and ``unclaim``, optional in ``Store``, are there
    in all of them."""

    def add_many(self, records: Sequence[Record]) -> list[bool]: ...

    def unclaim(self, owner: str, event_ids: Sequence[str]) -> int: ...


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        "redis",
        # The Django ORM store on the test settings' SQLite database, migrated and emptied after.
        pytest.param("django", marks=pytest.mark.django_db(transaction=True)),
        # And on PostgreSQL, where the test settings found one.
        pytest.param(
            "django-postgres",
            marks=[
                pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="PostgreSQL is not available"),
                pytest.mark.django_db(transaction=True, databases=["default", "postgres"]),
            ],
        ),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ShippedStore]:
    made: ShippedStore
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "s.db")
    elif request.param.startswith("django"):
        from aerostic_webhooks.django.store import DjangoStore

        made = DjangoStore(using="postgres" if request.param == "django-postgres" else "default")
    else:
        from aerostic_webhooks.stores.redis import RedisStore

        url, prefix = (request.getfixturevalue(name) for name in ("redis_url", "redis_prefix"))
        made = RedisStore(url, prefix=prefix)
    yield made
    made.close()


def record(event_id: str, *, event_type: str = "message.sent", **fields: object) -> Record:
    values: dict[str, object] = {"received_at": utcnow(), "body": b'{"x": 1}'} | fields
    return Record(event_id=event_id, event_type=event_type, **values)  # type: ignore[arg-type]


def test_store_satisfies_the_protocol(store: Store) -> None:
    assert isinstance(store, Store)


def test_add_is_add_if_absent(store: Store) -> None:
    assert store.add(record("a")) is True
    assert store.add(record("a", body=b"other")) is False
    kept = store.get("a")
    assert kept is not None
    assert kept.body == b'{"x": 1}'
    assert kept.status is Status.PENDING
    assert kept.attempts == 0
    assert store.get("missing") is None


def test_add_many_is_add_for_each_in_order(store: ShippedStore) -> None:
    store.add(record("kept"))
    add_many = store.add_many  # optional in Store, but every store here has it
    fresh = [record("a"), record("kept", body=b"other"), record("b"), record("a", body=b"again")]
    assert add_many(fresh) == [True, False, True, False]
    assert add_many([]) == []
    assert {r.event_id: r.body for r in store.list()} == {
        "kept": b'{"x": 1}',
        "a": b'{"x": 1}',
        "b": b'{"x": 1}',
    }
    assert store.counts()[Status.PENDING] == 3


def test_record_round_trips_every_field(store: Store) -> None:
    received = utcnow().replace(microsecond=123000)
    store.add(record("a", event_type="contact.created", body=b"\x00\xff raw", received_at=received))
    kept = store.get("a")
    assert kept is not None
    assert kept.event_type == "contact.created"
    assert kept.body == b"\x00\xff raw"
    assert abs((kept.received_at - received).total_seconds()) < 0.001
    assert kept.received_at.tzinfo is not None


def test_claim_takes_due_records_oldest_due_first_up_to_the_limit(store: Store) -> None:
    now = utcnow()
    store.add(record("later", received_at=now, next_attempt_at=now + timedelta(hours=1)))
    store.add(record("second", received_at=now - timedelta(seconds=1)))
    store.add(record("first", received_at=now - timedelta(seconds=2)))
    store.add(record("third", received_at=now))
    claimed = store.claim("w1", limit=2, lease=30)
    assert [r.event_id for r in claimed] == ["first", "second"]
    assert all(r.status is Status.PROCESSING and r.attempts == 1 for r in claimed)
    assert all(r.lease_owner == "w1" for r in claimed)
    assert [r.event_id for r in store.claim("w2", limit=10, lease=30)] == ["third"]
    assert store.claim("w3", limit=10, lease=30) == []


def test_expired_lease_is_claimable_again_and_counts_an_attempt(store: Store) -> None:
    store.add(record("a"))
    store.claim("dead", limit=1, lease=0.05)
    assert store.claim("w2", limit=1, lease=30) == []
    time.sleep(0.06)
    [again] = store.claim("w2", limit=1, lease=30)
    assert again.attempts == 2
    assert again.lease_owner == "w2"
    assert store.complete("a", "dead") is False  # the old owner lost it
    assert store.complete("a", "w2") is True


def test_renew_extends_only_the_owners_leases(store: Store) -> None:
    store.add(record("a"))
    store.claim("w1", limit=1, lease=0.1)
    store.renew("w1", ["a"], lease=30)
    renewed = store.get("a")  # what the inbox and the admin show
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > utcnow() + timedelta(seconds=20)
    store.renew("intruder", ["a"], lease=0.001)
    time.sleep(0.15)
    assert store.claim("w2", limit=1, lease=30) == []


def test_outcomes_need_the_owner(store: Store) -> None:
    store.add(record("a"))
    store.claim("w1", limit=1, lease=30)
    at = utcnow() + timedelta(minutes=5)
    assert store.reschedule("a", "w2", at=at, error="x") is False
    assert store.fail("a", "w2", error="x") is False
    assert store.release("a", "w2") is False
    assert store.reschedule("a", "w1", at=at, error="Boom: once") is True
    kept = store.get("a")
    assert kept is not None
    assert kept.status is Status.PENDING
    assert kept.last_error == "Boom: once"
    assert kept.lease_owner is None
    assert kept.next_attempt_at is not None
    assert abs((kept.next_attempt_at - at).total_seconds()) < 0.001
    assert store.claim("w1", limit=1, lease=30) == []  # not due for 5 minutes
    assert store.next_due() is not None


def test_fail_keeps_the_error_and_requeue_brings_it_back(store: Store) -> None:
    store.add(record("a"))
    store.add(record("b"))
    for claimed in store.claim("w", limit=2, lease=30):
        assert store.fail(claimed.event_id, "w", error="Dead: letter")
    failed = store.list(status=Status.FAILED)
    assert {r.event_id for r in failed} == {"a", "b"}
    assert all(r.last_error == "Dead: letter" for r in failed)
    assert store.next_due() is None
    assert store.requeue("a") is True
    assert store.requeue_failed() == 1
    again = store.claim("w", limit=5, lease=30)
    assert {r.event_id for r in again} == {"a", "b"}
    assert all(r.attempts == 1 for r in again)  # a requeue starts the attempts afresh


def test_every_store_keeps_any_error_text_a_worker_makes(store: Store) -> None:
    """A handler's message may hold a lone surrogate (``surrogateescape`` text) or a NUL,
    which SQLite, Redis or PostgreSQL would refuse: the record's failure could then never
    be recorded."""
    text = error_text(ValueError("caf\udce9 \x00 ok"))
    assert text == "ValueError: caf\\udce9 \\x00 ok"
    store.add(record("a"))
    store.add(record("b"))
    first, second = store.claim("w", limit=2, lease=30)
    assert store.reschedule(first.event_id, "w", at=utcnow(), error=text)
    assert store.fail(second.event_id, "w", error=text)
    for event_id in ("a", "b"):
        kept = store.get(event_id)
        assert kept is not None and kept.last_error == text


def test_requeue_failed_leaves_done_and_scheduled_records_alone(store: Store) -> None:
    for name in ("done", "failed", "scheduled"):
        store.add(record(name))
    later = utcnow() + timedelta(hours=1)
    for claimed in store.claim("w", limit=3, lease=30):
        if claimed.event_id == "done":
            store.complete("done", "w")
        elif claimed.event_id == "failed":
            store.fail("failed", "w", error="gave up")
        else:
            store.reschedule("scheduled", "w", at=later, error="later")
    assert store.requeue_failed() == 1
    statuses = {name: getattr(store.get(name), "status", None) for name in ("done", "scheduled")}
    assert statuses == {"done": Status.DONE, "scheduled": Status.PENDING}
    assert [r.event_id for r in store.claim("w", limit=5, lease=30)] == ["failed"]


def test_requeue_refuses_a_record_being_processed(store: Store) -> None:
    store.add(record("a"))
    store.claim("w", limit=1, lease=30)
    assert store.requeue("a") is False
    assert store.requeue("missing") is False


def test_a_record_done_on_a_retry_keeps_the_error_of_the_attempt_before(store: Store) -> None:
    store.add(record("a"))
    store.claim("w", limit=1, lease=30)
    store.reschedule("a", "w", at=utcnow(), error="Boom: once")
    assert [r.event_id for r in store.claim("w", limit=1, lease=30)] == ["a"]
    assert store.complete_many("w", ["a"]) == 1
    kept = store.get("a")
    assert kept is not None and kept.status is Status.DONE
    assert kept.last_error == "Boom: once"
    assert kept.attempts == 2


def test_complete_and_requeue_a_done_record(store: Store) -> None:
    store.add(record("a"))
    store.claim("w", limit=1, lease=30)
    assert store.complete("a", "w") is True
    assert store.complete("a", "w") is False
    kept = store.get("a")
    assert kept is not None and kept.status is Status.DONE
    assert store.requeue("a") is True
    assert [r.event_id for r in store.claim("w", limit=1, lease=30)] == ["a"]


def test_complete_many_marks_only_what_the_owner_holds(store: Store) -> None:
    for name in "abcd":
        store.add(record(name))
    assert {r.event_id for r in store.claim("w", limit=3, lease=30)} == {"a", "b", "c"}
    assert store.complete_many("w", ["a", "b", "d", "missing"]) == 2
    assert store.complete_many("other", ["c"]) == 0
    assert store.complete_many("w", []) == 0
    statuses = {name: getattr(store.get(name), "status", None) for name in "abcd"}
    assert statuses == {
        "a": Status.DONE,
        "b": Status.DONE,
        "c": Status.PROCESSING,
        "d": Status.PENDING,
    }
    done = store.get("a")
    assert done is not None and done.lease_owner is None and done.attempts == 1
    assert store.next_due() is not None  # c's lease and d; a and b are never due again
    assert store.complete_many("w", ["a"]) == 0


def test_release_forgets_the_record(store: Store) -> None:
    store.add(record("a"))
    store.claim("w", limit=1, lease=30)
    assert store.release("a", "w") is True
    assert store.get("a") is None
    assert store.add(record("a")) is True


def test_unclaim_hands_a_claim_back_unrun(store: ShippedStore) -> None:
    """A worker that stops with records claimed but not started gives them back: due now,
    with the attempts they had before the claim, and no lease. Left to their leases, they
    would come back with an attempt charged and "lease expired", or dead-lettered unrun."""
    store.add(record("a"))
    store.add(record("b"))
    store.add(record("other"))
    store.claim("w", limit=2, lease=30)  # a and b
    assert store.claim("x", limit=1, lease=30)[0].event_id == "other"
    assert store.unclaim("w", ["a", "b", "other", "missing"]) == 2
    assert store.unclaim("w", []) == 0
    assert store.unclaim("w", ["a"]) == 0  # no longer held
    for event_id in ("a", "b"):
        kept = store.get(event_id)
        assert kept is not None
        assert kept.status is Status.PENDING
        assert kept.attempts == 0
        assert kept.last_error is None
        assert kept.lease_owner is None and kept.lease_expires_at is None
        assert kept.next_attempt_at is not None and kept.next_attempt_at <= utcnow()
    other = store.get("other")
    assert other is not None and other.status is Status.PROCESSING and other.lease_owner == "x"
    assert store.counts() == dict.fromkeys(Status, 0) | {Status.PENDING: 2, Status.PROCESSING: 1}
    assert [r.event_id for r in store.list(status=Status.PENDING)] == ["b", "a"]
    next_due = store.next_due()
    assert next_due is not None and next_due <= utcnow()
    again = store.claim("y", limit=5, lease=30)
    assert sorted(r.event_id for r in again) == ["a", "b"]
    assert all(r.attempts == 1 and r.last_error is None for r in again)


def test_unclaim_keeps_the_attempts_and_error_of_the_runs_before(store: ShippedStore) -> None:
    store.add(record("a"))
    store.claim("w", limit=1, lease=30)
    store.reschedule("a", "w", at=utcnow(), error="Boom: once")
    store.claim("w", limit=1, lease=0.05)
    time.sleep(0.06)
    [lapsed] = store.claim("w2", limit=1, lease=30)  # taken back: attempt 3, "lease expired"
    assert lapsed.attempts == 3
    assert store.unclaim("w2", ["a"]) == 1
    kept = store.get("a")
    assert kept is not None and kept.status is Status.PENDING
    assert kept.attempts == 2  # the lapsed run counts; the unrun claim does not
    assert kept.last_error == LEASE_LAPSED
    assert store.unclaim("w", ["a"]) == 0


def test_unclaim_never_takes_a_record_below_zero_attempts(store: ShippedStore) -> None:
    """A record added as processing (as inline mode adds it) may have no attempt charged to
    give back: it is handed back with none, not with -1."""
    store.add(
        record(
            "a",
            status=Status.PROCESSING,
            lease_owner="inline",
            lease_expires_at=utcnow() + timedelta(seconds=30),
        )
    )
    assert store.unclaim("inline", ["a"]) == 1
    kept = store.get("a")
    assert kept is not None and (kept.status, kept.attempts) == (Status.PENDING, 0)
    [again] = store.claim("w", limit=1, lease=30)
    assert again.attempts == 1


def test_a_released_record_leaves_no_trace_in_lists_or_counts(store: Store) -> None:
    now = utcnow()
    store.add(record("kept", received_at=now - timedelta(seconds=1)))
    store.add(record("released", received_at=now))
    assert store.take("released", "w", lease=30) is not None
    assert store.release("released", "w") is True
    assert store.counts() == dict.fromkeys(Status, 0) | {Status.PENDING: 1}
    assert [r.event_id for r in store.list(limit=1)] == ["kept"]
    assert store.list(status=Status.PROCESSING) == []


def test_take_claims_one_record_only_when_claimable(store: Store) -> None:
    store.add(record("a"))
    taken = store.take("a", "w", lease=30)
    assert taken is not None and taken.status is Status.PROCESSING
    assert store.take("a", "other", lease=30) is None
    assert store.take("missing", "w", lease=30) is None


def test_list_filters_and_orders_newest_first(store: Store) -> None:
    now = utcnow()
    store.add(record("old", received_at=now - timedelta(minutes=2)))
    store.add(record("mid", event_type="contact.created", received_at=now - timedelta(minutes=1)))
    store.add(record("new", received_at=now))
    assert [r.event_id for r in store.list()] == ["new", "mid", "old"]
    assert [r.event_id for r in store.list(event_type="message.sent")] == ["new", "old"]
    assert [r.event_id for r in store.list(limit=1, offset=1)] == ["mid"]
    assert store.list(limit=0) == []
    store.claim("w", limit=1, lease=30)  # takes "old"
    assert [r.event_id for r in store.list(status=Status.PROCESSING)] == ["old"]


def test_counts_cover_every_status(store: Store) -> None:
    for name in "abc":
        store.add(record(name))
    [claimed] = store.claim("w", limit=1, lease=30)
    store.complete(claimed.event_id, "w")
    assert store.counts() == {
        Status.PENDING: 2,
        Status.PROCESSING: 0,
        Status.DONE: 1,
        Status.FAILED: 0,
    }


def test_list_and_counts_by_each_status(store: Store) -> None:
    now = utcnow()
    for n, name in enumerate(["p1", "r1", "d1", "f1", "p2", "r2", "d2", "f2"]):
        store.add(record(name, received_at=now - timedelta(minutes=10 - n)))
    claimed = {r.event_id for r in store.claim("w", limit=8, lease=30)}
    assert claimed == {"p1", "r1", "d1", "f1", "p2", "r2", "d2", "f2"}
    for name in ("p1", "p2"):
        store.reschedule(name, "w", at=now + timedelta(minutes=5), error="later")
    store.complete_many("w", ["d1", "d2"])
    for name in ("f1", "f2"):
        store.fail(name, "w", error="gave up")
    expected = {Status.PENDING: "p", Status.PROCESSING: "r", Status.DONE: "d", Status.FAILED: "f"}
    for status, letter in expected.items():
        assert [r.event_id for r in store.list(status=status)] == [f"{letter}2", f"{letter}1"]
        assert all(r.status is status for r in store.list(status=status))
    assert [r.event_id for r in store.list(status=Status.FAILED, limit=1, offset=1)] == ["f1"]
    assert store.counts() == dict.fromkeys(Status, 2)


def test_list_takes_a_status_by_its_name_in_every_store(store: Store) -> None:
    """``Status`` is a ``str`` enum: "failed" (from a query string, a form) is that status.
    The SQL and Redis stores filtered by it; the memory store compared by identity and
    listed nothing."""
    store.add(record("p"))
    store.add(record("f", status=Status.FAILED))
    for name, expected in (("pending", ["p"]), ("failed", ["f"]), ("done", [])):
        listed = store.list(status=name)  # type: ignore[arg-type]
        assert [r.event_id for r in listed] == expected


def test_records_added_in_any_state_are_claimed_and_counted_by_that_state(store: Store) -> None:
    """Settled records are never claimed, even with a lease left on them; a processing one
    with no lease is no worker's, and is taken up at once."""
    later = utcnow() + timedelta(minutes=5)
    store.add(record("done", status=Status.DONE, lease_owner="w", lease_expires_at=later))
    store.add(record("failed", status=Status.FAILED, lease_owner="w", lease_expires_at=later))
    store.add(record("orphan", status=Status.PROCESSING, attempts=1))
    store.add(record("held", status=Status.PROCESSING, lease_owner="w", lease_expires_at=later))
    assert store.counts() == {
        Status.PENDING: 0,
        Status.PROCESSING: 2,
        Status.DONE: 1,
        Status.FAILED: 1,
    }
    assert [r.event_id for r in store.list(status=Status.PROCESSING)] == ["held", "orphan"]
    assert [r.event_id for r in store.claim("x", limit=10, lease=30)] == ["orphan"]


def test_a_record_added_with_an_error_keeps_it(store: Store) -> None:
    """What a migration or an import of failed records from elsewhere relies on."""
    store.add(record("imported", status=Status.FAILED, attempts=6, last_error="CRM said no"))
    kept = store.get("imported")
    assert kept is not None
    assert (kept.status, kept.attempts, kept.last_error) == (Status.FAILED, 6, "CRM said no")


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_redis_store_warns_once_when_its_server_may_evict_records(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    import redis

    from aerostic_webhooks.stores.redis import RedisStore

    admin = redis.Redis.from_url(redis_url)
    before = admin.config_get("maxmemory-policy")["maxmemory-policy"]
    assert before is not None  # the server has the setting; restored below
    store = RedisStore(redis_url, prefix=redis_prefix)
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        store.add(record("a"))
        assert "maxmemory-policy" not in caplog.text
        admin.config_set("maxmemory-policy", policy)
        fresh = RedisStore(redis_url, prefix=redis_prefix)
        fresh.add(record("b"))
        fresh.add_many([record("c")])
        warnings = [r for r in caplog.records if f"maxmemory-policy is {policy}" in r.message]
        assert len(warnings) == 1 and warnings[0].levelname == "ERROR"
        fresh.close()
    finally:
        admin.config_set("maxmemory-policy", before)
        store.close()
        admin.close()


def test_a_record_taken_back_from_a_lapsed_lease_says_so(store: Store) -> None:
    store.add(record("retried", last_error="ValueError: CRM is down"))
    store.add(record("lapsed"))
    claimed = {r.event_id: r for r in store.claim("w1", limit=5, lease=0.05)}
    assert claimed["retried"].last_error == "ValueError: CRM is down"  # a pending one keeps it
    assert claimed["lapsed"].last_error is None
    store.complete("retried", "w1")
    time.sleep(0.1)  # w1 "dies": its lease on "lapsed" runs out
    [again] = store.claim("w2", limit=5, lease=30)
    assert (again.event_id, again.attempts, again.last_error) == ("lapsed", 2, LEASE_LAPSED)
    kept = store.get("lapsed")
    assert kept is not None and kept.last_error == LEASE_LAPSED


def test_a_redis_claim_or_take_is_one_round_trip(redis_url: str, redis_prefix: str) -> None:
    """The records come back in the claim script's reply: read in a round trip of their own,
    a connection lost between the two left them leased and unrun, to come back with an
    attempt charged ("lease expired"), or dead-lettered unrun on their last attempt."""
    import redis

    from aerostic_webhooks.stores.redis import RedisStore

    trips: list[int] = []

    class Counting(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            trips.append(1)
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    pool = redis.ConnectionPool.from_url(redis_url, connection_class=Counting)
    store = RedisStore(client=redis.Redis(connection_pool=pool), prefix=redis_prefix)
    try:
        received = (utcnow() - timedelta(seconds=2)).replace(microsecond=250000)
        store.add(record("a", body=b"\x00\xff raw", received_at=received))
        store.add(record("b", event_type="contact.created", last_error="Boom: once"))
        store.add(record("c"))
        store.claim("warm", limit=0, lease=30)  # the scripts are loaded on the server
        store.take("missing", "warm", lease=30)
        del trips[:]
        claimed = store.claim("w", limit=2, lease=30)
        assert len(trips) == 1
        assert claimed == [store.get("a"), store.get("b")]
        first = claimed[0]
        assert (first.body, first.received_at, first.status) == (
            b"\x00\xff raw",
            received,
            Status.PROCESSING,
        )
        assert (claimed[1].event_type, claimed[1].last_error) == ("contact.created", "Boom: once")
        del trips[:]
        taken = store.take("c", "w", lease=30)
        assert len(trips) == 1
        assert taken is not None and taken == store.get("c")
        assert taken.lease_owner == "w" and taken.attempts == 1
        assert store.take("c", "w", lease=30) is None
    finally:
        store.close()


@contextmanager
def silent_redis_url() -> Iterator[str]:
    """The URL of a server that accepts connections and never answers (a hung Redis)."""
    pytest.importorskip("redis", reason="the redis package is not installed")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        yield f"redis://127.0.0.1:{silent.getsockname()[1]}/0"


def test_a_hung_redis_refuses_a_delivery_within_one_timeout() -> None:
    """A server that accepts connections and never answers: 503 after one timeout, not
    after the add's and the eviction check's one after the other."""
    with silent_redis_url() as url:
        from aerostic_webhooks.stores.redis import RedisStore

        store = RedisStore(url, timeout=0.3)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.add(record("a"))
            assert time.monotonic() - started < 0.55
        with pytest.raises(StoreUnavailable):  # the asyncio adapters' batch: a 503 too
            store.add_many([record("b"), record("c")])
        store.close()


def test_a_redis_store_made_from_a_url_gives_up_after_two_seconds() -> None:
    """The README's default timeout: a hung server costs a delivery 2 s, then a 503."""
    with silent_redis_url() as url:
        from aerostic_webhooks.stores.redis import RedisStore

        store = RedisStore(url)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.add(record("a"))
        assert 1.9 <= time.monotonic() - started < 3.5
        store.close()


def test_requeue_failed_on_redis_takes_a_large_backlog_in_short_steps(
    redis_url: str, redis_prefix: str
) -> None:
    """The dead letters of a handler broken for a day, requeued at once: one script for them
    all blocked Redis past the client's timeout (deliveries meanwhile got 503s), and the call
    raised TimeoutError although the script went on to requeue every one."""
    from aerostic_webhooks.stores.redis import RedisStore

    many = 30_000
    seeding = RedisStore(redis_url, prefix=redis_prefix)
    for start in range(0, many, 5000):
        failed = [record(f"f{n}", status=Status.FAILED) for n in range(start, start + 5000)]
        assert all(seeding.add_many(failed))
    seeding.add(record("done", status=Status.DONE))
    seeding.close()
    store = RedisStore(redis_url, prefix=redis_prefix, timeout=0.1)
    assert store.requeue_failed() == many
    assert store.counts() == {
        Status.PENDING: many,
        Status.PROCESSING: 0,
        Status.DONE: 1,
        Status.FAILED: 0,
    }
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_requeue_failed_takes_as_many_as_were_failed_when_it_began(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """It works in batches; a record that fails between two of them is left failed, so that
    records failing again as fast as they are requeued cannot keep it going."""
    from aerostic_webhooks.stores import redis as redis_module
    from aerostic_webhooks.stores import sqlite as sqlite_module

    store: Any
    if kind == "sqlite":
        monkeypatch.setattr(sqlite_module, "_PURGE_BATCH", 2)
        store = SQLiteStore(tmp_path / "s.db")
    else:
        monkeypatch.setattr(redis_module, "_BATCH", 2)
        url, prefix = (request.getfixturevalue(name) for name in ("redis_url", "redis_prefix"))
        store = redis_module.RedisStore(url, prefix=prefix)
    old = utcnow() - timedelta(minutes=1)
    assert all(
        store.add_many([record(f"f{n}", received_at=old, status=Status.FAILED) for n in range(3)])
    )
    store.add(record("late"))
    store.claim("w", limit=1, lease=30)
    batches: list[int] = []

    def between_batches() -> None:
        batches.append(len(batches))
        if len(batches) == 1:  # "late" fails once the first batch is requeued
            assert store.fail("late", "w", error="Boom: again")

    if kind == "sqlite":
        real_sleep = time.sleep

        def pause(seconds: float) -> None:
            assert seconds > 0
            between_batches()
            real_sleep(seconds)

        monkeypatch.setattr(sqlite_module, "time", _TimeWithSleep(pause))
    else:
        script = store._scripts["requeue_failed"]

        def batch(*args: Any, **kwargs: Any) -> Any:
            done = script(*args, **kwargs)
            between_batches()
            return done

        store._scripts["requeue_failed"] = batch
    try:
        assert store.requeue_failed() == 3
        assert batches
        counts = store.counts()
        assert (counts[Status.PENDING], counts[Status.FAILED]) == (3, 1)
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_purge_stops_between_batches_once_the_store_is_closed(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A worker's close() waits only so long for a purge of a week of records; one that went
    on after the store's close() opened a connection that nothing closed. It stops after the
    batch under way, and the next purge takes the rest."""
    from aerostic_webhooks.stores import redis as redis_module
    from aerostic_webhooks.stores import sqlite as sqlite_module

    store: Any
    batches: list[int] = []
    if kind == "sqlite":
        monkeypatch.setattr(sqlite_module, "_PURGE_BATCH", 2)
        store = SQLiteStore(tmp_path / "s.db")
        real_sleep = time.sleep

        def pause(seconds: float) -> None:
            batches.append(len(batches))
            if len(batches) == 1:
                store.close()  # as the worker's close() would, from another thread
            real_sleep(seconds)

        monkeypatch.setattr(sqlite_module, "time", _TimeWithSleep(pause))
    else:
        monkeypatch.setattr(redis_module, "_BATCH", 2)
        url, prefix = (request.getfixturevalue(name) for name in ("redis_url", "redis_prefix"))
        store = redis_module.RedisStore(url, prefix=prefix)
        script = store._scripts["purge"]

        def batch(*args: Any, **kwargs: Any) -> Any:
            done = script(*args, **kwargs)
            batches.append(len(batches))
            if len(batches) == 1:
                store.close()
            return done

        store._scripts["purge"] = batch
    old = utcnow() - timedelta(days=30)
    assert all(
        store.add_many([record(f"o{n}", received_at=old, status=Status.DONE) for n in range(5)])
    )
    cutoff = utcnow() - timedelta(days=7)
    try:
        assert store.purge(older_than=cutoff) == 2
        assert batches == [0]
        if kind == "sqlite":
            assert store._work._conn is None, "the purge opened a connection after close()"
        assert store.purge(older_than=cutoff) == 3  # the next purge, once started again
        assert store.list() == []
    finally:
        store.close()


class _TimeWithSleep:
    """The ``time`` module, but for a ``sleep`` of the test's own."""

    def __init__(self, sleep: Any) -> None:
        self.sleep = sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_requeue_failed_on_redis_skips_failed_records_redis_evicted(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed record whose hash Redis evicted is dropped from the failed set, not left
    at its head to take a place in every batch (and the last records' turn)."""
    from aerostic_webhooks.stores import redis as redis_module

    monkeypatch.setattr(redis_module, "_BATCH", 2)
    store = redis_module.RedisStore(redis_url, prefix=redis_prefix)
    old = utcnow() - timedelta(minutes=1)
    failed = [
        record(f"f{n}", received_at=old + timedelta(seconds=n), status=Status.FAILED)
        for n in range(5)
    ]
    assert all(store.add_many(failed))
    store.client.delete(f"{redis_prefix}r:f0")  # evicted
    try:
        assert store.requeue_failed() == 4
        assert store.counts()[Status.FAILED] == 0
        assert store.client.zcard(f"{redis_prefix}s:failed") == 0
    finally:
        store.close()


@pytest.mark.parametrize(
    ("setting", "expected"), [(None, 1), ("FULL", 2), ("off", 0), ("extra", 3)]
)
def test_sqlite_synchronous_applies_to_both_connections(
    tmp_path: Path, setting: str | None, expected: int
) -> None:
    """``NORMAL`` (1) unless the user asks for another level, on the intake's connection too."""
    store = (
        SQLiteStore(tmp_path / "inbox.sqlite3")
        if setting is None
        else SQLiteStore(tmp_path / "inbox.sqlite3", synchronous=setting)
    )
    try:
        # A per-connection setting: read on each of the store's two connections.
        for connection in (store._intake, store._work):
            with connection.use() as conn:
                assert conn.execute("PRAGMA synchronous").fetchone()[0] == expected
    finally:
        store.close()


def test_next_due(store: Store) -> None:
    assert store.next_due() is None
    later = utcnow() + timedelta(hours=2)
    store.add(record("a", next_attempt_at=later))
    due = store.next_due()
    assert isinstance(due, datetime)
    assert abs((due - later).total_seconds()) < 0.001
    now = utcnow()
    store.add(record("b", next_attempt_at=now))  # the earliest, not the latest, is next
    due = store.next_due()
    assert due is not None and abs((due - now).total_seconds()) < 0.001


def test_a_pending_record_keeps_its_next_attempt(store: Store) -> None:
    """What ``inbox show`` and the Django admin print: when a pending record is next tried,
    its receipt if it was given no other time."""
    received, later = utcnow(), utcnow() + timedelta(hours=2)
    store.add(record("retry", next_attempt_at=later))
    store.add(record("new", received_at=received))
    retry, new = store.get("retry"), store.get("new")
    assert retry is not None and retry.next_attempt_at is not None
    assert abs((retry.next_attempt_at - later).total_seconds()) < 0.001
    assert new is not None and new.next_attempt_at is not None
    assert abs((new.next_attempt_at - received).total_seconds()) < 0.001


def test_claim_takes_the_earliest_due_not_the_earliest_received(store: Store) -> None:
    now = utcnow()
    second = timedelta(seconds=1)
    store.add(record("x", received_at=now - 10 * second, next_attempt_at=now - second))
    store.add(record("y", received_at=now - 5 * second, next_attempt_at=now - 8 * second))
    assert [r.event_id for r in store.claim("w", limit=1, lease=30)] == ["y"]


def test_a_renewed_lease_that_lapses_makes_its_record_claimable_again(store: Store) -> None:
    store.add(record("a"))
    store.claim("w1", limit=1, lease=0.05)
    store.renew("w1", ["a"], lease=0.1)
    time.sleep(0.2)
    assert store.next_due() is not None
    [again] = store.claim("w2", limit=1, lease=30)
    assert (again.event_id, again.attempts) == ("a", 2)


def test_a_claimed_record_has_no_next_attempt(store: Store) -> None:
    """A retry's next attempt is over once it is claimed: the lease says when it is due."""
    store.add(record("a"))
    store.claim("w", limit=1, lease=30)
    store.reschedule("a", "w", at=utcnow() - timedelta(seconds=1), error="Boom: once")
    [again] = store.claim("w", limit=1, lease=30)
    kept = store.get("a")
    assert kept is not None
    assert (again.next_attempt_at, kept.next_attempt_at) == (None, None)
    assert kept.status is Status.PROCESSING and kept.lease_expires_at is not None


def test_updated_at_follows_each_change(store: Store) -> None:
    store.add(record("a", received_at=utcnow() - timedelta(minutes=1)))
    before_claim = utcnow()
    store.claim("w", limit=1, lease=30)
    claimed = store.get("a")
    assert claimed is not None and claimed.updated_at is not None
    assert claimed.updated_at >= before_claim - timedelta(milliseconds=1)
    store.complete("a", "w")
    done = store.get("a")
    assert done is not None and done.updated_at is not None
    assert done.updated_at >= claimed.updated_at


def test_a_record_added_while_processing_has_no_next_attempt(store: Store) -> None:
    """As inline mode adds its record: the lease's end is when it is due, not an attempt."""
    now = utcnow()
    store.add(
        record(
            "a",
            status=Status.PROCESSING,
            attempts=1,
            lease_owner="inline",
            lease_expires_at=now + timedelta(seconds=30),
        )
    )
    kept = store.get("a")
    assert kept is not None and kept.next_attempt_at is None
    assert store.complete("a", "inline")
    done = store.get("a")
    assert done is not None and done.next_attempt_at is None


def test_purge_removes_old_finished_records_only(store: Store) -> None:
    old = utcnow() - timedelta(days=10)
    for name in ("done", "failed", "pending", "processing"):
        store.add(record(name, received_at=old))
    store.add(record("recent-done"))
    for claimed in store.claim("w", limit=5, lease=30):
        if claimed.event_id in ("done", "recent-done"):
            store.complete(claimed.event_id, "w")
        elif claimed.event_id == "failed":
            store.fail(claimed.event_id, "w", error="x")
        elif claimed.event_id == "pending":
            store.reschedule(claimed.event_id, "w", at=utcnow(), error="x")
    assert store.purge(older_than=utcnow() - timedelta(days=7)) == 2
    assert store.get("done") is None and store.get("failed") is None
    for kept in ("pending", "processing", "recent-done"):
        assert store.get(kept) is not None


def test_purge_keeps_a_record_received_at_the_cutoff(store: ShippedStore) -> None:
    """Records received *before* ``older_than`` go; one received at that instant stays."""
    cutoff = utcnow() - timedelta(days=7)
    store.add_many(
        [
            record("before", received_at=cutoff - timedelta(seconds=1), status=Status.DONE),
            record("at", received_at=cutoff, status=Status.DONE),
            record("at-failed", received_at=cutoff, status=Status.FAILED),
        ]
    )
    assert store.purge(older_than=cutoff) == 1
    assert store.get("before") is None
    assert store.get("at") is not None and store.get("at-failed") is not None


def test_purge_removes_every_old_record_in_one_call(store: ShippedStore) -> None:
    old = utcnow() - timedelta(days=10)
    store.add_many([record(f"d{n}", received_at=old, status=Status.DONE) for n in range(1200)])
    assert store.purge(older_than=utcnow()) == 1200
    assert store.counts()[Status.DONE] == 0


def test_list_by_event_type_pages_with_the_offset(store: Store) -> None:
    now = utcnow()
    for n, (name, kind) in enumerate([("a1", "a.x"), ("b1", "b.x"), ("a2", "a.x"), ("a3", "a.x")]):
        store.add(record(name, event_type=kind, received_at=now - timedelta(minutes=10 - n)))
    pages = [store.list(event_type="a.x", limit=1, offset=n) for n in range(4)]
    assert [[r.event_id for r in page] for page in pages] == [["a3"], ["a2"], ["a1"], []]


def test_maintain_is_safe_on_every_store(store: Store) -> None:
    store.add(record("a"))
    store.maintain()
    assert store.get("a") is not None


def test_sqlite_maintain_checkpoints_what_deliveries_wrote(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite3"
    with SQLiteStore(path) as store:
        for n in range(200):
            store.add(record(f"e{n}", body=b"x" * 2000))  # deliveries never checkpoint
        before = path.stat().st_size  # the rows are still only in the WAL
        store.maintain()
        after = path.stat().st_size
    assert before < 100_000
    assert after > 400_000  # the checkpoint copied them into the database file
