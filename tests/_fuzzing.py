"""What the fuzz harnesses share: the request model, the expected answer, the checks, and one
``send`` per adapter.

``tests/test_fuzz.py`` (hypothesis) and ``tests/fuzz_atheris.py`` (atheris/libFuzzer) build
:class:`Request` objects in their own way and hand them to :func:`run` with a :class:`Ledger`
over the receiver's store and a ``send`` from one of the adapter context managers below.
Nothing here depends on hypothesis or pytest.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aerostic_webhooks import (
    MemoryStore,
    WebhookError,
    WebhookReceiver,
    parse_event,
    verify_signature,
)
from aerostic_webhooks.receiver import default_event_id
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body

from .contract import ACCEPTED, BAD_PAYLOAD, BAD_SIGNATURE, LIMIT, SECRET, TOO_LARGE

URL = "/webhooks/aerostic"
DJANGO_URL = URL + "/"
SIGNATURE = "X-Aerostic-Signature"
EXPECTED_JSON = {200: ACCEPTED, 400: BAD_PAYLOAD, 401: BAD_SIGNATURE, 413: TOO_LARGE}
EVENT_TYPES = sorted(SAMPLE_PAYLOADS)
OTHER_METHODS = ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "multipart/form-data",
    "application/octet-stream",
    "",
    "json",
    "application/json; charset=utf-8; boundary=\u00e9",
]
# Extra header names: tokens, never one the harness sets itself or a spelling of the signature's.
RESERVED = {"content-type", "content-length", "transfer-encoding", "host", SIGNATURE.lower()}
TOKEN = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-"


def extra_name_allowed(name: str) -> bool:
    return name.lower() not in RESERVED and not name.lower().startswith("x-aerostic-sig")


# -- requests ------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path_slash: bool
    body: bytes
    headers: dict[str, bytes]  # values as on the wire; each adapter hands them over as its
    chunked: bool  # server would (ASGI: the bytes; WSGI: the bytes decoded as latin-1)

    @property
    def signature(self) -> str | None:
        """The signature header as the adapters see it (latin-1 text), if sent."""
        for name, value in self.headers.items():
            if name.lower() == SIGNATURE.lower():
                return value.decode("latin-1")
        return None


def verifies(body: bytes, header: str | None) -> bool:
    try:
        verify_signature(body, header, SECRET)
    except WebhookError:
        return False
    return True


def parses(body: bytes) -> bool:
    try:
        parse_event(body)
    except WebhookError:
        return False
    return True


def expected_status(request: Request) -> int:
    if len(request.body) > LIMIT:
        return 413
    if not verifies(request.body, request.signature):
        return 401
    return 200 if parses(request.body) else 400


def padded(event_type: str, size: int, data_id: Any) -> bytes:
    """A valid sample of exactly ``size`` bytes (when it fits): padding in its text field."""
    base = sample_body(event_type, id=data_id, note="")
    return sample_body(event_type, id=data_id, note="x" * max(0, size - len(base)))


# -- checking ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str | None
    content: bytes


Send = Callable[[Request], Answer]


@dataclass
class Ledger:
    """What was sent that the store may keep: the valid signatures of bodies, accepted ids."""

    store: Any
    signatures: dict[bytes, str] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    answers: Counter[str] = field(default_factory=Counter)

    def size(self) -> int:
        return sum(self.store.counts().values())

    def assert_valid(self, record: Any) -> None:
        header = self.signatures.get(record.body)
        assert header is not None, f"recorded a body never sent with a valid signature: {record}"
        verify_signature(record.body, header, SECRET)
        event = parse_event(record.body)
        assert record.event_type == event.event
        assert record.event_id == default_event_id(event, record.body)

    def check(self, request: Request, answer: Answer) -> None:
        self.answers[f"{request.method} {answer.status}"] += 1
        if request.method != "POST":
            assert answer.status == 405, (request.method, answer.status)
            # Records come only from accepted POSTs, so this one recorded nothing.
            assert self.size() == len(self.accepted)
            return
        expected = expected_status(request)
        assert answer.status == expected, (answer.status, expected)
        assert answer.content_type == "application/json"
        assert json.loads(answer.content) == EXPECTED_JSON[answer.status]
        if answer.status == 200:
            event = parse_event(request.body)
            event_id = default_event_id(event, request.body)
            self.accepted.add(event_id)
            record = self.store.get(event_id)
            assert record is not None, f"200 without a record for {event_id}"
            self.assert_valid(record)
        # Records come only from accepted deliveries (a duplicate adds none).
        assert self.size() == len(self.accepted)

    def sent(self, request: Request) -> None:
        """Remember a POST's body if its signature verifies (before sending it)."""
        if request.method == "POST" and verifies(request.body, request.signature):
            self.signatures.setdefault(request.body, request.signature or "")

    def final(self) -> None:
        print(f"answers: {dict(self.answers)}, records: {len(self.accepted)}")  # shown with -s
        records = self.store.list(limit=10**9)
        assert len(records) == len(self.accepted)
        for record in records:
            self.assert_valid(record)


@contextmanager
def quiet() -> Iterator[None]:
    """Every refused example logs a WARNING; keep 100000 of them out of pytest's capture."""
    loggers = [logging.getLogger(name) for name in ("aerostic_webhooks", "django.request")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def wsgi_text(value: bytes) -> str:
    """A header value as a WSGI server hands it over: its bytes decoded as latin-1."""
    return value.decode("latin-1")


def make_receiver(store: Any = None) -> WebhookReceiver:
    """The fuzzed receiver: on a MemoryStore unless given another store."""
    return WebhookReceiver(SECRET, store=store or MemoryStore(), max_body_bytes=LIMIT)


# -- Flask ---------------------------------------------------------------------------------------


@contextmanager
def flask_send(receiver: WebhookReceiver) -> Iterator[Send]:
    """Flask's test client, and a raw WSGI call without CONTENT_LENGTH for chunked requests."""
    import flask
    from werkzeug.test import create_environ, run_wsgi_app

    from aerostic_webhooks.flask import webhook_blueprint

    app = flask.Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = True  # an exception in the view fails the test
    app.register_blueprint(webhook_blueprint(receiver), url_prefix=URL)
    client = app.test_client()

    def send(request: Request) -> Answer:
        path = URL + "/" if request.path_slash else URL
        headers = {name: wsgi_text(value) for name, value in request.headers.items()}
        if request.chunked:  # as gunicorn passes a chunked body: no CONTENT_LENGTH
            environ = create_environ(path, method=request.method, headers=headers)
            environ.pop("CONTENT_LENGTH", None)
            environ["wsgi.input"] = io.BytesIO(request.body)
            environ["wsgi.input_terminated"] = True
            app_iter, status, response_headers = run_wsgi_app(app.wsgi_app, environ, buffered=True)
            content = b"".join(app_iter)
            return Answer(
                int(status.split()[0]), dict(response_headers).get("Content-Type"), content
            )
        # input_stream, not data=: for an empty body with a form Content-Type, werkzeug's
        # EnvironBuilder would encode its own (empty) form as the body instead.
        response = client.open(
            path,
            method=request.method,
            input_stream=io.BytesIO(request.body),
            content_length=len(request.body),
            headers=headers,
        )
        return Answer(response.status_code, response.headers.get("Content-Type"), response.data)

    yield send


# -- Starlette and FastAPI -----------------------------------------------------------------------


def starlette_app(receiver: WebhookReceiver) -> Any:
    """The Starlette app the tests mount the route on (imported late: frameworks are extras)."""
    from starlette.applications import Starlette

    from aerostic_webhooks.starlette import webhook_lifespan, webhook_route

    return Starlette(routes=[webhook_route(URL, receiver)], lifespan=webhook_lifespan(receiver))


def fastapi_app(receiver: WebhookReceiver) -> Any:
    """The FastAPI app the tests include the router in."""
    from fastapi import FastAPI

    from aerostic_webhooks.fastapi import webhook_router

    app = FastAPI()
    app.include_router(webhook_router(receiver), prefix=URL)
    return app


@contextmanager
def asgi_send(framework: str, receiver: WebhookReceiver) -> Iterator[Send]:
    """Starlette's ``TestClient`` on the Starlette or FastAPI app; chunked: no Content-Length."""
    from starlette.testclient import TestClient

    make_app = starlette_app if framework == "starlette" else fastapi_app
    with TestClient(make_app(receiver)) as client:

        def send(request: Request) -> Answer:
            path = URL + "/" if request.path_slash else URL
            headers = request.headers
            content: bytes | Iterator[bytes] = request.body
            if request.chunked:
                body = request.body
                content = iter([body[i : i + 1000] for i in range(0, len(body), 1000)])
            response = client.request(request.method, path, content=content, headers=headers)
            return Answer(
                response.status_code, response.headers.get("content-type"), response.content
            )

        yield send


# -- Django --------------------------------------------------------------------------------------


def django_send(client: Any) -> Send:
    """Django's test ``Client`` (built by the caller) on the app's view at its documented URL."""

    def send(request: Request) -> Answer:
        headers = {
            name: wsgi_text(value)
            for name, value in request.headers.items()
            if name.lower() != "content-type"
        }
        content_type = request.headers.get("Content-Type", b"application/octet-stream")
        response = client.generic(
            request.method,
            DJANGO_URL,
            data=request.body,
            content_type=wsgi_text(content_type),
            headers=headers,
        )
        return Answer(response.status_code, response.get("Content-Type"), response.content)

    return send


@contextmanager
def django_receiver(receiver: WebhookReceiver | None) -> Iterator[WebhookReceiver]:
    """The app's receiver for the test: ``receiver``, or the one the app builds itself."""
    from django.apps import apps

    config: Any = apps.get_app_config("aerostic_webhooks")
    config._receiver = receiver
    try:
        yield config.receiver()
    finally:
        if config._receiver is not None:
            config._receiver.close()
        config._receiver = None


def run(
    ledger: Ledger,
    send: Send,
    request: Request,
    observe: Callable[[Request, Answer], None] | None = None,
) -> Answer:
    """Send ``request`` and check the answer and the store (``observe`` sees both first)."""
    ledger.sent(request)
    answer = send(request)
    if observe is not None:
        observe(request, answer)
    ledger.check(request, answer)
    return answer
