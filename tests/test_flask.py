"""The Flask blueprint: the response contract through Flask's test client."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

pytest.importorskip("flask", reason="Flask is not installed: pip install -e '.[flask]'")

import flask
import flask.json.provider
import flask.testing
from werkzeug.test import TestResponse, create_environ, run_wsgi_app

from aerostic_webhooks import Event, MemoryStore, WebhookReceiver
from aerostic_webhooks.flask import webhook_blueprint
from aerostic_webhooks.stores import Record, SQLiteStore

from .contract import (
    FAILED,
    LIMIT,
    SECRET,
    TOO_LARGE,
    UNAVAILABLE,
    Case,
    cases,
    signed,
)
from .contract import sample_body as sample

URL = "/webhooks/aerostic"
ROOT = Path(__file__).resolve().parent.parent


def make_app(receiver: WebhookReceiver) -> flask.Flask:
    app = flask.Flask(__name__)
    app.register_blueprint(webhook_blueprint(receiver), url_prefix=URL)
    return app


@pytest.fixture
def webhooks() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET, store=MemoryStore(), max_body_bytes=LIMIT) as receiver:
        yield receiver


@pytest.fixture
def client(webhooks: WebhookReceiver) -> flask.testing.FlaskClient:
    return make_app(webhooks).test_client()


class Answer:
    def __init__(self, status_code: int, headers: dict[str, str], data: bytes) -> None:
        self.status_code, self.headers, self.data = status_code, headers, data


def post_stream(
    app: flask.Flask, stream: io.RawIOBase | io.BytesIO, headers: dict[str, str], length: int | None
) -> Answer:
    """POST straight through WSGI, as a server does: chunked (no CONTENT_LENGTH) or declared."""
    environ = create_environ(URL, method="POST", headers=headers)
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = stream
    if length is None:
        environ["wsgi.input_terminated"] = True  # what gunicorn sets for a chunked body
    else:
        environ["CONTENT_LENGTH"] = str(length)
    app_iter, status, response_headers = run_wsgi_app(app.wsgi_app, environ, buffered=True)
    return Answer(int(status.split()[0]), dict(response_headers), b"".join(app_iter))


def assert_answer(response: TestResponse | Answer, case: Case) -> None:
    assert response.status_code == case.status, case.name
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.data) == case.json, case.name


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_contract_with_content_length(client: flask.testing.FlaskClient, case: Case) -> None:
    assert_answer(client.post(URL, data=case.body, headers=case.headers), case)


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_contract_chunked_without_content_length(webhooks: WebhookReceiver, case: Case) -> None:
    headers = {**case.headers, "Transfer-Encoding": "chunked"}
    assert_answer(post_stream(make_app(webhooks), io.BytesIO(case.body), headers, None), case)


def test_accepted_events_are_recorded_and_handled(webhooks: WebhookReceiver) -> None:
    seen: list[str] = []
    webhooks.on("*")(lambda event: seen.append(event.event))
    client = make_app(webhooks).test_client()
    body = sample("contact.created")
    assert client.post(URL, data=body, headers=signed(body)).status_code == 200
    assert client.post(URL + "/", data=body, headers=signed(body)).status_code == 200  # dup
    assert webhooks.drain(5)
    assert seen == ["contact.created"]


@pytest.mark.parametrize("path", [URL, URL + "/"])
def test_both_spellings_answer_without_redirect(
    client: flask.testing.FlaskClient, path: str
) -> None:
    body = sample("message.sent")
    response = client.post(path, data=body, headers=signed(body), follow_redirects=False)
    assert response.status_code == 200


def test_a_prefix_given_with_its_slash_answers_both_spellings_without_redirect(
    webhooks: WebhookReceiver,
) -> None:
    app = flask.Flask(__name__)
    app.register_blueprint(webhook_blueprint(webhooks), url_prefix=URL + "/")
    client = app.test_client()
    body = sample("message.sent")
    for path in (URL, URL + "/"):
        response = client.post(path, data=body, headers=signed(body), follow_redirects=False)
        assert response.status_code == 200, path


def test_a_blueprint_without_a_prefix_is_refused_at_registration(
    webhooks: WebhookReceiver,
) -> None:
    with pytest.raises(ValueError, match="url_prefix"):
        flask.Flask(__name__).register_blueprint(webhook_blueprint(webhooks))


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_other_methods_get_405(client: flask.testing.FlaskClient, method: str) -> None:
    assert client.open(URL, method=method).status_code == 405
    assert client.open(URL + "/", method=method).status_code == 405


def test_declared_length_over_the_limit_is_refused_before_reading(
    webhooks: WebhookReceiver,
) -> None:
    class Unreadable(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise AssertionError("the body must not be read")

    response = post_stream(make_app(webhooks), Unreadable(), signed(b""), LIMIT + 1)
    assert_answer(response, Case("declared", b"", status=413, json=TOO_LARGE))


def test_a_chunked_body_is_read_to_at_most_limit_plus_one(webhooks: WebhookReceiver) -> None:
    class Endless(io.RawIOBase):
        served = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            buffer[:] = b"x" * len(buffer)
            self.served += len(buffer)
            return len(buffer)

    stream = Endless()
    response = post_stream(make_app(webhooks), stream, {"Transfer-Encoding": "chunked"}, None)
    assert_answer(response, Case("endless", b"", status=413, json=TOO_LARGE))
    assert stream.served <= LIMIT + 1


def test_never_touches_flask_json_or_form(
    webhooks: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("the adapter must not parse the body with Flask")

    monkeypatch.setattr(flask.Request, "get_json", forbidden)
    monkeypatch.setattr(flask.Request, "_load_form_data", forbidden)
    app = make_app(webhooks)

    class Provider(flask.json.provider.DefaultJSONProvider):
        loads = staticmethod(forbidden)
        dumps = staticmethod(forbidden)

    app.json = Provider(app)
    body = sample("message.read")
    response = app.test_client().post(
        URL, data=body, headers={**signed(body), "Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert json.loads(response.data) == {"received": True}


def test_store_unavailable_is_503() -> None:
    class Down(MemoryStore):
        def add(self, record: Record) -> bool:
            raise ConnectionError("down")

    with WebhookReceiver(SECRET, store=Down()) as receiver:
        body = sample("message.received")
        response = make_app(receiver).test_client().post(URL, data=body, headers=signed(body))
    assert_answer(response, Case("503", body, status=503, json=UNAVAILABLE))


def test_inline_handler_failure_is_500() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore(), process="inline") as receiver:

        @receiver.on("*")
        def broken(event: Event) -> None:
            raise RuntimeError("nope")

        body = sample("message.received")
        response = make_app(receiver).test_client().post(URL, data=body, headers=signed(body))
    assert_answer(response, Case("500", body, status=500, json=FAILED))


def test_the_first_request_to_any_route_starts_the_worker(webhooks: WebhookReceiver) -> None:
    app = make_app(webhooks)
    app.add_url_rule("/health", "health", lambda: "ok")
    assert not webhooks._worker.running  # registered only: a CLI command, a reloader parent
    assert app.test_client().get("/health").status_code == 200
    assert webhooks._worker.running


def test_the_worker_starting_hook_leaves_the_app_after_its_first_request(
    webhooks: WebhookReceiver,
) -> None:
    """Once the worker is started, the app's other requests no longer run the hook; the
    app's own hooks stay, and each app the blueprint is on starts the worker once."""
    seen: list[str] = []
    apps = [make_app(webhooks), make_app(webhooks)]
    for app in apps:
        app.before_request(lambda: seen.append("own"))
        app.add_url_rule("/health", "health", lambda: "ok")
    before = [list(app.before_request_funcs[None]) for app in apps]
    assert all(len(hooks) == 2 for hooks in before)
    for app in apps:
        for _ in range(2):
            assert app.test_client().get("/health").status_code == 200
        assert len(app.before_request_funcs[None]) == 1
    assert webhooks._worker.running
    assert seen == ["own"] * 4


# A pending delivery, then the example app loaded by a Flask command that serves nothing.
PENDING = """
import sys
from aerostic_webhooks import WebhookReceiver, sign
from aerostic_webhooks.testing import sample_body

receiver = WebhookReceiver(process="external")
body = sample_body("message.received")
receiver.receive(body, {"X-Aerostic-Signature": sign(body, sys.argv[1])})
receiver.close()
"""
HANDLED = """
import os, sys, time
sys.path.insert(0, {examples!r})
import flask_app

@flask_app.webhooks.on("*")
def mark(event):
    open({marker!r}, "w").close()
    time.sleep(2)

app = flask_app.create_app()
"""


def test_a_flask_command_that_serves_nothing_runs_no_handler(tmp_path: Path) -> None:
    """`flask routes`, `flask shell`, `flask db upgrade` and the reloader's parent process of
    `flask run --debug` (which never reloads its code) load the app but serve no request:
    none of them may take recorded deliveries and run handlers, or leave them processing."""
    flask_command = shutil.which("flask", path=str(Path(sys.executable).parent))
    if flask_command is None:
        pytest.skip("the flask command is not installed")
    marker = tmp_path / "handled"
    (tmp_path / "served_app.py").write_text(
        HANDLED.format(examples=str(ROOT / "examples"), marker=str(marker))
    )
    env = {
        **os.environ,
        "AEROSTIC_WEBHOOK_SECRET": SECRET,
        "AEROSTIC_WEBHOOKS_DB": str(tmp_path / "inbox.sqlite3"),
        "PYTHONPATH": str(ROOT),
    }
    run = functools.partial(
        subprocess.run, env=env, cwd=tmp_path, capture_output=True, timeout=60, check=True
    )
    run([sys.executable, "-c", PENDING, SECRET])
    run([flask_command, "--app", "served_app", "routes"])
    assert not marker.exists(), "a handler ran in `flask routes`"
    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    try:
        record = store.get("message.received:msg_abc123")
    finally:
        store.close()
    assert record is not None
    assert record.status == "pending"


def test_two_receivers_on_one_app_and_one_blueprint_on_two_apps() -> None:
    with (
        WebhookReceiver("secret-a", store=MemoryStore()) as first,
        WebhookReceiver("secret-b", store=MemoryStore()) as second,
    ):
        app = flask.Flask(__name__)
        app.register_blueprint(webhook_blueprint(first, name="first"), url_prefix="/a")
        app.register_blueprint(webhook_blueprint(second, name="second"), url_prefix="/b")
        client = app.test_client()
        body = sample("message.received")
        assert client.post("/a", data=body, headers=signed(body, "secret-a")).status_code == 200
        assert client.post("/b", data=body, headers=signed(body, "secret-b")).status_code == 200
        assert client.post("/a", data=body, headers=signed(body, "secret-b")).status_code == 401
        assert client.post("/b/", data=body, headers=signed(body, "secret-a")).status_code == 401

        blueprint = webhook_blueprint(first, name="shared")
        apps = [flask.Flask("one"), flask.Flask("two")]
        for each in apps:
            each.register_blueprint(blueprint, url_prefix="/hooks")
        other = sample("message.sent")
        for each in apps:
            response = each.test_client().post(
                "/hooks", data=other, headers=signed(other, "secret-a")
            )
            assert response.status_code == 200
        assert first.store.get("message.sent:msg_def456") is not None


def test_an_external_receiver_runs_no_worker_in_the_web_process() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore(), process="external") as receiver:
        client = make_app(receiver).test_client()
        body = sample("message.received")
        assert client.post(URL, data=body, headers=signed(body)).status_code == 200
        assert not receiver._worker.running
        record = receiver.store.get("message.received:msg_abc123")
        assert record is not None
        assert record.status == "pending"


def test_the_receiver_limit_not_max_content_length_bounds_the_route(
    webhooks: WebhookReceiver,
) -> None:
    app = make_app(webhooks)
    app.config["MAX_CONTENT_LENGTH"] = 16  # the app's other routes; the receiver's limit rules here
    body = sample("message.received")
    assert len(body) > 16
    response = app.test_client().post(URL, data=body, headers=signed(body))
    assert (response.status_code, json.loads(response.data)) == (200, {"received": True})
    huge = b"x" * (LIMIT + 1)
    response = app.test_client().post(URL, data=huge, headers=signed(huge))
    assert_answer(response, Case("over", huge, status=413, json=TOO_LARGE))


def test_a_body_a_before_request_hook_read_first_is_received(webhooks: WebhookReceiver) -> None:
    """A request logger reading ``request.get_data()`` before the blueprint: the body comes
    from Werkzeug, not from the server's input (on a socket that read would never end)."""
    app = make_app(webhooks)
    logged: list[int] = []

    @app.before_request
    def log_body() -> None:
        logged.append(len(flask.request.get_data()))

    body = sample("message.delivered")
    response = app.test_client().post(URL, data=body, headers=signed(body))
    assert (response.status_code, json.loads(response.data)) == (200, {"received": True})
    assert logged == [len(body)]
    huge = b"x" * (LIMIT + 1)
    assert_answer(
        app.test_client().post(URL, data=huge, headers=signed(huge)),
        Case("over", huge, status=413, json=TOO_LARGE),
    )


def test_a_chunked_body_with_a_content_length_is_read_whole(webhooks: WebhookReceiver) -> None:
    """Werkzeug's server passes a chunked request's Content-Length along; the chunking wins."""
    body = sample("message.read")
    environ = create_environ(
        URL, method="POST", headers={**signed(body), "Transfer-Encoding": "chunked"}
    )
    environ.update(
        {"CONTENT_LENGTH": "10", "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True}
    )
    app_iter, status, _ = run_wsgi_app(make_app(webhooks).wsgi_app, environ, buffered=True)
    assert (status, b"".join(app_iter)) == ("200 OK", b'{"received": true}')
