"""Requests per second through each framework adapter against a bare route of the same framework.

Run from the repository root (see ``bench/README.md``)::

    python bench/adapters.py                        # full run: 5000 requests x 7 repeats
    python bench/adapters.py --quick                # smoke run, a few seconds
    python bench/adapters.py --frameworks flask --profile

Everything runs in this process: no server, no socket. Each framework's application is
called the way a server calls it, through one harness per protocol (WSGI: ``app(environ,
start_response)`` and the response iterable consumed and closed; ASGI: ``await app(scope,
receive, send)`` on one event loop, after the lifespan startup). For a framework three rows
go through the same harness and differ only in the application:

- ``bare``: a route of the framework that reads the raw body and answers 200 with
  ``{"received": true}``: the floor for that framework;
- ``floor``: the bare route plus the least any correct receiver must do, with the standard
  library: HMAC-SHA256 of the body compared in constant time with the signature header, then
  ``json.loads``. Its ratio to ``bare`` is the ceiling of the target: no receiver that
  verifies and parses can keep more of the bare route's rate (not judged);
- ``adapter``: the library's adapter, mounted as a user mounts it, on
  ``WebhookReceiver(SECRET, store=MemoryStore())``, the default ``process="background"``, with
  one no-op handler (it notes the event's id, for the checks), so the worker runs on threads of
  this process and competes for the GIL during the loop: the row the target is judged on;
- ``external``: the same adapter on a ``process="external"`` receiver: the request path only
  (verify, parse, record, answer), nothing processed in this process. If events are processed
  here all the same (an adapter that starts the worker anyway), a warning says so.

Every request is a new event (a distinct ``data.id``), signed beforehand. Requests are
prepared before the timing (an environ or scope per request, a fresh body stream per call);
the timed loop only calls the application and collects status and body. Every batch uses a
fresh application (and a fresh receiver and store) and is checked afterwards: every answer
200 with the accepted body, and, once the receiver is drained outside the timing, every event
recorded with its exact body (and, in the background row, handled exactly once). Rows are
interleaved: each repeat runs every row once, in a rotated order, so machine noise hits all
rows alike. A failed check ends the run with a non-zero exit status.

Beside requests per second, each batch's CPU time (the whole process, every thread) is
printed per request: on a shared machine it moves less than the wall-clock rate does.

A framework is a row of ``FRAMEWORKS``: a function returning a ``Framework`` (its protocol,
how to build the app with the adapter and the bare app), or raising ``Skip`` with a one-line
reason when the framework is not installed or its adapter module does not exist yet.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import hmac
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal, Protocol

import pydantic
from _env import load_average, print_machine, print_run, version_of

from aerostic_webhooks import MemoryStore, MessageReceived, WebhookReceiver, sign
from aerostic_webhooks.signature import SIGNATURE_HEADER
from aerostic_webhooks.stores.base import Status
from aerostic_webhooks.testing import sample_body

# A fixed, made-up secret: the benchmark needs reproducible inputs, not secrecy.
SECRET = "whsec_aerostic_bench_0123456789abcdef"
EVENT_TYPE = "message.received"
MOUNT = "/webhooks/aerostic"
BARE_PATH = "/bare"
FLOOR_PATH = "/floor"
ACCEPTED = b'{"received": true}'
CONTENT_TYPE = "application/json"
DRAIN_TIMEOUT = 120.0

#: The target: through the adapter, at least this share of the bare route's requests/s.
TARGET_RATIO = 0.85

Kind = Literal["bare", "floor", "adapter", "external"]
KINDS: tuple[Kind, ...] = ("bare", "floor", "adapter", "external")
_FLOOR_KEY = SECRET.encode()


def floor_check(body: bytes, signature: str | None) -> None:
    """The least a correct receiver does: verify the HMAC in constant time, parse the JSON."""
    expected = "sha256=" + hmac.new(_FLOOR_KEY, body, hashlib.sha256).hexdigest()
    check(hmac.compare_digest(expected, signature or ""), "floor: signature does not match")
    json.loads(body)


class Skip(Exception):
    """A framework row that cannot run here; the message is the one-line reason."""


class CheckFailed(Exception):
    """A benchmark self-check failed: the numbers of this run are not to be trusted."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One signed delivery, as the sender posts it, and the event id it must be recorded as."""

    body: bytes
    signature: str
    event_id: str
    data_id: str


def delivery(data_id: str) -> Delivery:
    body = sample_body(EVENT_TYPE, id=data_id)
    return Delivery(body, sign(body, SECRET), f"{EVENT_TYPE}:{data_id}", data_id)


@dataclass(frozen=True)
class Workload:
    """``number`` distinct deliveries (a new event each), plus one for warming an app up."""

    deliveries: list[Delivery]
    warmup: Delivery

    @property
    def body_bytes(self) -> int:
        return len(self.deliveries[0].body)


def build_workload(number: int) -> Workload:
    deliveries = [delivery(f"msg_bench_{i:08d}") for i in range(number)]
    return Workload(deliveries, delivery("msg_bench_warmup"))


# -- harnesses: one per protocol, the same for every row of a framework ---------------------


@dataclass
class Batch:
    """A batch ready to run: ``run()`` times the requests; it returns the elapsed wall ns and
    the CPU ns of the whole process (every thread: the worker's too) over the same span.

    Only the loop over the requests is timed; what the harness needs around it (building
    requests, for ASGI entering the event loop and collecting the answers) is not.
    """

    run: Callable[[], tuple[int, int]]
    statuses: list[int]
    bodies: list[bytes]

    def check(self, number: int, where: str) -> None:
        check(len(self.statuses) == number, f"{where}: {len(self.statuses)} answers")
        check(len(self.bodies) == number, f"{where}: {len(self.bodies)} bodies")
        wrong = [s for s in self.statuses if s != 200]
        check(not wrong, f"{where}: {len(wrong)} answers not 200 (first: {wrong[:1]})")
        odd = [b for b in self.bodies if b != ACCEPTED]
        check(not odd, f"{where}: {len(odd)} bodies not {ACCEPTED!r} (first: {odd[:1]!r})")


class Served(Protocol):
    """An application being served by a harness: requests go through ``batch``."""

    def batch(self, path: str, deliveries: Sequence[Delivery]) -> Batch: ...

    def close(self) -> None: ...


class Harness(Protocol):
    name: str

    def serve(self, app: Any) -> Served: ...

    def close(self) -> None: ...


def environ_for(path: str, d: Delivery) -> dict[str, Any]:
    """The WSGI environ of one delivery, as a server builds it (``wsgi.input`` set per call)."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": CONTENT_TYPE,
        "CONTENT_LENGTH": str(len(d.body)),
        "HTTP_HOST": "localhost",
        "HTTP_" + SIGNATURE_HEADER.upper().replace("-", "_"): d.signature,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


class WSGIServed:
    def __init__(self, app: Any) -> None:
        self.app = app

    def batch(self, path: str, deliveries: Sequence[Delivery]) -> Batch:
        # Untimed: a fresh environ (the framework writes into it) and body stream per request.
        environs = [{**environ_for(path, d), "wsgi.input": io.BytesIO(d.body)} for d in deliveries]
        statuses: list[int] = []
        bodies: list[bytes] = []
        app = self.app

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            statuses.append(int(status[:3]))
            return bodies.append  # the legacy write(); unused by these apps

        def run() -> tuple[int, int]:
            clock, cpu = time.perf_counter_ns, time.process_time_ns
            start_cpu, start = cpu(), clock()
            for environ in environs:
                iterable: Iterable[bytes] = app(environ, start_response)
                try:
                    bodies.append(b"".join(iterable))
                finally:
                    close = getattr(iterable, "close", None)
                    if close is not None:
                        close()
            elapsed = clock() - start
            return elapsed, cpu() - start_cpu

        return Batch(run, statuses, bodies)

    def close(self) -> None:
        pass


class WSGIHarness:
    name = "WSGI: app(environ, start_response), the response iterable consumed and closed"

    def serve(self, app: Any) -> Served:
        return WSGIServed(app)

    def close(self) -> None:
        pass


class Exchange:
    """``receive`` and ``send`` of one ASGI request: the body in one message, the answer kept."""

    __slots__ = ("body", "chunks", "sent", "status")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sent = False
        self.status = 0
        self.chunks: list[bytes] = []

    async def receive(self) -> dict[str, Any]:
        if self.sent:
            return {"type": "http.disconnect"}
        self.sent = True
        return {"type": "http.request", "body": self.body, "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))


def scope_for(path: str, d: Delivery, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", CONTENT_TYPE.encode()),
            (b"content-length", str(len(d.body)).encode()),
            (SIGNATURE_HEADER.lower().encode(), d.signature.encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
        "state": dict(state),
    }


class ASGIServed:
    """An ASGI app after its lifespan startup (as uvicorn runs it), on the harness's loop."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        self.state: dict[str, Any] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._started: asyncio.Future[bool] | None = None
        self._shutdown: asyncio.Future[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        loop.run_until_complete(self._startup())

    async def _receive(self) -> dict[str, Any]:
        return await self._events.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind.startswith("lifespan.startup.") and self._started and not self._started.done():
            if kind == "lifespan.startup.complete":
                self._started.set_result(True)
            else:
                self._started.set_exception(CheckFailed(f"lifespan startup failed: {message}"))
        elif kind.startswith("lifespan.shutdown.") and self._shutdown:
            self._shutdown.set_result(kind == "lifespan.shutdown.complete")

    async def _lifespan(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception:  # an app without lifespan support (uvicorn's "auto" mode ignores it)
            if self._started and not self._started.done():
                self._started.set_result(False)
            return
        if self._started and not self._started.done():
            self._started.set_result(False)

    async def _startup(self) -> None:
        self._started = self.loop.create_future()
        self._task = self.loop.create_task(self._lifespan())
        await self._events.put({"type": "lifespan.startup"})
        await self._started

    async def _stop(self) -> None:
        assert self._task is not None
        if not self._task.done():
            self._shutdown = self.loop.create_future()
            await self._events.put({"type": "lifespan.shutdown"})
            await asyncio.wait_for(self._shutdown, 30)
        await asyncio.wait_for(self._task, 30)

    def batch(self, path: str, deliveries: Sequence[Delivery]) -> Batch:
        # Untimed: a fresh scope (the framework writes into it) and exchange per request.
        requests = [(scope_for(path, d, self.state), Exchange(d.body)) for d in deliveries]
        statuses: list[int] = []
        bodies: list[bytes] = []
        app = self.app

        async def timed() -> tuple[int, int]:
            clock, cpu = time.perf_counter_ns, time.process_time_ns
            start_cpu, start = cpu(), clock()
            for scope, exchange in requests:
                await app(scope, exchange.receive, exchange.send)
            elapsed = clock() - start
            return elapsed, cpu() - start_cpu

        def run() -> tuple[int, int]:
            elapsed = self.loop.run_until_complete(timed())
            for _, exchange in requests:
                statuses.append(exchange.status)
                bodies.append(b"".join(exchange.chunks))
            return elapsed

        return Batch(run, statuses, bodies)

    def close(self) -> None:
        self.loop.run_until_complete(self._stop())


class ASGIHarness:
    name = "ASGI: await app(scope, receive, send) on one asyncio loop, after lifespan startup"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def serve(self, app: Any) -> Served:
        return ASGIServed(app, self.loop)

    def close(self) -> None:
        self.loop.close()


# -- frameworks: the registry ---------------------------------------------------------------


@dataclass(frozen=True)
class Framework:
    """How to build one framework's two applications, and which harness drives them."""

    name: str
    protocol: Literal["wsgi", "asgi"]
    #: The app with the library's adapter on ``receiver`` mounted at ``MOUNT``, as a user does.
    adapter: Callable[[WebhookReceiver], Any]
    #: The app with a bare route at ``BARE_PATH``: read the raw body, answer 200 and ACCEPTED;
    #: with ``floor=True`` the route also runs ``floor_check`` on the body and signature.
    bare: Callable[[bool], Any]
    #: What the two routes are, for the table's notes.
    adapter_note: str
    bare_note: str


def require(module: str, package: str) -> ModuleType:
    """Import a framework, or ``Skip`` if it is not installed."""
    if importlib.util.find_spec(module) is None:
        raise Skip(f"{package} is not installed (pip install {package})")
    return importlib.import_module(module)


def require_adapter(module: str) -> ModuleType:
    """Import an adapter module of the library, or ``Skip`` if it does not exist yet."""
    if importlib.util.find_spec(module) is None:
        raise Skip(f"{module} does not exist yet")
    return importlib.import_module(module)  # any other import error is a real failure


def flask_framework() -> Framework:
    flask = require("flask", "flask")
    adapter_module = require_adapter("aerostic_webhooks.flask")

    def adapter(receiver: WebhookReceiver) -> Any:
        app = flask.Flask(__name__)
        app.register_blueprint(adapter_module.webhook_blueprint(receiver), url_prefix=MOUNT)
        return app

    def bare(floor: bool = False) -> Any:
        app = flask.Flask(__name__)
        request, response = flask.request, flask.Response

        def bare_view() -> Any:
            body = request.get_data()
            if floor:
                floor_check(body, request.headers.get(SIGNATURE_HEADER))
            return response(ACCEPTED, 200, content_type=CONTENT_TYPE)

        path = FLOOR_PATH if floor else BARE_PATH
        app.add_url_rule(path, view_func=bare_view, methods=["POST"])  # == @app.post
        return app

    return Framework(
        "flask",
        "wsgi",
        adapter,
        bare,
        f"app.register_blueprint(webhook_blueprint(receiver), url_prefix={MOUNT!r})",
        "@app.post: request.get_data(); Response(b'{\"received\": true}', 200, json)",
    )


def starlette_framework() -> Framework:
    require("starlette", "starlette")
    adapter_module = require_adapter("aerostic_webhooks.starlette")
    applications = importlib.import_module("starlette.applications")
    routing = importlib.import_module("starlette.routing")
    responses = importlib.import_module("starlette.responses")

    def adapter(receiver: WebhookReceiver) -> Any:
        return applications.Starlette(routes=[adapter_module.webhook_route(MOUNT, receiver)])

    async def bare_endpoint(request: Any) -> Any:
        await request.body()
        return responses.Response(ACCEPTED, 200, media_type=CONTENT_TYPE)

    async def floor_endpoint(request: Any) -> Any:
        floor_check(await request.body(), request.headers.get(SIGNATURE_HEADER))
        return responses.Response(ACCEPTED, 200, media_type=CONTENT_TYPE)

    def bare(floor: bool = False) -> Any:
        endpoint = floor_endpoint if floor else bare_endpoint
        route = routing.Route(FLOOR_PATH if floor else BARE_PATH, endpoint, methods=["POST"])
        return applications.Starlette(routes=[route])

    return Framework(
        "starlette",
        "asgi",
        adapter,
        bare,
        f"Starlette(routes=[webhook_route({MOUNT!r}, receiver)])",
        "async Route: await request.body(); Response(b'{\"received\": true}', 200, json)",
    )


def fastapi_framework() -> Framework:
    fastapi = require("fastapi", "fastapi")
    adapter_module = require_adapter("aerostic_webhooks.fastapi")

    def adapter(receiver: WebhookReceiver) -> Any:
        app = fastapi.FastAPI()
        app.include_router(adapter_module.webhook_router(receiver), prefix=MOUNT)
        return app

    async def bare_endpoint(request: Any) -> Any:
        await request.body()
        return fastapi.Response(ACCEPTED, 200, media_type=CONTENT_TYPE)

    async def floor_endpoint(request: Any) -> Any:
        floor_check(await request.body(), request.headers.get(SIGNATURE_HEADER))
        return fastapi.Response(ACCEPTED, 200, media_type=CONTENT_TYPE)

    # FastAPI reads the signature to inject the request; this module's string annotations
    # cannot be resolved (fastapi is imported here, not at module level), so give it classes.
    for endpoint in (bare_endpoint, floor_endpoint):
        endpoint.__annotations__ = {"request": fastapi.Request, "return": fastapi.Response}

    def bare(floor: bool = False) -> Any:
        app = fastapi.FastAPI()
        endpoint = floor_endpoint if floor else bare_endpoint
        app.add_api_route(FLOOR_PATH if floor else BARE_PATH, endpoint, methods=["POST"])
        return app

    return Framework(
        "fastapi",
        "asgi",
        adapter,
        bare,
        f"app.include_router(webhook_router(receiver), prefix={MOUNT!r})",
        "async @app.post: await request.body(); Response(b'{\"received\": true}', 200, json)",
    )


def django_framework() -> Framework:
    django = require("django", "django")
    require_adapter("aerostic_webhooks.django")
    conf = importlib.import_module("django.conf")
    if not conf.settings.configured:
        # The same (empty) middleware stack for both routes; one URLconf holds both.
        conf.settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=["aerostic_webhooks.django"],
            MIDDLEWARE=[],
            DATABASES={},
            # The app's own receiver would start a worker on an ORM store with no database:
            # "external" keeps it idle; the rows use their own MemoryStore receivers.
            AEROSTIC_WEBHOOKS={"SECRET": SECRET, "WORKER": "external"},
        )
        django.setup()
    http = importlib.import_module("django.http")
    urls = importlib.import_module("django.urls")
    views = importlib.import_module("aerostic_webhooks.django.views")
    wsgi = importlib.import_module("django.core.handlers.wsgi")
    current: dict[str, WebhookReceiver] = {}

    class BenchView(views.AerosticWebhookView):  # type: ignore[misc,name-defined]
        """The app's view, on the row's MemoryStore receiver instead of the ORM store."""

        def get_receiver(self) -> WebhookReceiver:
            return current["receiver"]

    def bare_view(request: Any) -> Any:
        request.body  # noqa: B018 (reading the body is the point)
        return http.HttpResponse(ACCEPTED, status=200, content_type=CONTENT_TYPE)

    def floor_view(request: Any) -> Any:
        floor_check(request.body, request.headers.get(SIGNATURE_HEADER))
        return http.HttpResponse(ACCEPTED, status=200, content_type=CONTENT_TYPE)

    global urlpatterns  # noqa: PLW0603 (this module is the benchmark's URLconf)
    urlpatterns = [
        urls.path(MOUNT.lstrip("/"), BenchView.as_view()),
        urls.path(BARE_PATH.lstrip("/"), bare_view),
        urls.path(FLOOR_PATH.lstrip("/"), floor_view),
    ]

    def adapter(receiver: WebhookReceiver) -> Any:
        current["receiver"] = receiver
        return wsgi.WSGIHandler()

    def django_app(floor: bool = False) -> Any:
        return wsgi.WSGIHandler()  # one URLconf holds the bare and the floor route

    return Framework(
        "django",
        "wsgi",
        adapter,
        django_app,
        "AerosticWebhookView (get_receiver() -> the row's receiver), no middleware",
        "def view(request): request.body; HttpResponse(b'{\"received\": true}'), no middleware",
    )


urlpatterns: list[Any] = []


#: Every framework the benchmark knows, in the order the tables print them.
FRAMEWORKS: dict[str, Callable[[], Framework]] = {
    "flask": flask_framework,
    "django": django_framework,
    "starlette": starlette_framework,
    "fastapi": fastapi_framework,
}

HARNESSES: dict[str, Callable[[], Harness]] = {"wsgi": WSGIHarness, "asgi": ASGIHarness}


# -- rows -----------------------------------------------------------------------------------


class Recorder:
    """The no-op handler: it only notes the id of each event, for the checks."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, event: MessageReceived) -> None:
        self.ids.append(event.data.id)


@dataclass
class Sample:
    elapsed_ns: int
    cpu_ns: int  # CPU time of the whole process (all threads) during the timed loop
    count: int
    backlog: int | None = None  # background: events not yet handled when the loop ended
    #: external: events processed in this process all the same (a worker started here)
    processed: int | None = None

    @property
    def rate(self) -> float:
        return self.count / (self.elapsed_ns / 1e9)

    @property
    def cpu_us(self) -> float:
        """Process CPU microseconds per request: what the machine's other load barely moves."""
        return self.cpu_ns / self.count / 1000


@dataclass
class Row:
    framework: Framework
    harness: Harness
    kind: Kind
    samples: list[Sample] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.framework.name} {self.kind}"

    def rates(self) -> list[float]:
        return [s.rate for s in self.samples]

    @property
    def best(self) -> float:
        return max(self.rates())

    @property
    def median(self) -> float:
        return statistics.median(self.rates())

    def cpu(self) -> list[float]:
        return [s.cpu_us for s in self.samples]


def check_store(
    receiver: WebhookReceiver, expected: Sequence[Delivery], statuses: Sequence[Status]
) -> str:
    """Every expected event and no other recorded with its exact body, in one of ``statuses``;
    else the problem."""
    store = receiver.store
    counts = store.counts()
    if sum(counts[s] for s in statuses) != len(expected) or sum(counts.values()) != len(expected):
        shown = ", ".join(f"{s.value} {n}" for s, n in counts.items() if n)
        wanted = " or ".join(s.value for s in statuses)
        return f"store counts {shown}, expected {len(expected)} {wanted}"
    for d in expected:
        record = store.get(d.event_id)
        if record is None:
            return f"{d.event_id} not recorded"
        if record.body != d.body or record.status not in statuses:
            return f"{d.event_id} recorded as {record.status.value} or with another body"
    return ""


def row_app(
    fw: Framework, kind: Kind, recorder: Recorder
) -> tuple[Any, str, WebhookReceiver | None]:
    """A fresh app for one batch of a row, the path it answers at, and its receiver (none in
    the bare and floor rows); the adapter row's receiver hands every event to ``recorder``."""
    if kind in ("bare", "floor"):
        return fw.bare(kind == "floor"), FLOOR_PATH if kind == "floor" else BARE_PATH, None
    process: Literal["background", "external"] = "background" if kind == "adapter" else "external"
    receiver = WebhookReceiver(SECRET, store=MemoryStore(), process=process)
    if kind == "adapter":
        receiver.on(EVENT_TYPE)(recorder)
    return fw.adapter(receiver), MOUNT, receiver


def run_row(row: Row, w: Workload, profiler: cProfile.Profile | None = None) -> Sample:
    """One batch of ``row`` on a fresh app (and receiver): warm up, time, check."""
    fw, kind = row.framework, row.kind
    where = f"{row.label}"
    processed: int | None = None
    recorder = Recorder()
    app, path, receiver = row_app(fw, kind, recorder)
    try:
        served = row.harness.serve(app)
        try:
            # Untimed warm-up: the app's first request, the worker's threads, the first parse.
            warm = served.batch(path, [w.warmup])
            warm.run()
            warm.check(1, f"{where} warm-up")
            if receiver is not None and kind == "adapter":
                check(receiver.drain(DRAIN_TIMEOUT), f"{where}: warm-up drain timed out")
            batch = served.batch(path, w.deliveries)
            gc.collect()  # the collector stays enabled while timing, as in a server
            if profiler is not None:
                profiler.enable()
            elapsed, cpu_ns = batch.run()
            if profiler is not None:
                profiler.disable()
            backlog = len(w.deliveries) + 1 - len(recorder.ids) if kind == "adapter" else None
        finally:
            served.close()
        batch.check(len(w.deliveries), where)
        if receiver is not None:
            expected = [w.warmup, *w.deliveries]
            if kind == "adapter":
                check(receiver.drain(DRAIN_TIMEOUT), f"{where}: drain timed out")
                problem = check_store(receiver, expected, [Status.DONE])
                handled = sorted(recorder.ids)
                check(
                    handled == sorted(d.data_id for d in expected),
                    f"{where}: {len(handled)} handler calls, each event once expected",
                )
            else:
                # Every event recorded; all should be pending (nothing processed here). A
                # worker that the adapter started anyway is reported, not fatal: it is the
                # adapter's behaviour being measured (see the warning under the table).
                receiver.close()  # stop such a worker, so that the counts hold still
                problem = check_store(receiver, expected, [Status.PENDING, Status.DONE])
                processed = len(expected) - receiver.store.counts()[Status.PENDING]
            check(not problem, f"{where}: {problem}")
    finally:
        if receiver is not None:
            receiver.close()
    return Sample(elapsed, cpu_ns, len(w.deliveries), backlog, processed)


def measure(rows: Sequence[Row], w: Workload, repeat: int, warmup: bool) -> None:
    if warmup:
        for row in rows:
            run_row(row, w)
    for r in range(repeat):
        start = r % len(rows)
        for row in [*rows[start:], *rows[:start]]:
            row.samples.append(run_row(row, w))


# -- reporting ------------------------------------------------------------------------------


def print_environment(args: argparse.Namespace, w: Workload) -> None:
    print_run()
    print(f"pydantic:    {pydantic.VERSION}")
    names = ("flask", "werkzeug", "django", "starlette", "fastapi")
    print(f"frameworks:  {', '.join(f'{n} {version_of(n)}' for n in names)}")
    print_machine()
    print(f"load avg:    {load_average()} (at start)")
    print(
        f"settings:    number={args.number} repeat={args.repeat} "
        f"frameworks={','.join(args.frameworks)} warmup={'no' if args.no_warmup else 'yes'}"
    )
    print(f"body:        {EVENT_TYPE} sample, {w.body_bytes} bytes, a new data.id per request")
    print("timer:       time.perf_counter_ns around each batch; gc enabled, collected before")


def fmt_rate(value: float) -> str:
    return f"{value:10,.0f}"


def print_table(rows: Sequence[Row], number: int, repeat: int) -> None:
    print()
    print(f"== {number} requests per batch x {repeat} repeats, in process; requests per second ==")
    width = max(len("framework row"), *(len(row.label) for row in rows))
    print(
        f"{'':<{width}}  {'requests/s':>21}  {'wall':>7}  {'x bare':>6}  "
        f"{'CPU us/req':>15}  {'x bare':>6}  {'backlog':>7}\n"
        f"{'framework row':<{width}}  {'best':>10} {'median':>10}  {'us/req':>7}  {'wall':>6}  "
        f"{'best':>7} {'median':>7}  {'CPU':>6}  {'':>7}"
    )
    bare = {row.framework.name: row for row in rows if row.kind == "bare"}
    for row in rows:
        base = bare[row.framework.name]
        backlogs = [s.backlog for s in row.samples if s.backlog is not None]
        backlog = f"{statistics.median(backlogs):7.0f}" if backlogs else f"{'':>7}"
        cpu, base_cpu = row.cpu(), base.cpu()
        print(
            f"{row.label:<{width}}  {fmt_rate(row.best)} {fmt_rate(row.median)}  "
            f"{1e6 / row.best:7.1f}  {row.best / base.best:6.3f}  "
            f"{min(cpu):7.1f} {statistics.median(cpu):7.1f}  {min(base_cpu) / min(cpu):6.3f}  "
            f"{backlog}"
        )
    print("(requests/s: best = highest of the repeats; wall us/req and x bare wall from the best")
    print(" rates. CPU us/req: CPU time of the whole process, every thread, during the timed loop,")
    print(" per request; best = lowest; x bare CPU = bare's best over the row's best: the ratio")
    print(" that other load on the machine moves least. backlog: median of the events not yet")
    print(" handled by the worker when the timed loop ended)")
    for row in rows:
        processed = [s.processed for s in row.samples if s.processed]
        if processed:
            total = row.samples[0].count + 1
            print(
                f"warning: {row.label}: in {len(processed)} of {len(row.samples)} repeats, events "
                f"were processed in this process (up to {max(processed)} of {total}):\n"
                "         a worker ran although the receiver is process='external', so this "
                "row is not the request path alone"
            )
    frameworks = list(dict.fromkeys(row.framework.name for row in rows))
    for name in frameworks:
        fw = next(row.framework for row in rows if row.framework.name == name)
        harness = next(row.harness for row in rows if row.framework.name == name)
        print(f"  {name}: {harness.name}")
        print(f"    bare:     {fw.bare_note}")
        print("    floor:    the bare route + stdlib HMAC-SHA256, compare_digest, json.loads")
        print(f"    adapter:  {fw.adapter_note};")
        print("              WebhookReceiver(SECRET, store=MemoryStore()), process='background',")
        print("              one no-op handler: the worker runs in this process during the loop")
        print("    external: the same adapter, process='external': request path only")


def print_verdicts(rows: Sequence[Row]) -> list[bool]:
    print()
    print(
        f"-- target: through the adapter (background receiver), at least {TARGET_RATIO:.0%} of "
        "the bare route's requests/s\n   (verdict on the best rates; for reference: the ratio "
        "of the medians, the median of the\n   per-repeat ratios (paired), the external row, "
        "and the floor row:\n   the most any receiver that verifies and parses could keep)"
    )
    by_key = {(row.framework.name, row.kind): row for row in rows}
    results: list[bool] = []
    for name in dict.fromkeys(row.framework.name for row in rows):
        bare = by_key[(name, "bare")]
        for kind in ("adapter", "external", "floor"):
            row = by_key[(name, kind)]
            best = row.best / bare.best
            median = row.median / bare.median
            # Same repeat, run back to back: the ratio least moved by the machine's noise.
            paired = statistics.median(
                a / b for a, b in zip(row.rates(), bare.rates(), strict=True)
            )
            if kind == "adapter":
                ok = best >= TARGET_RATIO
                results.append(ok)
                verdict = f"target >= {TARGET_RATIO:.2f}  {'PASS' if ok else 'FAIL'}"
            elif kind == "floor":
                verdict = "(the ceiling: stdlib verify + parse)"
            else:
                verdict = "(for reference, not judged)"
            print(
                f"   {f'{name} {kind} / bare':<26}best {best:5.3f}  median {median:5.3f}  "
                f"paired {paired:5.3f}  {verdict}"
            )
    return results


# -- profile --------------------------------------------------------------------------------

FuncKey = tuple[str, int, str]


def profile_stats(row: Row, w: Workload) -> dict[FuncKey, tuple[int, float]]:
    """``(calls, own CPU seconds)`` by function over one batch of ``row`` (main thread only).

    Timed with the main thread's CPU clock, so that neither the machine's other load nor the
    waits for the GIL (the worker's share, which shows in the rates) are charged to a function.
    """
    profiler = cProfile.Profile(time.thread_time_ns, 1e-9)
    run_row(row, w, profiler)
    stats: dict[FuncKey, tuple[Any, ...]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    return {key: (int(value[1]), float(value[2])) for key, value in stats.items()}


def short(key: FuncKey) -> str:
    path, line, name = key
    if path == "~":
        return name
    parts = path.replace(os.sep, "/").split("/")
    return f"{'/'.join(parts[-2:])}:{line}({name})"


def print_profile(rows: Sequence[Row], w: Workload, top: int) -> None:
    """Where the adapter row's main thread spends time beyond the bare row's, by function."""
    by_key = {(row.framework.name, row.kind): row for row in rows}
    number = len(w.deliveries)
    for name in dict.fromkeys(row.framework.name for row in rows):
        bare = profile_stats(by_key[(name, "bare")], w)
        adapter = profile_stats(by_key[(name, "adapter")], w)
        total_bare = sum(t for _, t in bare.values())
        total_adapter = sum(t for _, t in adapter.values())
        print()
        print(
            f"== cProfile, {name}: adapter (background) minus bare, main thread CPU time, "
            f"{number} requests each =="
        )
        print(
            f"CPU per request under the profiler: bare {total_bare / number * 1e6:.1f} us, "
            f"adapter {total_adapter / number * 1e6:.1f} us, "
            f"difference {(total_adapter - total_bare) / number * 1e6:.1f} us"
        )
        difference = total_adapter - total_bare
        print(
            f"{'extra us/req':>12}  {'share':>6}  {'calls/req':>9}  function (own time, "
            "adapter - bare)"
        )
        extra = []
        for key in adapter.keys() | bare.keys():
            calls_a, time_a = adapter.get(key, (0, 0.0))
            calls_b, time_b = bare.get(key, (0, 0.0))
            extra.append((time_a - time_b, (calls_a - calls_b) / number, key))
        extra.sort(reverse=True)
        for seconds, calls, key in extra[:top]:
            share = seconds / difference if difference > 0 else 0.0
            print(f"{seconds / number * 1e6:12.2f}  {share:6.1%}  {calls:9.2f}  {short(key)}")
    print("(cProfile sees the main thread only, on its CPU clock: the worker's threads and the")
    print(" waits for the GIL show in the rates and in CPU us/req, not here. The profiler's own")
    print(" overhead inflates every time several-fold, small and frequent functions most: read")
    print(" the shares and the order, not the microseconds)")


# -- main -----------------------------------------------------------------------------------


def parse_frameworks(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in FRAMEWORKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown framework(s) {', '.join(unknown) or '(none)'}: use {','.join(FRAMEWORKS)}"
        )
    return list(dict.fromkeys(names))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=None, help="requests per batch (5000)")
    parser.add_argument("--repeat", type=int, default=None, help="batches per row (7)")
    parser.add_argument("--quick", action="store_true", help="smoke run: --number 300 --repeat 3")
    parser.add_argument(
        "--frameworks",
        type=parse_frameworks,
        default=list(FRAMEWORKS),
        help=f"comma-separated, from {','.join(FRAMEWORKS)} (default: all; missing ones skipped)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up pass")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a cProfile of the adapter row minus the bare row (main thread)",
    )
    args = parser.parse_args(argv)
    if args.number is None:
        args.number = 300 if args.quick else 5000
    if args.repeat is None:
        args.repeat = 3 if args.quick else 7
    if args.number < 1 or args.repeat < 1:
        parser.error("--number and --repeat must be positive")

    workload = build_workload(args.number)
    print_environment(args, workload)
    skipped: list[str] = []
    frameworks: list[Framework] = []
    for name in args.frameworks:
        try:
            frameworks.append(FRAMEWORKS[name]())
        except Skip as reason:
            skipped.append(f"{name}: {reason}; skipped")
    harnesses: dict[str, Harness] = {}
    rows: list[Row] = []
    for fw in frameworks:
        harness = harnesses.get(fw.protocol)
        if harness is None:
            harness = harnesses[fw.protocol] = HARNESSES[fw.protocol]()
        rows.extend(Row(fw, harness, kind) for kind in KINDS)
    try:
        if rows:
            measure(rows, workload, args.repeat, warmup=not args.no_warmup)
            print_table(rows, args.number, args.repeat)
            results = print_verdicts(rows)
        else:
            results = []
        for message in skipped:
            print(f"skipped: {message}")
        print()
        if not results:
            print("overall: SKIPPED (no framework could run)")
        else:
            print(
                f"overall: {'PASS' if all(results) else 'FAIL'} "
                f"({sum(results)}/{len(results)} frameworks keep {TARGET_RATIO:.0%})"
            )
        if args.profile and rows:
            print_profile(rows, workload, top=20)
    except CheckFailed as failure:
        print(f"benchmark self-check failed: {failure}", file=sys.stderr)
        return 1
    finally:
        for harness in harnesses.values():
            harness.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
