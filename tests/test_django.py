"""The Django app: the view's contract, signals, system checks, the admin, PostgreSQL races."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from signal import SIGINT, SIGTERM, getsignal
from signal import signal as set_signal_handler
from typing import Any

import pytest

pytest.importorskip("django", reason="Django is not installed: pip install -e '.[django]'")

from django.apps import apps
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.db.models import Model, QuerySet
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from aerostic_webhooks import (
    InvalidPayload,
    MessageReceived,
    StoreUnavailable,
    UnknownEvent,
    WebhookReceiver,
)
from aerostic_webhooks import receiver as receiver_module
from aerostic_webhooks.django import get_receiver, signals
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
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_payload

from .conftest import wait_until
from .contract import LIMIT, SECRET, UNAVAILABLE, Case, cases, sample_body, signed
from .django_settings import POSTGRES_AVAILABLE

URL = "/webhooks/aerostic/"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def app_config() -> Iterator[AerosticWebhooksConfig]:
    """A fresh receiver for each test, closed (its worker stopped) before the database goes."""
    config = apps.get_app_config("aerostic_webhooks")
    assert isinstance(config, AerosticWebhooksConfig)
    config._receiver = config._carried = None
    yield config
    if config._receiver is not None:
        config._receiver.close()
    config._receiver = config._carried = None


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


@contextlib.contextmanager
def connected(*pairs: tuple[Signal, Callable[..., Any]]) -> Iterator[None]:
    """Signal receivers connected for the block only: the signals outlive each test."""
    for signal, receiver in pairs:
        signal.connect(receiver, weak=False)
    try:
        yield
    finally:
        for signal, receiver in pairs:
            signal.disconnect(receiver)


@pytest.fixture
def received() -> Iterator[Recorder]:
    recorder = Recorder()
    with connected((webhook_received, recorder)):
        yield recorder


def post(client: Client, case: Case, path: str = URL) -> Any:
    return client.post(path, data=case.body, content_type="application/json", headers=case.headers)


def deliver_all(client: Client, bodies: Iterable[bytes]) -> None:
    """POST each body, signed (each must be accepted), then wait for the worker."""
    for body in bodies:
        assert post(client, Case("delivery", body, signed(body))).status_code == 200
    assert get_receiver().drain(30)


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


def assert_a_signed_delivery_is_answered_503(client: Client) -> None:
    body = sample_body("message.received")
    response = post(client, Case("signed", body, signed(body)))
    assert_answer(response, Case("503", body, status=503, json=UNAVAILABLE))


def test_store_unavailable_is_503(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import OperationalError

    def down(*args: object, **kwargs: object) -> None:
        raise OperationalError("database is down")

    monkeypatch.setattr(QuerySet, "create", down)
    assert_a_signed_delivery_is_answered_503(client)


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
        ({"SECRET": "s", "RETENTION": 0}, "E003"),
        ({"SECRET": "s", "RETENTION": timedelta(0)}, "E003"),
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
    "value",
    [
        {"SECRETS": 123},
        "whsec_pasted",
        {"SECRET": "s", "DATABASE": "nope"},
        {"SECRET": "s", "RETENTION": float("inf")},
    ],
)
def test_a_setting_of_the_wrong_kind_is_a_503_not_a_500(
    client: Client, settings: Any, value: Any
) -> None:
    settings.AEROSTIC_WEBHOOKS = value
    assert_a_signed_delivery_is_answered_503(client)


def test_secrets_list_rotates_and_the_setting_is_masked_in_error_reports(
    client: Client, settings: Any
) -> None:
    from django.views.debug import SafeExceptionReporterFilter

    settings.AEROSTIC_WEBHOOKS = {"SECRETS": ["whsec_new", SECRET]}
    body = sample_body("contact.created")
    assert post(client, Case("old", body, signed(body, SECRET))).status_code == 200
    masked = SafeExceptionReporterFilter().get_safe_settings()["AEROSTIC_WEBHOOKS"]
    assert "whsec_new" not in str(masked)


def test_without_the_setting_the_check_reports_the_missing_secret(settings: Any) -> None:
    del settings.AEROSTIC_WEBHOOKS
    [error] = check_settings()
    assert error.id == "aerostic_webhooks.E001"
    assert "missing or empty" in error.msg


@pytest.mark.parametrize(
    "value",
    [
        {"SECRETS": SECRET},
        {"SECRET": f"{SECRET}\n"},
        {"SECRETS": ["whsec_new", f" {SECRET}\n"]},
    ],
    ids=["secrets-as-one-string", "secret-read-from-a-file", "secrets-padded"],
)
def test_a_secret_given_as_one_string_or_padded_with_whitespace_is_accepted(
    client: Client, settings: Any, value: dict[str, Any]
) -> None:
    settings.AEROSTIC_WEBHOOKS = value
    assert check_settings() == []
    body = sample_body("message.sent")
    assert_answer(post(client, Case("ok", body, signed(body))), Case("ok", body))


@pytest.mark.parametrize(
    ("worker", "process"),
    [(None, "background"), ("thread", "background"), ("external", "external")],
    ids=["default", "thread", "external"],
)
def test_the_worker_setting_decides_where_the_receivers_run(
    settings: Any, worker: str | None, process: str
) -> None:
    configured: dict[str, Any] = {"SECRET": SECRET}
    if worker is not None:
        configured["WORKER"] = worker
    settings.AEROSTIC_WEBHOOKS = configured
    assert get_receiver().process == process


def test_the_check_runs_only_when_this_app_is_among_those_checked(settings: Any) -> None:
    settings.AEROSTIC_WEBHOOKS = {"SECRET": ""}
    call_command("check", "auth", stdout=io.StringIO())  # another app's checks only
    with pytest.raises(SystemCheckError, match=r"aerostic_webhooks\.E001"):
        call_command("check", "aerostic_webhooks", stdout=io.StringIO())


def test_the_first_request_starts_the_worker_for_records_already_due(
    client: Client, app_config: AerosticWebhooksConfig, received: Recorder
) -> None:
    """Retries, and records a dead process left behind, are taken up as soon as the process
    serves its first request of any kind, without waiting for a new delivery."""
    earlier = utcnow() - timedelta(minutes=5)
    body = sample_body("message.read", id="left_behind")
    record = Record("message.read:left_behind", "message.read", body, earlier)
    assert DjangoStore().add(record._replace(next_attempt_at=earlier))
    app_config.ready()  # as in a new process: no request served yet
    assert client.get(URL).status_code == 405
    assert wait_until(lambda: len(received.calls) == 1)
    assert received.calls[0]["event_id"] == "message.read:left_behind"


def test_a_first_request_while_misconfigured_is_answered_503(
    client: Client, settings: Any, app_config: AerosticWebhooksConfig
) -> None:
    settings.AEROSTIC_WEBHOOKS = {"SECRET": ""}
    app_config.ready()  # as in a new process: starting the worker is the first request's
    assert_a_signed_delivery_is_answered_503(client)


def test_the_concurrency_setting_is_how_many_receivers_can_run_at_once(
    client: Client, settings: Any
) -> None:
    settings.AEROSTIC_WEBHOOKS = {"SECRET": SECRET, "CONCURRENCY": 6}  # the default is 4
    together = threading.Barrier(6, timeout=10)  # broken unless six wait on it at once
    met: list[str] = []

    def meet(sender: type, event_id: str, **kwargs: Any) -> None:
        together.wait()
        met.append(event_id)

    with connected((webhook_received, meet)):
        try:
            deliver_all(client, (sample_body("message.sent", id=f"msg_{n}") for n in range(6)))
        finally:
            together.abort()
    assert sorted(met) == [f"message.sent:msg_{n}" for n in range(6)]


def test_the_lease_seconds_setting_is_the_lease_of_a_record_being_handled(
    client: Client, settings: Any
) -> None:
    settings.AEROSTIC_WEBHOOKS = {"SECRET": SECRET, "LEASE_SECONDS": 120}
    leases: list[timedelta] = []

    def measure(sender: type, event_id: str, **kwargs: Any) -> None:
        row = WebhookEvent.objects.get(event_id=event_id)
        assert row.lease_expires_at is not None and row.updated_at is not None
        leases.append(row.lease_expires_at - row.updated_at)

    with connected((webhook_received, measure)):
        deliver_all(client, [sample_body("message.sent")])
    [lease] = leases
    assert timedelta(seconds=120) <= lease < timedelta(seconds=180)


def test_the_retention_setting_in_seconds_is_what_the_worker_purges_by(settings: Any) -> None:
    settings.AEROSTIC_WEBHOOKS = {"SECRET": SECRET, "RETENTION": 3600}
    store = DjangoStore()
    now = utcnow()
    for event_id, age in [("two-hours-old", timedelta(hours=2)), ("recent", timedelta(minutes=10))]:
        assert store.add(Record(event_id, "message.sent", b"{}", now - age, status=Status.DONE))
    get_receiver().start()  # its housekeeping purges at once, then every hour
    assert wait_until(lambda: store.get("two-hours-old") is None)
    assert store.get("recent") is not None


def test_signals_carry_typed_events_and_come_from_the_worker(
    client: Client, received: Recorder
) -> None:
    typed = Recorder()
    with connected((message_received, typed)):
        deliver_all(client, [sample_body("message.received")])
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
    recorders: list[tuple[Signal, Callable[..., Any]]] = []
    for event_type, signal in SIGNALS_BY_TYPE.items():

        def remember(sender: type, event_type: str = event_type, **kwargs: Any) -> None:
            seen.append(event_type)

        recorders.append((signal, remember))
    with connected(*recorders):
        deliver_all(client, map(sample_body, SIGNALS_BY_TYPE))
    assert sorted(seen) == sorted(SIGNALS_BY_TYPE)


def test_a_raising_receiver_gets_the_event_retried_and_webhook_failed_sent(
    client: Client,
) -> None:
    failures = Recorder()

    def broken(sender: type, **kwargs: Any) -> None:
        raise RuntimeError("CRM down")

    def also_broken(sender: type, **kwargs: Any) -> None:
        raise ValueError("no such contact")

    with connected(
        (webhook_received, broken), (message_received, also_broken), (webhook_failed, failures)
    ):
        deliver_all(client, [sample_body("message.received")])
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


def test_each_event_type_sends_the_signal_named_after_it(client: Client) -> None:
    seen: dict[str, list[str]] = {event_type: [] for event_type in SAMPLE_PAYLOADS}
    recorders: list[tuple[Signal, Callable[..., Any]]] = []
    for event_type in SAMPLE_PAYLOADS:

        def remember(
            sender: type, event: Any, kept: list[str] = seen[event_type], **_: Any
        ) -> None:
            kept.append(event.event)

        recorders.append((getattr(signals, event_type.replace(".", "_")), remember))
    with connected(*recorders):
        deliver_all(client, map(sample_body, SAMPLE_PAYLOADS))
    assert seen == {event_type: [event_type] for event_type in SAMPLE_PAYLOADS}


def test_an_event_of_an_unknown_type_is_sent_as_webhook_received(
    client: Client, received: Recorder
) -> None:
    payload = {"event": "order.shipped", "timestamp": "2026-01-30T15:45:00Z", "data": {"id": "o1"}}
    body = json.dumps(payload).encode()
    assert post(client, Case("unknown", body, signed(body))).status_code == 200
    assert get_receiver().drain(30)
    [call] = received.calls
    assert call["sender"] is UnknownEvent
    assert call["event"].event == "order.shipped"
    assert WebhookEvent.objects.get(event_id=call["event_id"]).status == "done"


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


def admin_client(client: Client) -> Client:
    staff = User.objects.create_user("staff", password="pw", is_staff=True, is_superuser=True)
    client.force_login(staff)
    return client


CHANGELIST = "/admin/aerostic_webhooks/webhookevent/"


def test_admin_shows_the_status_as_a_column_and_a_filter_and_is_read_only(
    client: Client,
) -> None:
    body = sample_body("contact.created")
    assert post(client, Case("c", body, signed(body))).status_code == 200
    assert get_receiver().drain(30)
    admin_client(client)
    page = client.get(CHANGELIST).content.decode()
    assert "column-status" in page
    for status in Status:
        assert f"status__exact={status.value}" in page, f"no filter by {status.value}"
    assert client.get(f"{CHANGELIST}add/").status_code == 403
    row = WebhookEvent.objects.get(event_id="contact.created:contact_xyz")
    detail = client.get(f"{CHANGELIST}{row.pk}/change/").content.decode()
    assert 'name="_save"' not in detail
    assert escape(json.dumps(row.payload(), indent=2, ensure_ascii=False)) in detail


def test_admin_shows_a_body_that_is_not_json_as_text(client: Client) -> None:
    assert DjangoStore().add(Record("odd", "message.sent", b"not json \xff", utcnow()))
    row = WebhookEvent.objects.get(event_id="odd")
    response = admin_client(client).get(f"{CHANGELIST}{row.pk}/change/")
    assert response.status_code == 200
    assert "not json \ufffd" in response.content.decode()


def test_reprocessing_an_event_being_processed_says_it_was_not_queued(client: Client) -> None:
    now = utcnow()
    body = sample_body("message.sent")
    busy = Record("message.sent:busy", "message.sent", body, now, status=Status.PROCESSING)
    held = busy._replace(attempts=1, lease_owner="another worker")
    assert DjangoStore().add(held._replace(lease_expires_at=now + timedelta(minutes=5)))
    row = WebhookEvent.objects.get(event_id="message.sent:busy")
    response = admin_client(client).post(
        CHANGELIST, {"action": "reprocess", "_selected_action": [row.pk]}, follow=True
    )
    assert "1 event(s) are being processed now; not queued." in response.content.decode()
    assert WebhookEvent.objects.get(pk=row.pk).status == "processing"


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


def reads_the_body_first(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """A request logger's middleware: it reads ``request.body`` before any view runs."""

    def middleware(request: HttpRequest) -> HttpResponse:
        logging.getLogger("tests.requests").info("%d bytes", len(request.body))
        return get_response(request)

    return middleware


def test_a_body_a_middleware_read_first_is_received(settings: Any) -> None:
    """Under gunicorn (``wsgi.input_terminated``, a Content-Length) the server's input is
    spent once a middleware read the body: the view takes it from Django's request."""
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.reads_the_body_first"]
    body = sample_body("message.delivered")
    environ: dict[str, Any] = {"wsgi.input_terminated": True}  # no Python name: **Any
    response = Client().post(
        URL, data=body, content_type="application/json", headers=signed(body), **environ
    )
    assert (response.status_code, json.loads(response.content)) == (200, {"received": True})


def test_the_included_urls_reverse_by_their_namespaced_name() -> None:
    assert reverse("aerostic_webhooks:receive") == URL


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
        assert record.last_error == "ValueError: bad byte \\x00 in the CRM's answer"
        typed = json.dumps(
            {"event": "odd\x00type", "timestamp": "2024-01-15T10:30:00Z", "data": {}}
        ).encode()
        with pytest.raises(InvalidPayload):
            receiver.receive(typed, signed(typed))
    finally:
        receiver.close()


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
@pytest.mark.parametrize(
    ("own", "kept"),
    [
        ("\U0001f642" * 512, True),  # the longest: 512 characters, 2048 bytes of UTF-8
        ("x" * 513, False),  # longer than the column: a DataError, a 503 at every retry
        ("caf\udce9", False),  # no UTF-8 text: PostgreSQL cannot be sent it
    ],
    ids=["longest", "too-long", "surrogate"],
)
def test_postgres_keeps_any_id_the_receiver_takes_and_it_takes_no_other(
    own: str, kept: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The receiver's limit is the model's column: every store then keeps the same ids."""
    column = WebhookEvent._meta.get_field("event_id")
    assert getattr(column, "max_length", None) == receiver_module._MAX_EVENT_ID
    store = DjangoStore(using="postgres")
    with WebhookReceiver(SECRET, store=store, process="external", event_id=lambda e: own) as hooks:
        body = sample_body("message.received", id="m1")
        receipt = hooks.receive(body, signed(body))
        assert receipt.event_id == (own if kept else "message.received:m1")
        assert hooks.receive(body, signed(body)).duplicate is True
        assert store.get(receipt.event_id) is not None
    assert ("returned no usable id" in caplog.text) is not kept


def test_the_models_match_the_migrations() -> None:
    """A model change without its migration would have each project's ``makemigrations``
    write one into the installed package."""
    call_command(
        "makemigrations", "aerostic_webhooks", "--check", "--dry-run", stdout=io.StringIO()
    )


def test_the_store_keeps_aware_utc_times_with_use_tz_off(settings: Any) -> None:
    settings.USE_TZ = False
    store = DjangoStore()
    received = utcnow() - timedelta(minutes=1)
    assert store.add(Record("naive", "message.sent", b"{}", received, next_attempt_at=received))
    assert store.next_due() == received
    [claimed] = store.claim("a worker", limit=10, lease=30)
    assert claimed.received_at == received
    assert claimed.lease_expires_at is not None and claimed.lease_expires_at > received


def test_the_store_refuses_a_delivery_the_database_cannot_write_as_store_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the ``Store`` protocol says, for callers of ``add`` besides the receiver."""
    from django.db import OperationalError

    def down(*args: object, **kwargs: object) -> None:
        raise OperationalError("database is down")

    monkeypatch.setattr(QuerySet, "create", down)
    with pytest.raises(StoreUnavailable, match="database is down"):
        DjangoStore().add(Record("message.sent:down", "message.sent", b"{}", utcnow()))


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_a_claim_skips_rows_another_worker_has_locked() -> None:
    """Workers on PostgreSQL never wait for each other: a row another claim has locked is
    left to it, and the claim takes the other due rows at once."""
    from django.db import connections, transaction

    store = DjangoStore(using="postgres")
    earlier = utcnow() - timedelta(minutes=1)
    for event_id in ("message.sent:locked", "message.sent:free"):
        assert store.add(Record(event_id, "message.sent", b"{}", earlier, next_attempt_at=earlier))
    locked, finished = threading.Event(), threading.Event()

    def hold_a_lock() -> None:
        try:
            with transaction.atomic(using="postgres"):
                rows = WebhookEvent.objects.using("postgres").select_for_update()
                list(rows.filter(event_id="message.sent:locked"))
                locked.set()
                finished.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_a_lock)
    holder.start()
    try:
        assert locked.wait(10)
        claimed = store.claim("a worker", limit=10, lease=30)
    finally:
        finished.set()
        holder.join(10)
    assert [record.event_id for record in claimed] == ["message.sent:free"]


def test_the_purge_command_deletes_by_the_retention_setting(settings: Any) -> None:
    settings.AEROSTIC_WEBHOOKS = {"SECRET": SECRET, "RETENTION": timedelta(hours=1)}
    store = DjangoStore()
    now = utcnow()
    aged = {
        "old-done": (timedelta(hours=2), Status.DONE),
        "old-failed": (timedelta(hours=2), Status.FAILED),
        "old-pending": (timedelta(hours=2), Status.PENDING),
        "new-done": (timedelta(minutes=10), Status.DONE),
    }
    for event_id, (age, status) in aged.items():
        assert store.add(Record(event_id, "message.sent", b"{}", now - age, status=status))
    output = io.StringIO()
    call_command("aerostic_webhooks_purge", stdout=output)
    assert output.getvalue().strip() == f"purged 2 webhook event(s) older than {timedelta(hours=1)}"
    assert sorted(record.event_id for record in store.list()) == ["new-done", "old-pending"]


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_the_purge_command_purges_the_database_the_setting_names(settings: Any) -> None:
    settings.AEROSTIC_WEBHOOKS = {"SECRET": SECRET, "DATABASE": "postgres"}
    old = utcnow() - timedelta(days=30)
    stores = {"default": DjangoStore(), "postgres": DjangoStore(using="postgres")}
    for store in stores.values():
        assert store.add(Record("message.sent:old", "message.sent", b"{}", old, status=Status.DONE))
    call_command("aerostic_webhooks_purge", stdout=io.StringIO())
    assert stores["postgres"].get("message.sent:old") is None
    assert stores["default"].get("message.sent:old") is not None


def test_the_worker_command_reports_a_misconfiguration_in_one_message(settings: Any) -> None:
    """As with ``--skip-checks`` (``call_command`` skips the system checks)."""
    settings.AEROSTIC_WEBHOOKS = {"SECRET": ""}
    with pytest.raises(CommandError, match=r"aerostic_webhooks is misconfigured: .*'SECRET'"):
        call_command("aerostic_webhooks_worker", stdout=io.StringIO())


def test_the_worker_command_lets_running_receivers_finish_when_stopped(settings: Any) -> None:
    settings.AEROSTIC_WEBHOOKS = {"SECRET": SECRET, "WORKER": "external"}
    earlier = utcnow() - timedelta(seconds=1)
    body = sample_body("message.sent", id="slow")
    record = Record("message.sent:slow", "message.sent", body, earlier, next_attempt_at=earlier)
    assert DjangoStore().add(record)
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []
    output = io.StringIO()

    def slow(sender: type, event_id: str, **kwargs: Any) -> None:
        started.set()
        release.wait(10)
        finished.append(event_id)

    def stop_while_it_runs() -> None:
        started.wait(10)
        os.kill(os.getpid(), SIGTERM)  # the command's handler: it stops, not us
        wait_until(lambda: "stopping" in output.getvalue())
        release.set()

    handlers = {signum: getsignal(signum) for signum in (SIGTERM, SIGINT)}
    webhook_received.connect(slow, weak=False)
    stopper = threading.Thread(target=stop_while_it_runs)
    stopper.start()
    try:
        call_command("aerostic_webhooks_worker", stdout=output)
        finished_when_it_returned = list(finished)
    finally:
        release.set()
        stopper.join(10)
        webhook_received.disconnect(slow)
        for signum, handler in handlers.items():
            set_signal_handler(signum, handler)
    assert finished_when_it_returned == ["message.sent:slow"]
    assert "aerostic_webhooks worker stopped" in output.getvalue()
    assert WebhookEvent.objects.get(event_id="message.sent:slow").status == "done"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({"SECRET": "s", "RETENTION": float("inf")}, "E003"),
        ({"SECRET": "s", "RETENTION": 10**15}, "E003"),
        ({"SECRET": "s", "RETENTION": timedelta.max}, "E003"),
        ({"SECRET": "s", "LEASE_SECONDS": float("inf")}, "E006"),
        ({"SECRET": "s", "LEASE_SECONDS": float("nan")}, "E006"),
    ],
    ids=["retention-inf", "retention-huge-seconds", "retention-max", "lease-inf", "lease-nan"],
)
def test_a_retention_or_lease_no_date_can_express_is_a_setting_error(
    settings: Any, value: dict[str, Any], code: str
) -> None:
    """Values that would overflow at their first use (the purge's cut-off, every claim's lease
    expiry) are errors of ``manage.py check``, not a traceback in it or in the worker later;
    the CLI refuses such durations too."""
    settings.AEROSTIC_WEBHOOKS = value
    [error] = check_settings()
    assert error.id == f"aerostic_webhooks.{code}"


@pytest.mark.parametrize("path", [URL, "/async-hooks/"])
def test_atomic_requests_neither_breaks_the_view_nor_holds_back_the_record(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """ATOMIC_REQUESTS = True: Django refuses to wrap an async view in a transaction (a 500 for
    every delivery), and a sync view's record would stay uncommitted, out of the worker's
    sight, until the request ended. The store commits its own writes: the view is exempt."""
    from django.db import connections
    from django.test import AsyncClient

    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", True)
    committed: list[bool] = []
    add = DjangoStore.add

    def add_and_look_from_another_connection(self: DjangoStore, record: Record) -> bool:
        added = add(self, record)

        def look() -> None:
            try:
                committed.append(WebhookEvent.objects.filter(event_id=record.event_id).exists())
            finally:
                connections.close_all()

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        return added

    if path == URL:  # the async view records in batches, each its own transaction
        monkeypatch.setattr(DjangoStore, "add", add_and_look_from_another_connection)
    body = sample_body("message.received", id=f"atomic{len(path)}")

    async def deliver() -> Any:
        return await AsyncClient().post(
            path, data=body, content_type="application/json", headers=signed(body)
        )

    response = asyncio.run(deliver())
    assert response.status_code == 200, response.content
    assert json.loads(response.content) == {"received": True}
    assert committed == ([True] if path == URL else [])


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_async_view_large_deliveries_survive_a_lost_connection(settings: Any) -> None:
    """A delivery too large to verify on the event loop is received whole on a pool thread.
    That thread's database connection gets Django's upkeep as a request's does: closed after
    use (CONN_MAX_AGE), so a connection the server dropped is not used again for ever after."""
    from django.db import connections
    from django.test import AsyncClient

    settings.AEROSTIC_WEBHOOKS = {
        **settings.AEROSTIC_WEBHOOKS,
        "DATABASE": "postgres",
        "MAX_BODY_BYTES": 1_048_576,
    }

    async def deliver(n: int) -> int:
        body = sample_body("message.received", id=f"large{n}", text="x" * 70_000)
        response = await AsyncClient().post(
            "/async-hooks/", data=body, content_type="application/json", headers=signed(body)
        )
        return int(response.status_code)

    assert asyncio.run(deliver(1)) == 200
    with connections["postgres"].cursor() as cursor:  # the server restarts, say
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert [asyncio.run(deliver(n)) for n in range(2, 8)] == [200] * 6
    assert get_receiver().drain(30)
    rows = WebhookEvent.objects.using("postgres").filter(event_id__startswith="message.received:l")
    assert rows.filter(status="done").count() == 7


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_the_admin_shows_the_database_the_setting_names(
    client: Client, settings: Any
) -> None:
    settings.AEROSTIC_WEBHOOKS = {**settings.AEROSTIC_WEBHOOKS, "DATABASE": "postgres"}
    assert DjangoStore(using="postgres").add(
        Record("message.sent:elsewhere", "message.sent", sample_body("message.sent"), utcnow())
    )
    row = WebhookEvent.objects.using("postgres").get(event_id="message.sent:elsewhere")
    admin_client(client)
    assert "message.sent:elsewhere" in client.get(CHANGELIST).content.decode()
    detail = client.get(f"{CHANGELIST}{row.pk}/change/")
    assert detail.status_code == 200
    assert "message.sent:elsewhere" in detail.content.decode()
    response = client.post(
        CHANGELIST, {"action": "reprocess", "_selected_action": [row.pk]}, follow=True
    )
    assert "1 event(s) queued" in response.content.decode()


class WebhooksToPostgres:
    """A project's router: the webhook app's table lives in the "postgres" database."""

    def _route(self, model: type[Model], **hints: Any) -> str | None:
        return "postgres" if model._meta.app_label == "aerostic_webhooks" else None

    db_for_read = db_for_write = _route


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_without_a_database_setting_the_routers_decide(
    client: Client, settings: Any, received: Recorder
) -> None:
    get_receiver()  # built before the routers change: the change builds it again
    settings.DATABASE_ROUTERS = [f"{__name__}.WebhooksToPostgres"]
    assert "DATABASE" not in settings.AEROSTIC_WEBHOOKS
    deliver_all(client, [sample_body("message.read", id="routed")])
    assert WebhookEvent.objects.using("postgres").get(event_id="message.read:routed").status == (
        "done"
    )
    assert not WebhookEvent.objects.using("default").filter(event_id="message.read:routed")
    assert [call["event_id"] for call in received.calls] == ["message.read:routed"]
    assert [message.id for message in check_settings()] == []


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ({}, "'SECRET'"),
        ("whsec_pasted", "'SECRET'"),
        ({"SECRET": "s", "WORKER": "celery"}, "'WORKER'"),
        ({"SECRET": "s", "DATABASE": "nope"}, "'DATABASE'"),
        ({"SECRET": "s", "RETENTION": -1}, "'RETENTION'"),
    ],
)
def test_each_check_hints_at_the_key_it_reports(settings: Any, value: Any, hint: str) -> None:
    """The hint says what to fix: not "set the SECRET" for a WORKER or DATABASE mistake."""
    settings.AEROSTIC_WEBHOOKS = value
    [error] = check_settings()
    assert error.hint is not None and hint in error.hint, error
    if hint != "'SECRET'":
        assert "'SECRET'" not in error.hint, error


def test_override_settings_gives_a_receiver_built_from_the_new_settings(
    client: Client, received: Recorder
) -> None:
    """A test that overrides AEROSTIC_WEBHOOKS gets it, even when an earlier request built the
    receiver already; handlers registered on that receiver stay registered."""
    from django.test import override_settings

    handled: list[str] = []
    get_receiver().on("contact.created")(lambda event: handled.append(event.data.id))
    body = sample_body("contact.created", id="before")
    assert post(client, Case("old", body, signed(body))).status_code == 200
    replaced = get_receiver()
    replaced.start()
    with override_settings(AEROSTIC_WEBHOOKS={"SECRET": "whsec_of_this_test"}):
        assert not replaced._worker.running  # closed, not left running beside the new one
        body = sample_body("contact.created", id="during")
        assert post(client, Case("new", body, signed(body, "whsec_of_this_test"))).status_code == (
            200
        )
        assert post(client, Case("old", body, signed(body))).status_code == 401
        assert get_receiver().drain(30)
    body = sample_body("contact.created", id="after")
    assert post(client, Case("old", body, signed(body))).status_code == 200
    assert get_receiver().drain(30)
    assert sorted(handled) == ["after", "before", "during"]
    assert sorted(call["event"].data.id for call in received.calls) == ["after", "before", "during"]


def test_override_settings_keeps_the_error_hooks_and_sends_webhook_failed_once(
    client: Client,
) -> None:
    """Error hooks registered on the receiver (``get_receiver().on_error``) stay registered on
    the one built from the new settings; the app's own hook is not registered twice."""
    from django.test import override_settings

    hooked: list[str] = []
    failures = Recorder()
    get_receiver().on_error(lambda event, error: hooked.append(str(error)))

    def broken(sender: type, **kwargs: Any) -> None:
        raise RuntimeError("CRM down")

    with (
        connected((signals.contact_created, broken), (webhook_failed, failures)),
        override_settings(AEROSTIC_WEBHOOKS={"SECRET": "whsec_of_this_test"}),
    ):
        body = sample_body("contact.created", id="boom")
        assert post(client, Case("new", body, signed(body, "whsec_of_this_test"))).status_code == (
            200
        )
        assert get_receiver().drain(30)
    assert [str(failure["error"]) for failure in failures.calls] == ["CRM down"]
    assert len(hooked) == 1


def test_a_row_sqlite_refuses_is_a_503_not_a_duplicate() -> None:
    """Only the unique event id's refusal means "duplicate", on SQLite too, which gives no
    SQLSTATE: a trigger's (or a CHECK constraint's) refusal is a 503 the sender retries."""
    from django.db import connections

    table = WebhookEvent._meta.db_table
    store = DjangoStore()
    receiver = WebhookReceiver(SECRET, store=store, worker_context=request_cycle)
    body = sample_body("message.received")
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute(
                f"CREATE TRIGGER aerostic_test_refuse BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'refused by the project'); END"
            )
        try:
            with pytest.raises(StoreUnavailable, match="refused by the project"):
                receiver.receive(body, signed(body))
            assert store.counts() == dict.fromkeys(Status, 0)
        finally:
            with connections["default"].cursor() as cursor:
                cursor.execute("DROP TRIGGER aerostic_test_refuse")
        assert receiver.receive(body, signed(body)).duplicate is False  # the sender's retry
        assert receiver.receive(body, signed(body)).duplicate is True
    finally:
        receiver.close()


def test_the_purge_command_is_silent_at_verbosity_0(settings: Any) -> None:
    """A cron job runs ``aerostic_webhooks_purge -v 0`` to hear only of errors."""
    settings.AEROSTIC_WEBHOOKS = {"SECRET": SECRET, "RETENTION": timedelta(hours=1)}
    store = DjangoStore()
    old = utcnow() - timedelta(hours=2)
    assert store.add(Record("old-done", "message.sent", b"{}", old, status=Status.DONE))
    output = io.StringIO()
    call_command("aerostic_webhooks_purge", verbosity=0, stdout=output)
    assert output.getvalue() == ""
    assert store.get("old-done") is None


PHONE = "9876543210"
MESSAGE_TEXT = "I need help"


def talkative_body() -> bytes:
    """A delivery whose phone number and text come first: PostgreSQL quotes only the first
    64 bytes of each value of a row it refuses."""
    payload = sample_payload("message.received")
    data = payload["data"]
    payload = {"data": {"from": data["from"], "text": data["text"], **data}} | payload
    payload["data"] = {"from": data["from"], "text": data["text"], **data}
    body = json.dumps(payload, separators=(",", ":")).encode()
    assert body.index(PHONE.encode()) < 60 and body.index(MESSAGE_TEXT.encode()) < 60, body
    return body


@contextlib.contextmanager
def postgres_rejecting(check: str) -> Iterator[None]:
    """A CHECK constraint on the table of the ``postgres`` database for the block, with bytea
    shown as text (``bytea_output = 'escape'``, a server setting some deployments have): a
    rejected row's DETAIL line then quotes the payload as it came."""
    from django.db import connections

    connection = connections["postgres"]
    table = WebhookEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER DATABASE {connection.settings_dict['NAME']} SET bytea_output = 'escape'"
        )
        cursor.execute("SET bytea_output = 'escape'")
        cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT aerostic_test_check CHECK ({check})")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT aerostic_test_check")
            cursor.execute(f"ALTER DATABASE {connection.settings_dict['NAME']} RESET bytea_output")


def logged_at_info_or_above(caplog: pytest.LogCaptureFixture) -> str:
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    return "\n".join(
        r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in records
    )


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_a_row_the_database_refuses_is_a_503_not_a_duplicate() -> None:
    """Only the unique event id's refusal means "duplicate": a CHECK constraint's (or any
    other integrity error's) was acknowledged as one, and the delivery lost."""
    store = DjangoStore(using="postgres")
    receiver = WebhookReceiver(SECRET, store=store, worker_context=request_cycle)
    try:
        body = sample_body("message.received")
        with postgres_rejecting("event_type <> 'message.received'"):
            with pytest.raises(StoreUnavailable, match="violates check constraint"):
                receiver.receive(body, signed(body))
            assert store.counts() == dict.fromkeys(Status, 0)
            record = Record("x", "message.received", b"{}", utcnow())
            with pytest.raises(StoreUnavailable):
                store.add_many(
                    [record._replace(event_id="y", event_type="contact.created"), record]
                )
            assert store.get("y") is None  # all or none
        assert receiver.receive(body, signed(body)).duplicate is False  # the sender's retry
        assert receiver.receive(body, signed(body)).duplicate is True
    finally:
        receiver.close()


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_a_refused_row_logs_the_failure_but_not_the_payload_it_quotes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL's error text quotes the refused row ("DETAIL: Failing row contains (...)"),
    phone numbers and message texts included: the log names the failure, not the row."""
    caplog.set_level(logging.DEBUG, logger="aerostic_webhooks")
    store = DjangoStore(using="postgres")
    receiver = WebhookReceiver(SECRET, store=store, worker_context=request_cycle, lease_seconds=1.5)
    try:
        body = talkative_body()
        refusing = postgres_rejecting("event_type <> 'message.received'")
        with refusing, pytest.raises(StoreUnavailable) as refused:
            receiver.receive(body, signed(body))
        assert PHONE not in refused.value.reason and MESSAGE_TEXT not in refused.value.reason
        logged = logged_at_info_or_above(caplog)
        assert "violates check constraint" in logged  # what failed
        assert PHONE not in logged and MESSAGE_TEXT not in logged
        # The worker: marking the record done is refused too, and it says so.
        caplog.clear()
        with postgres_rejecting("status <> 'done'"):
            assert receiver.receive(body, signed(body)).duplicate is False
            assert wait_until(lambda: "could not mark" in caplog.text)
        logged = logged_at_info_or_above(caplog)
        assert "violates check constraint" in logged
        assert PHONE not in logged and MESSAGE_TEXT not in logged
    finally:
        receiver.close()


def add_rows(*records: tuple[str, str, Status]) -> None:
    now = utcnow()
    for event_id, event_type, status in records:
        body = sample_body(event_type) if event_type in SAMPLE_PAYLOADS else b"{}"
        assert DjangoStore().add(Record(event_id, event_type, body, now, status=status))


def changelist_queries(
    client: Client, params: dict[str, str] | None = None, using: str = "default"
) -> tuple[str, str]:
    """The changelist's page and the SQL it ran on the events' table, one statement a line."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connections[using]) as captured:
        response = client.get(CHANGELIST, params or {})
    assert response.status_code == 200
    table = WebhookEvent._meta.db_table
    sql = [q["sql"] for q in captured.captured_queries if table in q["sql"]]
    return response.content.decode(), "\n".join(sql)


def test_the_admin_changelist_runs_no_query_that_scans_a_big_table(client: Client) -> None:
    """Millions of rows: no SELECT DISTINCT for the type filter's choices or the dates, and
    one COUNT (the page's), not a second one of the whole table."""
    add_rows(
        ("message.received:a", "message.received", Status.DONE),
        ("order.shipped:b", "order.shipped", Status.FAILED),
    )
    admin_client(client)
    page, sql = changelist_queries(client)
    assert "message.received:a" in page and "order.shipped:b" in page
    assert "DISTINCT" not in sql.upper(), sql
    assert "date_trunc" not in sql.lower(), sql
    assert sql.upper().count("COUNT(") == 1, sql
    # The type filter offers every known type, with rows or not, and the others.
    for event_type in SIGNALS_BY_TYPE:
        assert f"event_type={event_type}" in page, event_type
    assert "event_type=__other__" in page
    page, sql = changelist_queries(client, {"event_type": "__other__"})
    assert "order.shipped:b" in page and "message.received:a" not in page
    page, sql = changelist_queries(client, {"event_type": "order.shipped"})
    assert "order.shipped:b" in page and "message.received:a" not in page


@pytest.mark.skipif(not POSTGRES_AVAILABLE, reason="see test_postgres_is_reachable")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_postgres_the_unfiltered_changelist_takes_the_planners_estimate_not_a_count(
    client: Client, settings: Any
) -> None:
    """``SELECT COUNT(*)`` of millions of rows takes seconds on PostgreSQL: unfiltered, the
    changelist shows the planner's estimate (``pg_class.reltuples``) once it is large; a
    filter or a search still counts its rows exactly."""
    from django.db import connections

    settings.AEROSTIC_WEBHOOKS = {**settings.AEROSTIC_WEBHOOKS, "DATABASE": "postgres"}
    table = WebhookEvent._meta.db_table
    admin_client(client)
    add = DjangoStore(using="postgres").add
    assert add(Record("order.shipped:few", "order.shipped", b"{}", utcnow()))
    # Never analyzed (reltuples -1), or small: the real count.
    with connections["postgres"].cursor() as cursor:
        cursor.execute(f"ANALYZE {table}")
    page, sql = changelist_queries(client, using="postgres")
    assert "order.shipped:few" in page
    assert sql.upper().count("COUNT(") == 1, sql
    rows = 10_500  # past the estimate the admin trusts (10,000 rows)
    with connections["postgres"].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (event_id, event_type, body, received_at, status, attempts, "
            "last_error) SELECT 'message.read:bulk' || n, 'message.read', '\\x7b7d'::bytea, "
            "now() - interval '1 day', 'done', 1, '' FROM generate_series(1, %s) AS n",
            [rows],
        )
        cursor.execute(f"ANALYZE {table}")
    page, sql = changelist_queries(client, using="postgres")
    assert "COUNT(" not in sql.upper(), sql
    assert "order.shipped:few" in page
    assert f"{rows + 1:,}".replace(",", "") in page.replace(",", "")  # the estimate, exact here
    # Filtered, searched: counted exactly.
    page, sql = changelist_queries(client, {"event_type": "order.shipped"}, using="postgres")
    assert sql.upper().count("COUNT(") == 1, sql
    assert "1 webhook event" in page and "message.read:bulk" not in page
    page, sql = changelist_queries(client, {"q": "order.shipped:few"}, using="postgres")
    assert sql.upper().count("COUNT(") == 1, sql
    assert "1 webhook event" in page
    page, sql = changelist_queries(client, {"status__exact": "done"}, using="postgres")
    assert sql.upper().count("COUNT(") == 1, sql
    assert f"{rows} webhook events" in page.replace(",", "")


def test_the_admin_search_finds_an_event_id_or_data_id_exactly_through_the_index(
    client: Client,
) -> None:
    """``LIKE '%term%'`` (icontains) no index serves: the search box takes an event id, or
    the data id of an event of a known type, and looks them up in the unique index."""
    add_rows(
        ("message.received:msg_1", "message.received", Status.DONE),
        ("message.received:msg_12", "message.received", Status.DONE),
        ("order.shipped:ord_1", "order.shipped", Status.DONE),
    )
    admin_client(client)
    page, sql = changelist_queries(client, {"q": "msg_1"})
    assert "message.received:msg_1<" in page and "message.received:msg_12" not in page
    assert "LIKE" not in sql.upper(), sql
    page, _ = changelist_queries(client, {"q": " order.shipped:ord_1 "})
    assert "order.shipped:ord_1<" in page and "msg_1" not in page  # the row, not the box
    page, _ = changelist_queries(client, {"q": "msg"})
    assert "message.received:msg_1" not in page  # no partial match


def test_reprocessing_is_one_update_for_the_selection_then_one_wake(
    client: Client, monkeypatch: pytest.MonkeyPatch, received: Recorder
) -> None:
    """Not one ``retry()`` (a query and a wake) per row in one request; and under
    ATOMIC_REQUESTS the worker is woken once the request's transaction commits: woken before,
    it finds nothing due yet and the events wait for its next look."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    add_rows(*[(f"contact.created:c{n}", "contact.created", Status.FAILED) for n in range(5)])
    now = utcnow()
    busy = Record("contact.created:busy", "contact.created", b"{}", now, status=Status.PROCESSING)
    assert DjangoStore().add(
        busy._replace(attempts=1, lease_owner="w", lease_expires_at=now + timedelta(minutes=5))
    )
    receiver = get_receiver()
    receiver.start()
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", True)
    woken_in_transaction: list[bool] = []
    wake = type(receiver._worker).wake

    def spy(worker: Any) -> None:
        woken_in_transaction.append(connections["default"].in_atomic_block)
        wake(worker)

    monkeypatch.setattr(type(receiver._worker), "wake", spy)
    admin_client(client)
    pks = list(WebhookEvent.objects.values_list("pk", flat=True))
    with CaptureQueriesContext(connections["default"]) as captured:
        response = client.post(
            CHANGELIST, {"action": "reprocess", "_selected_action": pks}, follow=True
        )
    page = response.content.decode()
    assert "5 event(s) queued to be processed again." in page
    assert "1 event(s) are being processed now; not queued." in page
    updates = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("UPDATE")]
    assert len([sql for sql in updates if WebhookEvent._meta.db_table in sql]) == 1, updates
    assert woken_in_transaction[:1] == [False]
    assert receiver.drain(30)
    assert len(received.calls) == 5


def test_reprocessing_more_than_the_bound_queues_none_and_says_so(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aerostic_webhooks.django import admin as webhook_admin

    monkeypatch.setattr(webhook_admin, "MAX_REPROCESS", 3)
    add_rows(*[(f"contact.created:c{n}", "contact.created", Status.FAILED) for n in range(4)])
    admin_client(client)
    pks = list(WebhookEvent.objects.values_list("pk", flat=True))
    response = client.post(
        CHANGELIST, {"action": "reprocess", "_selected_action": pks}, follow=True
    )
    assert "More than 3 events selected; none queued." in response.content.decode()
    assert set(WebhookEvent.objects.values_list("status", flat=True)) == {"failed"}
    response = client.post(  # as many as the bound: all of them
        CHANGELIST, {"action": "reprocess", "_selected_action": pks[:3]}, follow=True
    )
    assert "3 event(s) queued to be processed again." in response.content.decode()


def test_the_store_purges_sqlite_in_batches_that_let_deliveries_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One DELETE of 150,000 rows held SQLite's write lock for over a second (a delivery
    waits, or meets "database is locked" past the timeout): batches of PURGE_BATCH."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from aerostic_webhooks.django import store as django_store

    monkeypatch.setattr(django_store, "PURGE_BATCH", 2)
    old = utcnow() - timedelta(days=30)
    for n in range(5):
        assert DjangoStore().add(Record(f"old{n}", "message.sent", b"{}", old, status=Status.DONE))
    assert DjangoStore().add(Record("new", "message.sent", b"{}", utcnow(), status=Status.DONE))
    with CaptureQueriesContext(connections["default"]) as captured:
        assert DjangoStore().purge(older_than=utcnow() - timedelta(days=7)) == 5
    deletes = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3, deletes
    assert list(WebhookEvent.objects.values_list("event_id", flat=True)) == ["new"]


def test_a_sqlite_purge_batch_spares_a_row_requeued_since_it_was_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each batch's ids are read, then deleted: a row requeued in between (the admin's
    Reprocess on an old dead letter) is pending again and must not be deleted with them."""
    old = utcnow() - timedelta(days=30)
    assert DjangoStore().add(Record("old", "message.sent", b"{}", old, status=Status.FAILED))
    real_delete = QuerySet.delete

    def requeued_first(self: QuerySet[Any]) -> tuple[int, dict[str, int]]:
        monkeypatch.setattr(QuerySet, "delete", real_delete)
        assert DjangoStore().requeue("old")
        return real_delete(self)

    monkeypatch.setattr(QuerySet, "delete", requeued_first)
    assert DjangoStore().purge(older_than=utcnow() - timedelta(days=7)) == 0
    kept = DjangoStore().get("old")
    assert kept is not None and kept.status is Status.PENDING


def test_the_store_requeues_failed_rows_on_sqlite_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As purge, and as SQLiteStore's requeue_failed: one UPDATE of a day's dead letters held
    SQLite's one write lock while deliveries waited (the admin sends a selection over its
    bound to requeue_failed())."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from aerostic_webhooks.django import store as django_store

    monkeypatch.setattr(django_store, "PURGE_BATCH", 2)
    now = utcnow()
    for n in range(5):
        assert DjangoStore().add(Record(f"f{n}", "message.sent", b"{}", now, status=Status.FAILED))
    assert DjangoStore().add(Record("done", "message.sent", b"{}", now, status=Status.DONE))
    with CaptureQueriesContext(connections["default"]) as captured:
        assert DjangoStore().requeue_failed() == 5
    table = WebhookEvent._meta.db_table
    updates = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("UPDATE")]
    assert len([sql for sql in updates if table in sql]) == 3, updates
    assert DjangoStore().counts() == {
        Status.PENDING: 5,
        Status.PROCESSING: 0,
        Status.DONE: 1,
        Status.FAILED: 0,
    }
