"""The testing toolkit: the pytest fixtures and one-call deliveries through each test client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aerostic_webhooks import (
    Event,
    MemoryStore,
    MessageReceived,
    WebhookReceiver,
    sign,
    verify_signature,
)
from aerostic_webhooks.stores import Status
from aerostic_webhooks.testing import (
    SAMPLE_PAYLOADS,
    deliver_asgi,
    deliver_django,
    deliver_flask,
    sample_body,
    sample_payload,
)

from .conftest import SECRET


def test_the_fixtures_are_registered_by_the_plugin(
    aerostic_receiver: WebhookReceiver,
    aerostic_signer: Callable[[Any], tuple[bytes, dict[str, str]]],
    aerostic_secret: str,
) -> None:
    seen: list[str] = []
    aerostic_receiver.on("message.received")(lambda event: seen.append(event.data.id))
    body, headers = aerostic_signer("message.received")
    verify_signature(body, headers["X-Aerostic-Signature"], aerostic_secret)
    receipt = aerostic_receiver.receive(body, headers)
    assert isinstance(receipt.event, MessageReceived)
    assert aerostic_receiver.drain(5)
    assert seen == ["msg_abc123"]


def test_the_signer_takes_dicts_bytes_and_event_types(
    aerostic_signer: Callable[[Any], tuple[bytes, dict[str, str]]],
    aerostic_receiver: WebhookReceiver,
) -> None:
    contact = sample_payload("contact.created", id="c1")
    expected: list[tuple[Any, Callable[[bytes], bool]]] = [
        (contact, lambda body: json.loads(body) == contact),
        (b'{"x":1}', lambda body: body == b'{"x":1}'),  # bytes are signed as given, not re-encoded
        ("message.read", lambda body: json.loads(body) == SAMPLE_PAYLOADS["message.read"]),
    ]
    for payload, is_body in expected:
        body, headers = aerostic_signer(payload)
        assert is_body(body), (payload, body)
        verify_signature(body, headers["X-Aerostic-Signature"], "whsec_pytest_aerostic_webhooks")


def test_sample_payload_takes_python_or_wire_names_for_data_fields() -> None:
    phone = "+15550001111"
    assert sample_payload("message.received", from_=phone)["data"]["from"] == phone
    assert "from_" not in sample_payload("message.received", from_=phone)["data"]
    assert sample_payload("message.received", **{"from": phone})["data"]["from"] == phone
    read = sample_payload("message.read", read_at="2026-02-01T00:00:00Z")["data"]
    assert read["readAt"] == "2026-02-01T00:00:00Z" and "read_at" not in read
    assert sample_payload("contact.created", source="ads")["data"]["source"] == "ads"
    delivered = sample_payload("message.delivered", delivered_at=None)["data"]
    assert "deliveredAt" in delivered and delivered["deliveredAt"] is None  # null, as sent


def test_sample_body_keeps_non_ascii_text_as_utf8() -> None:
    text = "Olá, pedido nº 5 ✓"
    body = sample_body("message.received", text=text)
    assert text.encode() in body
    assert json.loads(body) == sample_payload("message.received", text=text)


def test_sample_payload_overrides_data_and_rejects_unknown_types() -> None:
    assert sample_payload("message.failed", id="x")["data"]["id"] == "x"
    assert SAMPLE_PAYLOADS["message.failed"]["data"]["id"] == "msg_ghi789"  # a copy was changed
    with pytest.raises(ValueError, match="no sample"):
        sample_payload("order.shipped")


def assert_sent_as_aerostic_sends(
    sent: list[tuple[str, bytes, dict[str, str]]], expected: list[tuple[str, dict[str, Any]]]
) -> None:
    """Each request went to its path with the payload as body, signed, and declared JSON."""
    assert [(path, json.loads(body)) for path, body, _ in sent] == expected
    for _, body, headers in sent:
        assert headers["X-Aerostic-Signature"] == sign(body, SECRET)
        assert headers["Content-Type"] == "application/json"


def test_deliver_flask_posts_the_signed_payload_to_the_url() -> None:
    pytest.importorskip("flask", reason="Flask is not installed")
    import flask

    app = flask.Flask(__name__)
    sent: list[tuple[str, bytes, dict[str, str]]] = []

    @app.post("/<path:path>")
    def record(path: str) -> str:
        sent.append((flask.request.path, flask.request.get_data(), dict(flask.request.headers)))
        return "ok"

    contact = sample_payload("contact.created", name="Ana")
    deliver_flask(app.test_client(), "message.read", SECRET)
    deliver_flask(app.test_client(), contact, SECRET, url="/hooks/mine")
    assert_sent_as_aerostic_sends(
        sent,
        [("/webhooks/aerostic", SAMPLE_PAYLOADS["message.read"]), ("/hooks/mine", contact)],
    )


def test_deliver_asgi_posts_the_signed_payload_to_the_url() -> None:
    pytest.importorskip("starlette", reason="Starlette is not installed")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    sent: list[tuple[str, bytes, dict[str, str]]] = []

    async def record(request: Request) -> PlainTextResponse:
        sent.append((request.url.path, await request.body(), dict(request.headers)))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])
    contact = sample_payload("contact.created", name="Ana")
    with TestClient(app) as client:
        deliver_asgi(client, "message.read", SECRET)
        deliver_asgi(client, contact, SECRET, url="/hooks/mine")
    # Starlette gives header names in lower case, as they travel in HTTP/2 and ASGI.
    sent = [(path, body, {k.title(): v for k, v in h.items()}) for path, body, h in sent]
    assert_sent_as_aerostic_sends(
        sent,
        [("/webhooks/aerostic", SAMPLE_PAYLOADS["message.read"]), ("/hooks/mine", contact)],
    )


def test_deliver_flask(aerostic_receiver: WebhookReceiver, aerostic_secret: str) -> None:
    flask = pytest.importorskip("flask", reason="Flask is not installed")
    from aerostic_webhooks.flask import webhook_blueprint

    app = flask.Flask(__name__)
    app.register_blueprint(webhook_blueprint(aerostic_receiver), url_prefix="/webhooks/aerostic")
    response = deliver_flask(app.test_client(), "message.sent", aerostic_secret)
    assert (response.status_code, response.json) == (200, {"received": True})
    assert deliver_flask(app.test_client(), "message.sent", "wrong").status_code == 401


def test_deliver_asgi(aerostic_receiver: WebhookReceiver, aerostic_secret: str) -> None:
    pytest.importorskip("fastapi", reason="FastAPI is not installed")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from aerostic_webhooks.fastapi import webhook_router

    app = FastAPI()
    app.include_router(webhook_router(aerostic_receiver), prefix="/webhooks/aerostic")
    seen: list[Event] = []
    aerostic_receiver.on("*")(seen.append)
    with TestClient(app) as client:
        response = deliver_asgi(client, "contact.created", aerostic_secret)
        assert deliver_asgi(client, "contact.created", "wrong").status_code == 401
    assert (response.status_code, response.json()) == (200, {"received": True})
    assert [event.event for event in seen] == ["contact.created"]


@pytest.mark.django_db(transaction=True)
def test_deliver_django() -> None:
    pytest.importorskip("django", reason="Django is not installed")
    from django.apps import apps
    from django.test import Client

    config = apps.get_app_config("aerostic_webhooks")
    config._receiver = None  # type: ignore[attr-defined]
    try:
        response = deliver_django(Client(), "message.delivered", "whsec_adapter_secret")
        assert response.status_code == 200
        assert deliver_django(Client(), "message.delivered", "wrong").status_code == 401
        # tests/django_urls.py routes the view at /hooks/ too, and nothing at /elsewhere/.
        hooks = deliver_django(Client(), "message.read", "whsec_adapter_secret", url="/hooks/")
        assert hooks.status_code == 200
        elsewhere = deliver_django(Client(), "message.read", "whsec_adapter_secret", "/elsewhere/")
        assert elsewhere.status_code == 404
    finally:
        if config._receiver is not None:  # type: ignore[attr-defined]
            config._receiver.close()  # type: ignore[attr-defined]
            config._receiver = None  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_the_readmes_recipe_for_a_django_test_runs_the_receivers() -> None:
    """README, "Testing your handlers": transaction=True, drain(), then close()."""
    pytest.importorskip("django", reason="Django is not installed")
    from django.apps import apps
    from django.test import Client

    from aerostic_webhooks.django import get_receiver
    from aerostic_webhooks.django.signals import contact_created

    apps.get_app_config("aerostic_webhooks")._receiver = None  # type: ignore[attr-defined]
    seen: list[str] = []

    def on_contact(sender: object, event: object, event_id: str, **kwargs: object) -> None:
        seen.append(event_id)

    contact_created.connect(on_contact)
    try:
        response = deliver_django(Client(), "contact.created", "whsec_adapter_secret")
        assert response.status_code == 200
        assert get_receiver().drain(5)
        assert [event_id.split(":")[0] for event_id in seen] == ["contact.created"]
    finally:
        contact_created.disconnect(on_contact)
        get_receiver().close()


def test_the_receiver_retries_at_once_and_dead_letters_on_drain(
    aerostic_receiver: WebhookReceiver,
    aerostic_signer: Callable[[Any], tuple[bytes, dict[str, str]]],
) -> None:
    assert isinstance(aerostic_receiver.store, MemoryStore)
    calls: list[str] = []

    @aerostic_receiver.on("*")
    def flaky(event: Event) -> None:
        calls.append(event.event)
        if event.event == "message.failed" or calls.count(event.event) < 3:
            raise RuntimeError("not yet")

    # A handler's failure is the worker's business: receive() still acknowledges it.
    flaky_id = aerostic_receiver.receive(*aerostic_signer("message.sent")).event_id
    failing_id = aerostic_receiver.receive(*aerostic_signer("message.failed")).event_id
    assert aerostic_receiver.drain(5)
    assert calls.count("message.sent") == 3  # failed twice, then the second retry succeeded
    flaky_record = aerostic_receiver.store.get(flaky_id)
    assert flaky_record is not None and flaky_record.status is Status.DONE
    failing_record = aerostic_receiver.store.get(failing_id)
    assert failing_record is not None and failing_record.status is Status.FAILED
    assert failing_record.last_error is not None and "not yet" in failing_record.last_error


def test_the_secret_fixture_can_configure_a_receiver_from_the_environment(
    aerostic_secret: str,
    aerostic_signer: Callable[[Any], tuple[bytes, dict[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AEROSTIC_WEBHOOK_SECRET", aerostic_secret)
    with WebhookReceiver(store=MemoryStore()) as app_receiver:
        assert not app_receiver.receive(*aerostic_signer("message.sent")).duplicate


USER_TESTS = {
    "pytest.ini": "",
    "test_receivers.py": """
        import threading

        from aerostic_webhooks import WebhookReceiver
        from aerostic_webhooks.testing import sample_payload

        earlier: list[WebhookReceiver] = []


        def test_reply_to_customer(aerostic_receiver, aerostic_signer):
            replies = []
            aerostic_receiver.on("message.received")(lambda event: replies.append(event.data.from_))
            aerostic_receiver.receive(*aerostic_signer(sample_payload("message.received", id="m1")))
            aerostic_receiver.drain()
            assert replies == ["+919876543210"]
            earlier.append(aerostic_receiver)


        def test_each_test_has_a_fresh_receiver_and_the_last_one_was_closed(
            aerostic_receiver, aerostic_signer
        ):
            running = [t.name for t in threading.enumerate() if t.name.startswith("aerostic-")]
            assert running == []
            assert earlier and aerostic_receiver is not earlier[0]
            assert aerostic_receiver.handlers_for("message.received") == ()
            receipt = aerostic_receiver.receive(
                *aerostic_signer(sample_payload("message.received", id="m1"))
            )
            assert not receipt.duplicate
        """,
    "custom/conftest.py": """
        import pytest


        @pytest.fixture
        def aerostic_secret():
            return "whsec_my_app"
        """,
    "custom/test_my_secret.py": """
        from aerostic_webhooks import verify_signature
        from aerostic_webhooks.testing import sample_payload, signed_request


        def test_the_fixtures_use_the_overridden_secret(aerostic_receiver, aerostic_signer):
            body, headers = aerostic_signer("message.read")
            verify_signature(body, headers["X-Aerostic-Signature"], "whsec_my_app")
            body, headers = signed_request(sample_payload("message.sent"), "whsec_my_app")
            aerostic_receiver.receive(body, headers)
        """,
}


def test_the_plugin_serves_a_fresh_project_without_configuration(tmp_path: Path) -> None:
    for name, text in USER_TESTS.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = dict(os.environ)
    for name in ("AEROSTIC_WEBHOOKS_DB", "PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)  # a user's project: the default inbox would be in the project
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:randomly"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout, result.stdout
    assert not list(tmp_path.glob("**/*.sqlite3*"))  # the receivers' inbox was in memory
