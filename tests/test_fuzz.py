"""Fuzzing every adapter with mutated requests: the contract holds and nothing invalid is kept.

Each test drives one adapter (Flask's test client and a raw chunked WSGI call; Starlette's and
FastAPI's ``TestClient``, with and without a Content-Length; Django's test ``Client`` on the
app's view at ``/webhooks/aerostic/``, with a MemoryStore receiver and with the app's own
database-backed one) with requests built by hypothesis:

- bodies: the documented sample events (signed), near-limit and over-limit padded samples,
  unknown event types, arbitrary JSON and arbitrary bytes, then byte-flipped, truncated,
  extended, spliced and whitespace-padded mutations of them;
- headers: no ``X-Aerostic-Signature``, a valid one (any spelling of the name, whitespace
  around it, upper-case hex, inside a comma-separated rotation list), a stale one (of the body
  before mutation), a wrong-secret one, a mutated one (flipped, cut, extended), arbitrary and
  non-ASCII text (bytes for the ASGI clients, latin-1 decoded str as a WSGI server gives it),
  odd or missing Content-Type, and unrelated extra headers;
- methods: mostly POST, sometimes GET/PUT/DELETE/PATCH/HEAD/OPTIONS, on both spellings of the
  mount point (Django: its documented one with the slash).

Properties, for every example:

- POST answers exactly the contract: 413 when the body is over ``max_body_bytes``, else 401
  unless the signature verifies, else 400 unless the body parses, else 200; the Content-Type
  is ``application/json`` and the JSON body is the contract's for that status;
- every other method gets 405 (all four adapters register POST only and no automatic OPTIONS
  or HEAD) and records nothing;
- no exception escapes (Flask propagates exceptions, the other test clients raise them);
- nothing invalid is recorded: a 200 means the store holds the event's record, whose body was
  sent with a signature that verifies under the secret and which parses; the store never holds
  more records than distinct accepted events; at the end every record is checked again.

The default run is short (CI). The long run, e.g. 100000 examples per adapter::

    AEROSTIC_FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest tests/test_fuzz.py -q

(add ``-p no:randomly`` or ``--hypothesis-seed=N`` as usual; ``--hypothesis-show-statistics``
shows where the time goes).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import event as tally
from hypothesis import strategies as st

from aerostic_webhooks import (
    MemoryStore,
    WebhookError,
    WebhookReceiver,
    parse_event,
    sign,
    verify_signature,
)
from aerostic_webhooks.receiver import default_event_id
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body

from .contract import ACCEPTED, BAD_PAYLOAD, BAD_SIGNATURE, LIMIT, SECRET, TOO_LARGE

URL = "/webhooks/aerostic"
DJANGO_URL = URL + "/"
SIGNATURE = "X-Aerostic-Signature"
EXPECTED_JSON = {200: ACCEPTED, 400: BAD_PAYLOAD, 401: BAD_SIGNATURE, 413: TOO_LARGE}

_LONG = os.environ.get("AEROSTIC_FUZZ_EXAMPLES")
EXAMPLES = int(_LONG) if _LONG else 100
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    # The autouse conftest fixture only sets an environment variable: sharing it is harmless.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


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


def _verifies(body: bytes, header: str | None) -> bool:
    try:
        verify_signature(body, header, SECRET)
    except WebhookError:
        return False
    return True


def _parses(body: bytes) -> bool:
    try:
        parse_event(body)
    except WebhookError:
        return False
    return True


def expected_status(request: Request) -> int:
    if len(request.body) > LIMIT:
        return 413
    if not _verifies(request.body, request.signature):
        return 401
    return 200 if _parses(request.body) else 400


# -- strategies ----------------------------------------------------------------------------------

EVENT_TYPES = sorted(SAMPLE_PAYLOADS)
OTHER_METHODS = ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
# Header text: no control characters (no client lets them through), anything else goes.
header_chars = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))
header_text = st.text(header_chars, max_size=80)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
data_ids = st.one_of(
    st.text(max_size=24), st.integers(), st.none(), st.booleans(), st.just(""), json_values
)


def _padded(event_type: str, size: int, data_id: Any) -> bytes:
    """A valid sample of exactly ``size`` bytes (when it fits): padding in its text field."""
    base = sample_body(event_type, id=data_id, note="")
    return sample_body(event_type, id=data_id, note="x" * max(0, size - len(base)))


@st.composite
def seed_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["sample"] * 5 + ["padded", "unknown", "json", "binary"]))
    event_type = draw(st.sampled_from(EVENT_TYPES))
    if kind == "sample":
        overrides = draw(
            st.dictionaries(st.sampled_from(["id", "from", "to", "text", "status"]), data_ids)
        )
        return sample_body(event_type, **overrides)
    if kind == "padded":
        size = draw(st.one_of(st.integers(LIMIT - 3, LIMIT + 3), st.integers(200, 3 * LIMIT)))
        return _padded(event_type, size, draw(st.text(max_size=12)))
    if kind == "unknown":
        payload = {
            "event": draw(st.one_of(st.text(max_size=20), json_values)),
            "timestamp": draw(st.sampled_from(["2026-01-30T15:45:00Z", "", "yesterday", 0])),
            "data": draw(st.one_of(st.dictionaries(st.text(max_size=8), json_values), json_values)),
        }
        return json.dumps(payload, ensure_ascii=draw(st.booleans())).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    return draw(st.binary(max_size=300))


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` after a few byte-level mutations (possibly none)."""
    data = bytearray(body)
    ops = ["flip", "truncate", "extend", "insert", "delete", "spaces", "duplicate"]
    for op in draw(st.lists(st.sampled_from(ops), max_size=3)):
        at = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=20))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "spaces":  # still the same JSON, maybe pushed over the limit
            data += b" " * draw(st.sampled_from([1, LIMIT - len(data), LIMIT + 1 - len(data)]))
        elif op == "duplicate":
            data += bytes(data[at:])
    return bytes(data)


@st.composite
def signatures(draw: st.DrawFn, original: bytes, body: bytes) -> str | bytes | None:
    valid = sign(body, SECRET)
    mode = draw(
        st.sampled_from(
            ["valid"] * 6
            + ["missing"] * 2
            + ["stale", "wrong secret", "mutated", "upper", "spaced", "rotation", "text", "bytes"]
        )
    )
    if mode == "valid":
        return valid
    if mode == "missing":
        return None
    if mode == "stale":
        return sign(original, SECRET)
    if mode == "wrong secret":
        return sign(body, draw(st.sampled_from(["guess", SECRET + "x", SECRET.upper()])))
    if mode == "mutated":
        at = draw(st.integers(0, len(valid)))
        what = draw(st.sampled_from(["cut", "flip", "extend", "prefix"]))
        if what == "cut":
            return valid[:at]
        if what == "flip":
            at = min(at, len(valid) - 1)
            other = draw(header_chars.filter(lambda char: char != valid[at]))
            return valid[:at] + other + valid[at + 1 :]
        if what == "extend":
            return valid + draw(header_text)
        return (
            draw(st.sampled_from(["sha1=", "SHA256=", "sha256:", "", "sha256=sha256="]))
            + (valid[7:])
        )
    if mode == "upper":
        return valid.upper()
    if mode == "spaced":
        return draw(st.sampled_from([" ", "\t", ""])) + valid + draw(st.sampled_from([" ", ""]))
    if mode == "rotation":
        parts = [valid, sign(body, "old-secret"), "sha256=" + "0" * 64, draw(header_text)]
        parts = draw(st.permutations(parts))[: draw(st.integers(1, 4))]
        return draw(st.sampled_from([",", ", ", " , "])).join(parts)
    if mode == "text":
        return draw(header_text)
    # Raw bytes on the wire, not UTF-8 (no control bytes: no client lets them through).
    return bytes(byte for byte in draw(st.binary(max_size=80)) if byte >= 32 and byte != 127)


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
RESERVED = {"content-type", "content-length", "transfer-encoding", "host", SIGNATURE.lower()}
TOKEN = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-"
extra_names = st.text(TOKEN, min_size=1, max_size=16).filter(
    lambda name: name.lower() not in RESERVED and not name.lower().startswith("x-aerostic-sig")
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    original = draw(seed_bodies())
    body = draw(mutated(original))
    headers: dict[str, bytes] = {}
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type is not None:
        headers["Content-Type"] = content_type.encode()
    extra = draw(st.dictionaries(extra_names, header_text, max_size=3))
    headers.update({name: value.encode() for name, value in extra.items()})
    signature = draw(signatures(original, body))
    if signature is not None:
        name = draw(st.sampled_from([SIGNATURE, SIGNATURE.lower(), SIGNATURE.upper()]))
        headers[name] = signature if isinstance(signature, bytes) else signature.encode()
    method = draw(st.sampled_from(["POST"] * 14 + OTHER_METHODS))
    return Request(method, draw(st.booleans()), body, headers, draw(st.booleans()))


# -- checking ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str | None
    content: bytes


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
        note(f"request: {request!r}")
        note(f"answer: {answer!r}")
        tally(f"{request.method} {answer.status}")
        self.answers[f"{request.method} {answer.status}"] += 1
        before = self.size()
        if request.method != "POST":
            assert answer.status == 405, (request.method, answer.status)
            assert self.size() == before
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
        if request.method == "POST" and _verifies(request.body, request.signature):
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


def run(ledger: Ledger, send: Callable[[Request], Answer], request: Request) -> None:
    ledger.sent(request)
    ledger.check(request, send(request))


def _wsgi_text(value: bytes) -> str:
    """A header value as a WSGI server hands it over: its bytes decoded as latin-1."""
    return value.decode("latin-1")


def _receiver() -> WebhookReceiver:
    return WebhookReceiver(SECRET, store=MemoryStore(), max_body_bytes=LIMIT)


# -- Flask ---------------------------------------------------------------------------------------


def test_flask() -> None:
    flask = pytest.importorskip("flask")
    from werkzeug.test import create_environ, run_wsgi_app

    from aerostic_webhooks.flask import webhook_blueprint

    with _receiver() as receiver, quiet():
        app = flask.Flask(__name__)
        app.config["PROPAGATE_EXCEPTIONS"] = True  # an exception in the view fails the test
        app.register_blueprint(webhook_blueprint(receiver), url_prefix=URL)
        client = app.test_client()
        ledger = Ledger(receiver.store)

        def send(request: Request) -> Answer:
            path = URL + "/" if request.path_slash else URL
            headers = {name: _wsgi_text(value) for name, value in request.headers.items()}
            if request.chunked:  # as gunicorn passes a chunked body: no CONTENT_LENGTH
                environ = create_environ(path, method=request.method, headers=headers)
                environ.pop("CONTENT_LENGTH", None)
                environ["wsgi.input"] = io.BytesIO(request.body)
                environ["wsgi.input_terminated"] = True
                app_iter, status, response_headers = run_wsgi_app(
                    app.wsgi_app, environ, buffered=True
                )
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

        @FUZZ
        @given(requests())
        def fuzz(request: Request) -> None:
            run(ledger, send, request)

        fuzz()
        ledger.final()


# -- Starlette and FastAPI -----------------------------------------------------------------------


def _starlette_app(receiver: WebhookReceiver) -> Any:
    from starlette.applications import Starlette

    from aerostic_webhooks.starlette import webhook_lifespan, webhook_route

    return Starlette(routes=[webhook_route(URL, receiver)], lifespan=webhook_lifespan(receiver))


def _fastapi_app(receiver: WebhookReceiver) -> Any:
    from fastapi import FastAPI

    from aerostic_webhooks.fastapi import webhook_router

    app = FastAPI()
    app.include_router(webhook_router(receiver), prefix=URL)
    return app


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_asgi(framework: str) -> None:
    pytest.importorskip(framework)
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    make_app = _starlette_app if framework == "starlette" else _fastapi_app
    with _receiver() as receiver, quiet(), TestClient(make_app(receiver)) as client:
        ledger = Ledger(receiver.store)

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

        @FUZZ
        @given(requests())
        def fuzz(request: Request) -> None:
            run(ledger, send, request)

        fuzz()
        ledger.final()


# -- Django --------------------------------------------------------------------------------------


def _django_send(client: Any) -> Callable[[Request], Answer]:
    def send(request: Request) -> Answer:
        headers = {
            name: _wsgi_text(value)
            for name, value in request.headers.items()
            if name.lower() != "content-type"
        }
        content_type = request.headers.get("Content-Type", b"application/octet-stream")
        response = client.generic(
            request.method,
            DJANGO_URL,
            data=request.body,
            content_type=_wsgi_text(content_type),
            headers=headers,
        )
        return Answer(response.status_code, response.get("Content-Type"), response.content)

    return send


@contextmanager
def _django_receiver(receiver: WebhookReceiver | None) -> Iterator[WebhookReceiver]:
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


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("store", ["memory", "app"])
def test_django(store: str) -> None:
    pytest.importorskip("django")
    from django.test import Client

    own = _receiver() if store == "memory" else None
    with _django_receiver(own) as receiver, quiet():
        assert receiver.max_body_bytes == LIMIT
        ledger = Ledger(receiver.store)
        send = _django_send(Client(enforce_csrf_checks=True))

        @FUZZ
        @given(requests())
        def fuzz(request: Request) -> None:
            run(ledger, send, request)

        fuzz()
        ledger.final()
