"""The Django app: the view's contract, signals, system checks, the admin, PostgreSQL races."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

pytest.importorskip("django", reason="Django is not installed: pip install -e '.[django]'")

from django.apps import apps
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db.models import QuerySet
from django.test import Client

from aerostic_webhooks import InvalidPayload, MessageReceived, StoreUnavailable, WebhookReceiver
from aerostic_webhooks.django import get_receiver
from aerostic_webhooks.django.apps import AerosticWebhooksConfig, check_settings, request_cycle
from aerostic_webhooks.django.models import WebhookEvent
from aerostic_webhooks.django.signals import (
    SIGNALS_BY_TYPE,
    message_received,
    webhook_failed,
    webhook_received,
)
from aerostic_webhooks.django.store import DjangoStore
from aerostic_webhooks.stores import Record, Status
from aerostic_webhooks.stores.base import utcnow

from .contract import LIMIT, SECRET, Case, cases, sample_body, signed
from .django_settings import POSTGRES_AVAILABLE

URL = "/webhooks/aerostic/"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def app_config() -> Iterator[AerosticWebhooksConfig]:
    """A fresh receiver for each test, closed (its worker stopped) before the database goes."""
    config = apps.get_app_config("aerostic_webhooks")
    assert isinstance(config, AerosticWebhooksConfig)
    config._receiver = None
    yield config
    if config._receiver is not None:
        config._receiver.close()
        config._receiver = None


class Recorder:
    """A signal receiver that keeps what it was sent."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, sender: type, **kwargs: Any) -> None:
        with self.lock:
            self.calls.append(
                {"sender": sender, "thread": threading.current_thread().name, **kwargs}
            )


@pytest.fixture
def received() -> Iterator[Recorder]:
    recorder = Recorder()
    webhook_received.connect(recorder, weak=False)
    yield recorder
    webhook_received.disconnect(recorder)


def post(client: Client, case: Case, path: str = URL) -> Any:
    return client.post(path, data=case.body, content_type="application/json", headers=case.headers)


def assert_answer(response: Any, case: Case) -> None:
    assert response.status_code == case.status, case.name
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == case.json, case.name


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_contract(client: Client, case: Case) -> None:
    assert_answer(post(client, case), case)


def test_the_view_routed_by_hand_answers_the_same(client: Client) -> None:
    body = sample_body("message.sent")
    assert_answer(post(client, Case("custom", body, signed(body)), "/hooks/"), Case("ok", body))


def test_no_csrf_token_and_no_login_needed() -> None:
    body = sample_body("message.read")
    client = Client(enforce_csrf_checks=True)  # LoginRequiredMiddleware is installed too
    assert_answer(post(client, Case("csrf", body, signed(body))), Case("ok", body))


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete", "options", "head"])
def test_other_methods_get_405(client: Client, method: str) -> None:
    assert getattr(client, method)(URL).status_code == 405


@pytest.mark.parametrize("path", [URL, "/async-hooks/"])
def test_over_data_upload_max_memory_size_is_413_not_400(
    client: Client, settings: Any, path: str
) -> None:
    """Django's own limit on a body held in memory applies, answered as the contract says."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048  # under MAX_BODY_BYTES (4096)
    small = sample_body("message.received", text="x" * 1500)
    assert len(small) <= 2048
    assert_answer(post(client, Case("small", small, signed(small)), path), Case("ok", small))
    big = sample_body("message.received", text="x" * 3000)
    assert 2048 < len(big) <= LIMIT
    response = post(client, Case("big", big, signed(big)), path)
    assert_answer(response, Case("413", big, status=413, json={"error": "Payload too large"}))
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = None  # Django's check off: the receiver's limit only
    assert_answer(post(client, Case("big", big, signed(big)), path), Case("ok", big))


def test_store_unavailable_is_503(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import OperationalError

    def down(*args: object, **kwargs: object) -> None:
        raise OperationalError("database is down")

    monkeypatch.setattr(QuerySet, "create", down)
    body = sample_body("message.received")
    response = post(client, Case("down", body, signed(body)))
    assert_answer(
        response, Case("503", body, status=503, json={"error": "Temporarily unavailable"})
    )


def test_a_misconfigured_app_answers_503_and_the_check_reports_it(
    client: Client, settings: Any
) -> None:
    settings.AEROSTIC_WEBHOOKS = {"SECRET": ""}
    body = sample_body("message.received")
    response = post(client, Case("misconfigured", body, signed(body)))
    assert response.status_code == 503
    [error] = check_settings()
    assert error.id == "aerostic_webhooks.E001"
    with pytest.raises(SystemCheckError, match=r"aerostic_webhooks\.E001"):
        call_command("check")


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({}, "E001"),
        ({"SECRETS": ["", " "]}, "E001"),
        ({"SECRET": "s", "MAX_BODY_BYTES": 0}, "E002"),
        ({"SECRET": "s", "RETENTION": -1}, "E003"),
        ({"SECRET": "s", "WORKER": "celery"}, "E004"),
        ({"SECRET": "s", "CONCURRENCY": 0}, "E005"),
        ({"SECRET": "s", "CONCURRENCY": "4"}, "E005"),
        ({"SECRET": "s", "LEASE_SECONDS": 0}, "E006"),
        ({"SECRET": "s", "LEASE_SECONDS": True}, "E006"),
        ({"SECRET": "s", "MAX_BODY_BYTES": True}, "E002"),
        ({"SECRET": "s", "RETENTION": True}, "E003"),
        ({"SECRETS": 123}, "E001"),
        ("whsec_pasted_as_the_whole_setting", "E007"),
        ({"SECRET": "s", "DATABASE": "nope"}, "E008"),
        ({"SECRET": "s", "DATABASE": ["default"]}, "E008"),
        ({"SECRETS": {"a": "whsec_pasted"}}, "E001"),
        ({"SECRET": 123}, "E001"),
        ({"SECRETS": ["whsec_ok", 123]}, "E001"),
    ],
)
def test_system_checks(settings: Any, value: Any, code: str) -> None:
    settings.AEROSTIC_WEBHOOKS = value
    errors = check_settings()
    assert [error.id for error in errors] == [f"aerostic_webhooks.{c}" for c in code.split()]
    assert "whsec_pasted" not in str(errors)  # a secret is never echoed back


@pytest.mark.parametrize(
    "value", [{"SECRETS": 123}, "whsec_pasted", {"SECRET": "s", "DATABASE": "nope"}]
)
def test_a_setting_of_the_wrong_kind_is_a_503_not_a_500(
    client: Client, settings: Any, value: Any
) -> None:
    settings.AEROSTIC_WEBHOOKS = value
    body = sample_body("message.received")
    response = post(client, Case("ok", body, signed(body)))
    assert_answer(
        response, Case("503", body, status=503, json={"error": "Temporarily unavailable"})
    )


def test_secrets_list_rotates_and_the_setting_is_masked_in_error_reports(
    client: Client, settings: Any
) -> None:
    from django.views.debug import SafeExceptionReporterFilter

    settings.AEROSTIC_WEBHOOKS = {"SECRETS": ["whsec_new", SECRET]}
    body = sample_body("contact.created")
    assert post(client, Case("old", body, signed(body, SECRET))).status_code == 200
    masked = SafeExceptionReporterFilter().get_safe_settings()["AEROSTIC_WEBHOOKS"]
    assert "whsec_new" not in str(masked)


def test_signals_carry_typed_events_and_come_from_the_worker(
    client: Client, received: Recorder
) -> None:
    typed = Recorder()
    message_received.connect(typed, weak=False)
    try:
        body = sample_body("message.received")
        assert post(client, Case("s", body, signed(body))).status_code == 200
        assert get_receiver().drain(30)
    finally:
        message_received.disconnect(typed)
    for recorder in (received, typed):
        [call] = recorder.calls
        assert call["sender"] is MessageReceived
        assert isinstance(call["event"], MessageReceived)
        assert call["event"].data.from_ == "+919876543210"
        assert call["event_id"] == "message.received:msg_abc123"
        # Sent by a handler thread of the worker, not by the request's (this) thread.
        assert call["thread"].startswith("aerostic-webhooks-handler-"), call["thread"]
    record = WebhookEvent.objects.get(event_id="message.received:msg_abc123")
    assert record.status == "done"


def test_every_type_has_its_signal(client: Client) -> None:
    seen: list[str] = []
    recorders = {}
    for event_type, signal in SIGNALS_BY_TYPE.items():

        def remember(sender: type, event_type: str = event_type, **kwargs: Any) -> None:
            seen.append(event_type)

        recorders[event_type] = remember
        signal.connect(remember, weak=False)
    try:
        for event_type in SIGNALS_BY_TYPE:
            body = sample_body(event_type)
            assert post(client, Case(event_type, body, signed(body))).status_code == 200
        assert get_receiver().drain(30)
    finally:
        for event_type, signal in SIGNALS_BY_TYPE.items():
            signal.disconnect(recorders[event_type])
    assert sorted(seen) == sorted(SIGNALS_BY_TYPE)


def test_a_raising_receiver_gets_the_event_retried_and_webhook_failed_sent(
    client: Client,
) -> None:
    failures = Recorder()

    def broken(sender: type, **kwargs: Any) -> None:
        raise RuntimeError("CRM down")

    def also_broken(sender: type, **kwargs: Any) -> None:
        raise ValueError("no such contact")

    webhook_received.connect(broken, weak=False)
    message_received.connect(also_broken, weak=False)
    webhook_failed.connect(failures, weak=False)
    try:
        body = sample_body("message.received")
        assert post(client, Case("f", body, signed(body))).status_code == 200
        assert get_receiver().drain(30)
    finally:
        webhook_received.disconnect(broken)
        message_received.disconnect(also_broken)
        webhook_failed.disconnect(failures)
    record = WebhookEvent.objects.get(event_id="message.received:msg_abc123")
    assert record.status == "pending"  # scheduled again by the default backoff
    assert record.attempts == 1
    assert record.last_error == "RuntimeError: CRM down"
    # One webhook_failed for each receiver that raised, each with its own error.
    assert sorted(str(failure["error"]) for failure in failures.calls) == [
        "CRM down",
        "no such contact",
    ]
    for failure in failures.calls:
        assert failure["sender"] is MessageReceived
        assert failure["event_id"] == "message.received:msg_abc123"


def test_admin_lists_filters_shows_and_reprocesses(client: Client, received: Recorder) -> None:
    for event_type in ("message.received", "contact.created"):
        body = sample_body(event_type)
        assert post(client, Case(event_type, body, signed(body))).status_code == 200
    assert get_receiver().drain(30)
    assert len(received.calls) == 2
    staff = User.objects.create_user("staff", password="pw", is_staff=True, is_superuser=True)
    client.force_login(staff)
    changelist = "/admin/aerostic_webhooks/webhookevent/"
    page = client.get(changelist).content.decode()
    assert "message.received:msg_abc123" in page
    assert "contact.created:contact_xyz" in page
    filtered = client.get(changelist, {"event_type": "contact.created", "status": "done"})
    assert "contact.created:contact_xyz" in filtered.content.decode()
    assert "message.received:msg_abc123" not in filtered.content.decode()
    searched = client.get(changelist, {"q": "msg_abc123"}).content.decode()
    assert "message.received:msg_abc123" in searched
    assert "contact.created:contact_xyz" not in searched
    row = WebhookEvent.objects.get(event_id="contact.created:contact_xyz")
    detail = client.get(f"{changelist}{row.pk}/change/").content.decode()
    assert "&quot;tags&quot;: [" in detail  # the payload, indented JSON
    assert 'name="event_type"' not in detail  # read-only: no form inputs
    response = client.post(
        changelist, {"action": "reprocess", "_selected_action": [row.pk]}, follow=True
    )
    assert "1 event(s) queued" in response.content.decode()
    assert get_receiver().drain(30)
    assert [call["event_id"] for call in received.calls].count("contact.created:contact_xyz") == 2


def test_reprocessing_takes_the_change_permission_not_only_view(
    client: Client, received: Recorder
) -> None:
    from django.contrib.auth.models import Permission

    body = sample_body("contact.created")
    assert post(client, Case("c", body, signed(body))).status_code == 200
    assert get_receiver().drain(30)
    row = WebhookEvent.objects.get(event_id="contact.created:contact_xyz")
    changelist = "/admin/aerostic_webhooks/webhookevent/"
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_webhookevent"))
    client.force_login(viewer)
    page = client.get(changelist).content.decode()
    assert "contact.created:contact_xyz" in page
    assert "Reprocess selected events" not in page
    client.post(changelist, {"action": "reprocess", "_selected_action": [row.pk]})
    assert get_receiver().drain(30)
    assert len(received.calls) == 1  # not run again
    viewer.user_permissions.add(Permission.objects.get(codename="change_webhookevent"))
    client.force_login(User.objects.get(pk=viewer.pk))  # a fresh permission cache
    assert "Reprocess selected events" in client.get(changelist).content.decode()
    response = client.post(
        changelist, {"action": "reprocess", "_selected_action": [row.pk]}, follow=True
    )
    assert "1 event(s) queued" in response.content.decode()
    assert get_receiver().drain(30)
    assert len(received.calls) == 2


def test_a_chunked_body_with_a_content_length_is_read_whole(client: Client) -> None:
    """A server that ends the input where a chunked body ends, and passes a Content-Length
    along as well: the chunking wins, and the whole body is read."""
    body = sample_body("message.read")
    # WSGI environ keys that are no Python names; generic() takes its environ as **Any.
    environ: dict[str, Any] = {"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True}
    response = client.generic(
        "POST",
        URL,
        data=body,
        content_type="application/json",
        headers={**signed(body), "Transfer-Encoding": "chunked"},
        CONTENT_LENGTH="10",
        **environ,
    )
    assert (response.status_code, json.loads(response.content)) == (200, {"received": True})


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_sixteen_threads_one_row_one_signal(settings: Any, received: Recorder) -> None:
    settings.AEROSTIC_WEBHOOKS = {**settings.AEROSTIC_WEBHOOKS, "DATABASE": "postgres"}
    body = sample_body("message.received", id="race")
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def deliver() -> None:
        client = Client()
        barrier.wait()
        statuses.append(post(client, Case("race", body, signed(body))).status_code)
        from django.db import connections

        connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 16
    assert get_receiver().drain(30)
    assert (
        WebhookEvent.objects.using("postgres").filter(event_id="message.received:race").count() == 1
    )
    assert [call["event_id"] for call in received.calls] == ["message.received:race"]


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_store_contract() -> None:
    store = DjangoStore(using="postgres")
    receiver = WebhookReceiver(SECRET, store=store, retry_delays=(0,), worker_context=request_cycle)
    try:
        seen: list[str] = []
        receiver.on("*")(lambda event: seen.append(event.event))
        body = sample_body("message.failed")
        assert receiver.receive(body, signed(body)).duplicate is False
        assert receiver.receive(body, signed(body)).duplicate is True
        assert receiver.drain(30)
        assert seen == ["message.failed"]
        assert store.counts()[Status.DONE] == 1
        assert store.purge(older_than=store.list()[0].received_at + timedelta(seconds=1)) == 1
    finally:
        receiver.close()


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_two_batches_of_the_same_ids_in_opposite_orders_do_not_deadlock() -> None:
    """Two processes' batches naming the same deliveries in opposite orders: had each inserted
    in its own order, each would hold one row's index lock and wait for the other's."""
    from django.db import connections

    both_inserted_once = threading.Barrier(2)

    class Pausing(DjangoStore):
        def add(self, record: Record) -> bool:
            added = super().add(record)
            with contextlib.suppress(threading.BrokenBarrierError):
                both_inserted_once.wait(1)  # the other one may be blocked on our row instead
            return added

    now = utcnow()
    records = [
        Record(f"message.received:order-{n}", "message.received", b"{}", now, next_attempt_at=now)
        for n in range(2)
    ]
    answers: dict[str, Any] = {}

    def write(name: str, batch: list[Record]) -> None:
        try:
            answers[name] = Pausing(using="postgres").add_many(batch)
        except StoreUnavailable as error:
            answers[name] = error
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=write, args=("forward", records)),
        threading.Thread(target=write, args=("backward", records[::-1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(map(str, answers.values())) == ["[False, False]", "[True, True]"], answers
    rows = WebhookEvent.objects.using("postgres").filter(event_id__startswith="message.received:o")
    assert rows.count() == 2


def test_postgres_is_reachable() -> None:
    if not POSTGRES_AVAILABLE:
        from .conftest import service_missing

        service_missing("PostgreSQL", "127.0.0.1:5432, database test")


@pytest.mark.parametrize("case", cases()[:8] + cases()[-3:], ids=lambda case: case.name)
def test_async_view_answers_the_same(case: Case) -> None:
    from django.test import AsyncClient

    async def deliver() -> Any:
        client = AsyncClient(enforce_csrf_checks=True)
        return await client.post(
            "/async-hooks/", data=case.body, content_type="application/json", headers=case.headers
        )

    assert_answer(asyncio.run(deliver()), case)


def test_async_view_records_on_the_intake_thread_inside_the_request_cycle(
    monkeypatch: pytest.MonkeyPatch, received: Recorder
) -> None:
    # Under ASGI the delivery is verified on the loop and written by the receiver's intake
    # thread, with Django's connection upkeep around the write as around a worker step.
    from django.test import AsyncClient

    cycles: list[str] = []

    @contextlib.contextmanager
    def spying_cycle() -> Iterator[None]:
        cycles.append(threading.current_thread().name)
        with request_cycle():
            yield

    writers: list[str] = []
    add_many = DjangoStore.add_many

    def spying_add_many(self: DjangoStore, records: Any) -> Any:
        writers.append(threading.current_thread().name)
        return add_many(self, records)

    monkeypatch.setattr("aerostic_webhooks.django.apps.request_cycle", spying_cycle)
    monkeypatch.setattr(DjangoStore, "add_many", spying_add_many)
    body = sample_body("message.received", id="msg_async")

    async def deliver() -> Any:
        return await AsyncClient().post(
            "/async-hooks/", data=body, content_type="application/json", headers=signed(body)
        )

    response = asyncio.run(deliver())
    assert response.status_code == 200
    assert json.loads(response.content) == {"received": True}
    assert writers == ["aerostic-webhooks-intake"]
    assert "aerostic-webhooks-intake" in cycles
    assert get_receiver().drain(10)
    assert WebhookEvent.objects.get(event_id="message.received:msg_async").status == "done"
    assert [call["event"].data.id for call in received.calls] == ["msg_async"]


def test_migration_0002_brings_old_rows_to_the_due_rule() -> None:
    """Rows as the store wrote them before stores.base.due_at(): a done and a failed row still
    due at their old lease's end, a processing row with no lease never due."""
    from importlib import import_module

    apply_due_at_rule = import_module(
        "aerostic_webhooks.django.migrations.0002_due_at_rule"
    ).apply_due_at_rule
    store = DjangoStore()
    now = utcnow()
    past = now - timedelta(minutes=1)
    body = sample_body("message.received")
    for event_id, status in [("old-done", Status.DONE), ("old-failed", Status.FAILED)]:
        store.add(Record(event_id, "message.received", body, past, status=status, attempts=1))
    store.add(Record("stuck", "message.received", body, past, status=Status.PROCESSING))
    WebhookEvent.objects.filter(event_id__in=["old-done", "old-failed"]).update(due_at=past)
    WebhookEvent.objects.filter(event_id="stuck").update(due_at=None)

    apply_due_at_rule(apps, None)

    claimed = store.claim("a worker", limit=10, lease=30)
    assert [record.event_id for record in claimed] == ["stuck"]
    assert store.get("old-done").status is Status.DONE  # type: ignore[union-attr]
    assert store.get("old-failed").status is Status.FAILED  # type: ignore[union-attr]


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_keeps_deliveries_and_errors_that_hold_nul() -> None:
    """PostgreSQL text refuses NUL: such a delivery was a 503 on every retry, for ever."""
    store = DjangoStore(using="postgres")
    receiver = WebhookReceiver(
        SECRET, store=store, retry_delays=(60,), worker_context=request_cycle
    )
    try:

        @receiver.on("*")
        def broken(event: Any) -> None:
            raise ValueError("bad byte \x00 in the CRM's answer")

        body = sample_body("message.received", id="msg\x00nul")
        receipt = receiver.receive(body, signed(body))
        assert receipt.event_id.startswith("sha256:")  # an id every store can key
        assert receiver.receive(body, signed(body)).duplicate is True
        assert receiver.drain(30)
        record = store.get(receipt.event_id)
        assert record is not None and record.status is Status.PENDING  # retried later
        assert record.last_error == "ValueError: bad byte \ufffd in the CRM's answer"
        typed = json.dumps(
            {"event": "odd\x00type", "timestamp": "2024-01-15T10:30:00Z", "data": {}}
        ).encode()
        with pytest.raises(InvalidPayload):
            receiver.receive(typed, signed(typed))
    finally:
        receiver.close()
