"""Starlette route and FastAPI router: the contract, streaming limits, the loop, lifespan."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="Starlette is not installed: pip install -e '.[starlette]'")
pytest.importorskip("fastapi", reason="FastAPI is not installed: pip install -e '.[fastapi]'")
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install -e '.[test]'")

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message

from aerostic_webhooks import (
    Event,
    InvalidPayload,
    InvalidSignature,
    MemoryStore,
    PayloadTooLarge,
    ProcessingFailed,
    Receipt,
    SQLiteStore,
    StoreUnavailable,
    WebhookReceiver,
    sign,
)
from aerostic_webhooks.fastapi import verified_event, verified_receipt, webhook_router
from aerostic_webhooks.starlette import webhook_lifespan, webhook_route
from aerostic_webhooks.stores import Record, Status

from ._fuzzing import URL, fastapi_app, starlette_app
from .contract import (
    ACCEPTED,
    BAD_PAYLOAD,
    BAD_SIGNATURE,
    FAILED,
    LIMIT,
    SECRET,
    TOO_LARGE,
    UNAVAILABLE,
    Case,
    cases,
    sample_body,
    signed,
)

FRAMEWORKS: dict[str, Callable[[WebhookReceiver], ASGIApp]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def make_app(request: pytest.FixtureRequest) -> Callable[[WebhookReceiver], ASGIApp]:
    return FRAMEWORKS[request.param]


@pytest.fixture
def webhooks() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET, store=MemoryStore(), max_body_bytes=LIMIT) as receiver:
        yield receiver


@pytest.fixture
def client(
    make_app: Callable[[WebhookReceiver], ASGIApp], webhooks: WebhookReceiver
) -> Iterator[TestClient]:
    with TestClient(make_app(webhooks)) as test_client:
        yield test_client


def raw(headers: dict[str, str]) -> dict[str, bytes]:
    """Header values as bytes, as a server hands them over (non-ASCII ones included)."""
    return {name: value.encode() for name, value in headers.items()}


def assert_answer(response: Any, case: Case) -> None:
    assert response.status_code == case.status, case.name
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == case.json, case.name


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_contract_with_content_length(client: TestClient, case: Case) -> None:
    assert_answer(client.post(URL, content=case.body, headers=raw(case.headers)), case)


def test_a_signature_header_sent_twice_is_read_as_a_wsgi_server_joins_it(
    client: TestClient,
) -> None:
    """As under gunicorn (Flask, Django): both lines are candidates, so one good one passes."""
    body = sample_body("message.received")
    good = signed(body)["X-Aerostic-Signature"]
    bad = "sha256=" + "0" * 64
    for lines in ([bad, good], [good, bad]):
        headers = [("X-Aerostic-Signature", line) for line in lines]
        response = client.post(URL, content=body, headers=headers)
        assert (response.status_code, response.json()) == (200, {"received": True})
    response = client.post(URL, content=body, headers=[("X-Aerostic-Signature", bad)] * 2)
    assert response.status_code == 401


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_contract_chunked(client: TestClient, case: Case) -> None:
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(case.body), 1000):
            yield case.body[start : start + 1000]

    assert_answer(client.post(URL, content=chunks(), headers=raw(case.headers)), case)


@pytest.mark.parametrize("path", [URL, URL + "/"])
def test_both_spellings_without_redirect(client: TestClient, path: str) -> None:
    body = sample_body("message.sent")
    response = client.post(path, content=body, headers=signed(body), follow_redirects=False)
    assert response.status_code == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_other_methods_get_405(client: TestClient, method: str) -> None:
    assert client.request(method, URL).status_code == 405
    assert client.request(method, URL + "/").status_code == 405


@pytest.mark.parametrize(("path", "spellings"), [("/", ["/"]), ("/hooks/", ["/hooks", "/hooks/"])])
def test_a_route_path_given_with_its_slash_answers_at_each_spelling(
    webhooks: WebhookReceiver, path: str, spellings: list[str]
) -> None:
    app = Starlette(routes=[webhook_route(path, webhooks)], lifespan=webhook_lifespan(webhooks))
    body = sample_body("message.sent")
    with TestClient(app) as client:
        for spelling in spellings:
            response = client.post(
                spelling, content=body, headers=signed(body), follow_redirects=False
            )
            assert (response.status_code, response.json()) == (200, ACCEPTED), spelling


@pytest.mark.parametrize("path", ["/", ""])
def test_the_route_at_the_root_of_a_mount_answers_at_the_mounts_path(
    webhooks: WebhookReceiver, path: str
) -> None:
    """``Mount("/hooks", routes=[webhook_route("/", ...)])``: Starlette answers "/hooks" with
    its own redirect to "/hooks/", which must then be the endpoint, not a 404."""
    app = Starlette(
        routes=[Mount("/hooks", routes=[webhook_route(path, webhooks)])],
        lifespan=webhook_lifespan(webhooks),
    )
    body = sample_body("message.sent")
    with TestClient(app) as client:
        response = client.post("/hooks/", content=body, headers=signed(body))
        assert (response.status_code, response.json()) == (200, ACCEPTED)
        assert client.get("/hooks/").status_code == 405


def test_the_route_is_named_for_url_path_for(webhooks: WebhookReceiver) -> None:
    app = Starlette(
        routes=[webhook_route(URL, webhooks), webhook_route("/eu", webhooks, name="aerostic_eu")]
    )
    assert app.url_path_for("aerostic_webhooks") == URL
    assert app.url_path_for("aerostic_eu") == "/eu"


async def call(
    app: ASGIApp, headers: list[tuple[bytes, bytes]], chunks: Iterator[bytes | Message]
) -> tuple[int, bytes, int]:
    """Drive the app with a raw ASGI request; return status, body and chunks it pulled.

    A message among the chunks (``http.disconnect``) is handed over as it is."""
    pulled = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        chunk = next(chunks, None)
        pulled += 1
        if isinstance(chunk, dict):
            return chunk
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": URL,
        "raw_path": URL.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, pulled


def test_declared_length_over_the_limit_is_refused_before_reading(
    make_app: Callable[[WebhookReceiver], ASGIApp], webhooks: WebhookReceiver
) -> None:
    def unreadable() -> Iterator[bytes]:
        raise AssertionError("the body must not be read")
        yield b""

    headers = [(b"content-length", str(LIMIT + 1).encode())]
    status, body, pulled = asyncio.run(call(make_app(webhooks), headers, unreadable()))
    assert (status, json.loads(body)) == (413, TOO_LARGE)
    assert pulled == 0


def test_a_client_gone_mid_body_is_a_400_and_no_error_is_logged(
    make_app: Callable[[WebhookReceiver], ASGIApp],
    webhooks: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = sample_body("message.received")
    chunks: Iterator[bytes | Message] = iter([body[:10], {"type": "http.disconnect"}])
    headers = [(name.lower().encode(), value.encode()) for name, value in signed(body).items()]
    status, answer, _ = asyncio.run(call(make_app(webhooks), headers, chunks))
    assert (status, json.loads(answer)) == (400, {"error": "Invalid payload"})
    assert webhooks.store.counts()[Status.PENDING] == 0  # nothing recorded
    assert [r.levelname for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "its body could not be read (ClientDisconnect)" in caplog.text


def test_an_endless_chunked_body_is_cut_at_the_limit(
    make_app: Callable[[WebhookReceiver], ASGIApp], webhooks: WebhookReceiver
) -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield b"x" * 1000

    status, body, pulled = asyncio.run(call(make_app(webhooks), [], endless()))
    assert (status, json.loads(body)) == (413, TOO_LARGE)
    assert pulled <= LIMIT // 1000 + 2  # stopped at the first chunk past the limit


def test_store_unavailable_is_503(make_app: Callable[[WebhookReceiver], ASGIApp]) -> None:
    class Down(MemoryStore):
        def add(self, record: Record) -> bool:
            raise ConnectionError("down")

    with (
        WebhookReceiver(SECRET, store=Down()) as receiver,
        TestClient(make_app(receiver)) as client,
    ):
        body = sample_body("message.received")
        response = client.post(URL, content=body, headers=signed(body))
    assert_answer(response, Case("503", body, status=503, json=UNAVAILABLE))


def test_inline_handlers_of_concurrent_deliveries_run_side_by_side(
    make_app: Callable[[WebhookReceiver], ASGIApp],
) -> None:
    """Inline handlers run before the answer: eight deliveries whose handlers wait for each
    other must all run at once, as a WSGI server's threads would run them, not two at a time
    (the sender gives up after 5 s and a queue of slow handlers soon takes that long)."""
    together = threading.Barrier(8)
    with WebhookReceiver(SECRET, store=MemoryStore(), process="inline") as receiver:
        receiver.on("*")(lambda event: together.wait(5))
        app = make_app(receiver)

        async def deliver_all() -> list[int]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

                async def deliver(number: int) -> int:
                    body = sample_body("message.sent", id=f"side-by-side-{number}")
                    response = await client.post(URL, content=body, headers=signed(body))
                    status: int = response.status_code
                    return status

                return list(await asyncio.gather(*(deliver(n) for n in range(8))))

        assert asyncio.run(deliver_all()) == [200] * 8


def test_inline_handler_failure_is_500(make_app: Callable[[WebhookReceiver], ASGIApp]) -> None:
    with WebhookReceiver(SECRET, store=MemoryStore(), process="inline") as receiver:
        receiver.on("*")(lambda event: 1 / 0)
        with TestClient(make_app(receiver)) as client:
            body = sample_body("message.received")
            response = client.post(URL, content=body, headers=signed(body))
    assert_answer(response, Case("500", body, status=500, json=FAILED))


def test_lifespan_starts_and_drains_the_worker(
    make_app: Callable[[WebhookReceiver], ASGIApp],
) -> None:
    seen: list[str] = []
    receiver = WebhookReceiver(SECRET, store=MemoryStore())

    @receiver.on("*")
    def slow(event: Event) -> None:
        time.sleep(0.2)
        seen.append(event.event)

    with TestClient(make_app(receiver)) as client:
        assert receiver._worker.running  # started at startup, before any delivery
        body = sample_body("contact.created")
        assert client.post(URL, content=body, headers=signed(body)).status_code == 200
    assert seen == ["contact.created"]  # shutdown drained it
    assert not receiver._worker.running


def test_a_second_lifespan_serves_again(
    make_app: Callable[[WebhookReceiver], ASGIApp], tmp_path: Path
) -> None:
    """One module-level app, one TestClient per test: each startup serves as the first did."""
    seen: list[str] = []
    receiver = WebhookReceiver(SECRET, store=SQLiteStore(tmp_path / "inbox.sqlite3"))
    receiver.on("*")(lambda event: seen.append(event.data.id))
    app = make_app(receiver)
    for n in range(2):
        with TestClient(app) as client:
            body = sample_body("message.received", id=f"msg-{n}")
            response = client.post(URL, content=body, headers=signed(body))
            assert (response.status_code, response.json()) == (200, {"received": True})
    assert seen == ["msg-0", "msg-1"]


def test_the_worker_stops_when_the_apps_own_start_up_fails() -> None:
    """The README's nesting: an app lifespan whose start-up raises inside the webhook one."""
    receiver = WebhookReceiver(SECRET, store=MemoryStore())

    async def start_up() -> None:
        async with webhook_lifespan(receiver)(None):
            assert receiver._worker.running
            raise ConnectionError("the app's own database is down")

    try:
        with pytest.raises(ConnectionError):
            asyncio.run(start_up())
        assert not receiver._worker.running
    finally:
        receiver.close()


def test_shutdown_drains_off_the_loop_so_a_handler_may_wait_on_it() -> None:
    """A handler that hands work to the app's event loop (and waits for it) finishes during
    the shutdown drain: the drain must leave the loop free."""
    receiver = WebhookReceiver(SECRET, store=MemoryStore())
    seen: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        shutting_down = asyncio.Event()

        async def on_the_loop(event: Event) -> None:
            await shutting_down.wait()
            seen.append(event.event)

        receiver.on("*")(
            lambda event: asyncio.run_coroutine_threadsafe(on_the_loop(event), loop).result(5)
        )
        async with webhook_lifespan(receiver, drain_timeout=5)(None):
            body = sample_body("contact.created")
            await receiver.receive_async(body, signed(body))
            shutting_down.set()  # the loop runs the handler's coroutine only once it is free
        assert seen == ["contact.created"]  # drained before the lifespan ended

    try:
        asyncio.run(scenario())
    finally:
        receiver.close()


def test_the_loop_stays_responsive_while_100_deliveries_and_slow_handlers_run(
    make_app: Callable[[WebhookReceiver], ASGIApp], tmp_path: Path
) -> None:
    class SlowDisk(SQLiteStore):
        def add(self, record: Record) -> bool:
            time.sleep(0.05)  # a slow disk: 100 deliveries hold 5 s of blocking writes
            return super().add(record)

    release = threading.Event()
    receiver = WebhookReceiver(SECRET, store=SlowDisk(tmp_path / "inbox.sqlite3"))
    receiver.on("*")(lambda event: release.wait(10))  # a handler that takes 10 s
    app = make_app(receiver)
    bodies = [sample_body("message.received", id=f"d-{n}", text="x" * 20_000) for n in range(100)]

    async def scenario() -> tuple[list[int], float]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            tick = asyncio.create_task(ticker())
            responses = await asyncio.gather(
                *(client.post(URL, content=body, headers=signed(body)) for body in bodies)
            )
            await asyncio.sleep(1.0)  # the handlers still block their threads meanwhile
            done.set()
            await tick
        return [response.status_code for response in responses], max(gaps)

    try:
        statuses, worst_gap = asyncio.run(scenario())
    finally:
        release.set()
        receiver.close()
    assert statuses == [200] * 100
    # SQLite writes, signatures and parsing run off the loop, handlers on their own threads.
    # On the loop, the ready deliveries' writes would run back to back: a stall of seconds
    # (5 s for all 100). The bound leaves room for a loaded machine's scheduling, not more.
    assert worst_gap < 2.0, f"the event loop stalled for {worst_gap:.3f}s"


# FastAPI 0.125 (the newest that takes pydantic 2.6) asks isinstance(model, pydantic.v1.BaseModel)
# while encoding the schema, and pydantic 2.6 answers by reading the deprecated __fields__.
@pytest.mark.filterwarnings(
    "ignore:The `__fields__` attribute is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
)
def test_openapi_documents_the_endpoint() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore()) as receiver:
        schema = fastapi_app(receiver).openapi()
    operation = schema["paths"][URL]["post"]
    assert [p["name"] for p in operation["parameters"]] == ["X-Aerostic-Signature"]
    assert operation["parameters"][0]["in"] == "header"
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    titles = {option["title"] for option in body_schema["oneOf"]}
    assert titles == {
        "MessageReceived",
        "MessageSent",
        "MessageDelivered",
        "MessageRead",
        "MessageFailed",
        "ContactCreated",
        "UnknownEvent",
    }
    assert {"200", "400", "401", "413"} <= set(operation["responses"])
    assert URL + "/" not in schema["paths"]  # the slash spelling works but is not listed twice


# As for test_openapi_documents_the_endpoint: FastAPI 0.125 with pydantic 2.6 warns.
@pytest.mark.filterwarnings(
    "ignore:The `__fields__` attribute is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
)
def test_openapi_signature_pattern_admits_every_header_the_receiver_accepts() -> None:
    """A gateway or a test generator that checks requests against the schema must not refuse
    the header a sender sends while rotating secrets, which the receiver accepts."""
    body = sample_body("message.received")
    new, old = sign(body, SECRET), sign(body, "whsec_previous")
    accepted = [new, f"{old},{new}", f"{new}, {old}", new.replace("sha256", "SHA256")]
    # A value of another scheme beside it, before or after (one the receiver skips).
    accepted += [f"{new},v2=later", f"v2=later, {new}"]
    refused = ["", "sha256=", "sha1=" + "0" * 40, "sha256=" + "0" * 63, "sha256=" + "0" * 65]
    with WebhookReceiver([SECRET, "whsec_other"], store=MemoryStore()) as receiver:
        (parameter,) = fastapi_app(receiver).openapi()["paths"][URL]["post"]["parameters"]
        pattern = re.compile(parameter["schema"]["pattern"])  # JSON Schema: a search
        for value in accepted:
            receiver.receive(body, {"X-Aerostic-Signature": value})
            assert pattern.search(value), value
        for value in refused:
            with pytest.raises(InvalidSignature):
                receiver.receive(body, {"X-Aerostic-Signature": value})
            assert not pattern.search(value), value


# As for test_openapi_documents_the_endpoint: FastAPI 0.125 with pydantic 2.6 warns.
@pytest.mark.filterwarnings(
    "ignore:The `__fields__` attribute is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
)
def test_openapi_documents_each_answer_the_endpoint_gives() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore()) as receiver:
        operation = fastapi_app(receiver).openapi()["paths"][URL]["post"]
    answers = operation["responses"]
    examples = {
        status: answer["content"]["application/json"]["example"]
        for status, answer in answers.items()
    }
    assert examples == {
        "200": ACCEPTED,
        "400": BAD_PAYLOAD,
        "401": BAD_SIGNATURE,
        "413": TOO_LARGE,
        "503": UNAVAILABLE,
    }
    for error in (InvalidPayload, InvalidSignature, PayloadTooLarge, StoreUnavailable):
        assert answers[str(error.status_code)]["description"] == error.__doc__
    assert operation["summary"] == "Receive an Aerostic webhook"
    assert operation["requestBody"]["required"] is True
    [header] = operation["parameters"]
    assert header["required"] is True
    body = sample_body("message.received")
    good = signed(body)["X-Aerostic-Signature"]
    assert re.search(header["schema"]["pattern"], good)
    assert not re.search(header["schema"]["pattern"], "sha1=" + good[7:47])


@pytest.mark.filterwarnings(
    "ignore:The `__fields__` attribute is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
)
def test_openapi_documents_the_500_of_an_inline_receiver() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore(), process="inline") as receiver:
        answers = fastapi_app(receiver).openapi()["paths"][URL]["post"]["responses"]
    assert answers["500"]["content"]["application/json"]["example"] == FAILED
    assert answers["500"]["description"] == ProcessingFailed.__doc__


@pytest.mark.filterwarnings(
    "ignore:The `__fields__` attribute is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
)
@pytest.mark.parametrize(
    ("tags", "expected"), [(None, ["webhooks"]), (["aerostic"], ["aerostic"]), ([], [])]
)
def test_openapi_lists_the_endpoint_under_its_tags(
    tags: list[str | Enum] | None, expected: list[str]
) -> None:
    with WebhookReceiver(SECRET, store=MemoryStore()) as receiver:
        app = FastAPI()
        app.include_router(webhook_router(receiver, tags=tags), prefix=URL)
        operation = app.openapi()["paths"][URL]["post"]
    assert operation.get("tags", []) == expected


def app_with_verified_event(receiver: WebhookReceiver, path: str) -> FastAPI:
    """An app of the user's own: an endpoint at ``path`` taking ``verified_event``'s event."""
    app = FastAPI()
    verified = Depends(verified_event(receiver))

    @app.post(path)
    async def mine(event: Event = verified) -> dict[str, str]:
        return {"type": event.event}

    return app


def test_verified_event_dependency_gives_the_same_statuses() -> None:
    with WebhookReceiver(SECRET, store=MemoryStore(), max_body_bytes=LIMIT) as receiver:
        app = app_with_verified_event(receiver, "/mine")

        with TestClient(app) as client:
            body = sample_body("message.read")
            assert client.post("/mine", content=body, headers=signed(body)).json() == {
                "type": "message.read"
            }
            assert client.post("/mine", content=body).status_code == 401
            assert client.post("/mine", content=b"{", headers=signed(b"{")).status_code == 400
            huge = b"x" * (LIMIT + 1)
            assert client.post("/mine", content=huge, headers=signed(huge)).status_code == 413
        assert receiver.store.get("message.read:msg_def456") is not None


def test_verified_receipt_tells_the_senders_retry_from_a_new_event() -> None:
    ran: list[str] = []
    with WebhookReceiver(SECRET, store=MemoryStore(), max_body_bytes=LIMIT) as receiver:
        app = FastAPI()
        verified = Depends(verified_receipt(receiver))

        @app.post("/once")
        async def once(receipt: Receipt = verified) -> dict[str, str]:
            if not receipt.duplicate:
                ran.append(receipt.event_id)
            return {"type": receipt.event.event}

        with TestClient(app) as client:
            body = sample_body("message.read")
            for _ in range(3):  # the first delivery and two retries
                response = client.post("/once", content=body, headers=signed(body))
                assert response.json() == {"type": "message.read"}
            assert client.post("/once", content=body).status_code == 401
    assert ran == ["message.read:msg_def456"]


def test_verified_event_refuses_a_declared_length_over_the_limit_before_reading() -> None:
    def unreadable() -> Iterator[bytes]:
        raise AssertionError("the body must not be read")
        yield b""

    with WebhookReceiver(SECRET, store=MemoryStore(), max_body_bytes=LIMIT) as receiver:
        app = app_with_verified_event(receiver, URL)

        headers = [(b"content-length", str(LIMIT + 1).encode())]
        status, body, pulled = asyncio.run(call(app, headers, unreadable()))
    assert (status, json.loads(body)) == (413, {"detail": TOO_LARGE["error"]})
    assert pulled == 0


@pytest.mark.parametrize(
    "case", [case for case in cases() if case.status != 200], ids=lambda case: case.name
)
def test_verified_event_refusals_say_only_the_public_message(case: Case) -> None:
    with WebhookReceiver(SECRET, store=MemoryStore(), max_body_bytes=LIMIT) as receiver:
        app = app_with_verified_event(receiver, "/mine")

        with TestClient(app) as client:
            response = client.post("/mine", content=case.body, headers=raw(case.headers))
    assert (response.status_code, response.json()) == (case.status, {"detail": case.json["error"]})


def test_an_external_receiver_runs_no_worker_in_the_web_process(
    make_app: Callable[[WebhookReceiver], ASGIApp],
) -> None:
    with (
        WebhookReceiver(SECRET, store=MemoryStore(), process="external") as receiver,
        TestClient(make_app(receiver)) as client,
    ):
        body = sample_body("message.received")
        assert client.post(URL, content=body, headers=signed(body)).status_code == 200
        assert not receiver._worker.running


def test_an_external_receiver_processes_nothing_at_shutdown_either(
    make_app: Callable[[WebhookReceiver], ASGIApp],
) -> None:
    receiver = WebhookReceiver(SECRET, store=MemoryStore(), process="external")
    with TestClient(make_app(receiver)) as client:
        body = sample_body("message.received")
        assert client.post(URL, content=body, headers=signed(body)).status_code == 200
    record = receiver.store.get("message.received:msg_abc123")
    assert record is not None
    assert record.status == "pending"  # left to the worker process


def _guard(calls: list[str], name: str) -> Any:
    """A dependency that notes each call and refuses requests without ``X-Key: open``."""

    def guard(request: Request) -> None:
        calls.append(name)
        if request.headers.get("x-key") != "open":
            raise HTTPException(403, "no key")

    return Depends(guard)


@pytest.mark.parametrize("where", ["include_router", "app", "outer router"])
def test_dependencies_attached_to_the_router_still_run(where: str) -> None:
    calls: list[str] = []
    guard = _guard(calls, where)
    with WebhookReceiver(SECRET, store=MemoryStore()) as receiver:
        if where == "app":
            app = FastAPI(dependencies=[guard])
            app.include_router(webhook_router(receiver), prefix=URL)
        elif where == "include_router":
            app = FastAPI()
            app.include_router(webhook_router(receiver), prefix=URL, dependencies=[guard])
        else:
            outer = APIRouter(dependencies=[guard])
            outer.include_router(webhook_router(receiver), prefix=URL)
            app = FastAPI()
            app.include_router(outer)
        with TestClient(app) as client:
            body = sample_body("message.received")
            assert client.post(URL, content=body, headers=signed(body)).status_code == 403
            assert receiver.store.get("message.received:msg_abc123") is None
            opened = {**signed(body), "X-Key": "open"}
            response = client.post(URL + "/", content=body, headers=opened)
            assert (response.status_code, response.json()) == (200, {"received": True})
        assert calls == [where, where]
        assert receiver.store.get("message.received:msg_abc123") is not None


def test_an_integration_wrapping_fastapis_handlers_still_sees_the_deliveries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sentry's FastAPI integration replaces ``get_request_handler`` with a wrapper that names
    the transaction: the webhook route must keep going through it."""
    import fastapi.routing

    seen: list[str] = []
    original = fastapi.routing.get_request_handler

    def wrapping(*args: Any, **kwargs: Any) -> Any:
        handler = original(*args, **kwargs)

        async def wrapped(request: Request) -> Any:
            seen.append(request.url.path)
            return await handler(request)

        return wrapped

    monkeypatch.setattr(fastapi.routing, "get_request_handler", wrapping)
    with WebhookReceiver(SECRET, store=MemoryStore()) as receiver:
        app = FastAPI()
        app.include_router(webhook_router(receiver), prefix=URL)
        with TestClient(app) as client:
            body = sample_body("message.received")
            assert client.post(URL, content=body, headers=signed(body)).status_code == 200
    assert seen == [URL]
