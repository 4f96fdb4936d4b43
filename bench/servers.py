"""Requests per second and latency of the adapters behind real servers, over loopback sockets.

Run from the repository root (see ``bench/README.md``)::

    python bench/servers.py                      # 5 s per cell, concurrency 1, 16, 64
    python bench/servers.py --duration 2 --frameworks flask

Each framework is served in a subprocess on a free 127.0.0.1 port, the way it is deployed:
Flask and Django (WSGI) by gunicorn (sync workers, ``-w 2``), Starlette, FastAPI and Django
(ASGI, the async view) by uvicorn (1 worker). One application holds three routes:

- ``/webhooks/aerostic``: the library's adapter on ``WebhookReceiver(SECRET,
  store=SQLiteStore(<temporary file>))``, default ``process="background"``, with one handler:
  a no-op (``noop`` server) or ``time.sleep(10)`` (``sleep10`` server);
- ``/bare``: a route of the framework that reads the raw body and answers 200
  ``{"received": true}``;
- ``/floor``: the bare route plus the least a receiver that records each delivery before
  answering can do, with the standard library only: HMAC-SHA256 of the body compared with the
  header, ``json.loads``, and one ``INSERT`` into a two-column SQLite table in a file of its own
  (WAL, ``synchronous=NORMAL`` and checkpoints off the request, as the library's store), done in
  the request with no thread hop. Its ratio to ``/bare`` is the most such a receiver can keep
  on that server.

The load is ``wrk`` (keep-alive connections, ``-c`` = concurrency, at most 2 threads), driven by
a Lua script that cycles through pre-signed bodies, a new ``data.id`` each (written to a file
per cell; a cell sends each body at most once unless the "wrapped" column says otherwise).
Every answer is checked in the script (200 and a body containing ``received``). The server's
CPU time per request (every process of it, from ``/proc`` on Linux) is printed beside each
cell. After a server is stopped, its SQLite store and the floor route's file are opened and
the recorded events are counted.

Targets (from the issue): every adapter keeps at least 85% of its bare route's requests/s;
with the 10 s handler, the adapter's p99 at concurrency 64 is within 1.2x of the no-op
handler's p99 and under 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import importlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _env import load_average, print_machine, print_run, version_of

from aerostic_webhooks import SQLiteStore, WebhookReceiver
from aerostic_webhooks.stores.sqlite import _INTAKE_CHECKPOINT_PAGES, _when_free
from aerostic_webhooks.testing import sample_body
from aerostic_webhooks.worker import _MAINTAIN_INTERVAL

# A fixed, made-up secret: the benchmark needs reproducible inputs, not secrecy.
SECRET = "whsec_aerostic_bench_0123456789abcdef"
EVENT_TYPE = "message.received"
MOUNT = "/webhooks/aerostic"
BARE_PATH = "/bare"
ACCEPTED = b'{"received": true}'
CONTENT_TYPE = "application/json"
SLEEP_SECONDS = 10.0
PLACEHOLDER = "msg_bench_PLACEHOLDER"

TARGET_RATIO = 0.85
TARGET_P99_RATIO = 1.2
TARGET_P99_MS = 100.0
JUDGED_CONCURRENCY = 64

FLOOR_PATH = "/floor"
FLOOR_TABLE = "floor_inbox"
REFUSED = b'{"error": "Invalid signature"}'

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent

# -- the applications (built inside the server subprocess, from the environment) ------------


def _receiver() -> Any:
    receiver = WebhookReceiver(SECRET, store=SQLiteStore(os.environ["AEROSTIC_BENCH_DB"]))
    if os.environ.get("AEROSTIC_BENCH_HANDLER") == "sleep10":

        @receiver.on("*")
        def slow(event: Any) -> None:
            time.sleep(SLEEP_SECONDS)

    else:

        @receiver.on("*")
        def noop(event: Any) -> None:
            return None

    return receiver


def create_floor_inbox(path: Path) -> None:
    """The floor route's SQLite file, made by the driver before the server's workers open it
    (two workers switching a new file to WAL at once would refuse each other)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"CREATE TABLE {FLOOR_TABLE} (event_id TEXT PRIMARY KEY, body BLOB NOT NULL)")
    conn.close()


_FLOOR_INSERT = f"INSERT OR IGNORE INTO {FLOOR_TABLE} VALUES (?, ?)"


class FloorInbox:
    """The floor route's whole work: verify, parse, record. Its SQLite upkeep mirrors the
    store's, with the library's own settings: deliveries leave WAL checkpoints to a thread of
    their own, run as often as the worker's upkeep, and wait for another process's write lock
    in the store's short steps (``_when_free``)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._key = SECRET.encode()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _checkpoints(self) -> None:
        conn = self._connect()
        while True:
            time.sleep(_MAINTAIN_INTERVAL)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def accept(self, body: bytes, signature: str) -> bool:
        expected = "sha256=" + hmac.new(self._key, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return False
        event = json.loads(body)
        row = (f"{event['event']}:{event['data']['id']}", body)
        with self._lock:
            if self._conn is None:  # in the server's worker process, at its first request
                self._conn = self._connect()
                self._conn.execute("PRAGMA busy_timeout=0")
                self._conn.execute(f"PRAGMA wal_autocheckpoint={_INTAKE_CHECKPOINT_PAGES}")
                threading.Thread(target=self._checkpoints, daemon=True).start()
            conn = self._conn
            _when_free(lambda: conn.execute(_FLOOR_INSERT, row), 5.0)
        return True

    def answer(self, body: bytes, signature: str) -> tuple[bytes, int]:
        return (ACCEPTED, 200) if self.accept(body, signature) else (REFUSED, 401)


def _floor() -> FloorInbox:
    return FloorInbox(os.environ["AEROSTIC_BENCH_FLOOR_DB"])


def flask_app() -> Any:
    """gunicorn 'servers:flask_app()'"""
    # Frameworks are imported in the server that uses them, not by the load driver.
    flask = importlib.import_module("flask")
    adapter = importlib.import_module("aerostic_webhooks.flask")

    app = flask.Flask(__name__)
    app.register_blueprint(adapter.webhook_blueprint(_receiver()), url_prefix=MOUNT)

    def bare() -> Any:
        flask.request.get_data()
        return flask.Response(ACCEPTED, 200, content_type=CONTENT_TYPE)

    inbox = _floor()

    def floor() -> Any:
        request = flask.request
        body = request.get_data()
        signature = request.environ.get("HTTP_X_AEROSTIC_SIGNATURE", "")
        return flask.Response(*inbox.answer(body, signature), content_type=CONTENT_TYPE)

    app.add_url_rule(BARE_PATH, view_func=bare, methods=["POST"])  # as @app.post does
    app.add_url_rule(FLOOR_PATH, view_func=floor, methods=["POST"])
    return app


def _asgi_views(response: Any) -> tuple[Any, Any]:
    """The bare and floor endpoints of the Starlette and FastAPI apps, answering with
    ``response`` (the framework's ``Response`` class)."""
    inbox = _floor()

    async def bare(request: Any) -> Any:
        await request.body()
        return response(ACCEPTED, 200, media_type=CONTENT_TYPE)

    async def floor(request: Any) -> Any:
        body = await request.body()
        content, status = inbox.answer(body, request.headers.get("x-aerostic-signature", ""))
        return response(content, status, media_type=CONTENT_TYPE)

    return bare, floor


def starlette_app() -> Any:
    """uvicorn --factory servers:starlette_app"""
    applications = importlib.import_module("starlette.applications")
    responses = importlib.import_module("starlette.responses")
    routing = importlib.import_module("starlette.routing")
    adapter = importlib.import_module("aerostic_webhooks.starlette")

    bare, floor = _asgi_views(responses.Response)
    routes = [
        adapter.webhook_route(MOUNT, _receiver()),
        routing.Route(BARE_PATH, bare, methods=["POST"]),
        routing.Route(FLOOR_PATH, floor, methods=["POST"]),
    ]
    return applications.Starlette(routes=routes)


def fastapi_app() -> Any:
    """uvicorn --factory servers:fastapi_app"""
    fastapi = importlib.import_module("fastapi")
    adapter = importlib.import_module("aerostic_webhooks.fastapi")

    app = fastapi.FastAPI()
    app.include_router(adapter.webhook_router(_receiver()), prefix=MOUNT)

    bare, floor = _asgi_views(fastapi.Response)
    # FastAPI injects the request from the annotation: give it the class, not a string.
    for route in (bare, floor):
        route.__annotations__ = {"request": fastapi.Request, "return": fastapi.Response}

    app.add_api_route(BARE_PATH, bare, methods=["POST"])
    app.add_api_route(FLOOR_PATH, floor, methods=["POST"])
    return app


urlpatterns: list[Any] = []  # Django's URLconf (ROOT_URLCONF is this module), set by _django


def _django(asynchronous: bool) -> None:
    """Configure Django in the server: the app's view on ``_receiver()`` and a bare view, with
    the middleware a new project has that needs no database (the same for both routes)."""
    conf = importlib.import_module("django.conf")
    conf.settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="servers",
        INSTALLED_APPS=["aerostic_webhooks.django"],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.middleware.clickjacking.XFrameOptionsMiddleware",
        ],
        DATABASES={},
        # The app's own receiver (ORM store) stays idle: the route uses _receiver().
        AEROSTIC_WEBHOOKS={"SECRET": SECRET, "WORKER": "external"},
    )
    importlib.import_module("django").setup()
    http = importlib.import_module("django.http")
    urls = importlib.import_module("django.urls")
    csrf = importlib.import_module("django.views.decorators.csrf")
    methods = importlib.import_module("django.views.decorators.http")
    views = importlib.import_module("aerostic_webhooks.django.views")
    receiver = _receiver()
    base = views.AsyncAerosticWebhookView if asynchronous else views.AerosticWebhookView

    class View(base):  # type: ignore[misc,valid-type]
        def get_receiver(self) -> Any:
            return receiver

    def bare(request: Any) -> Any:
        request.body  # noqa: B018 (reading the body is the point)
        return http.HttpResponse(ACCEPTED, status=200, content_type=CONTENT_TYPE)

    async def async_bare(request: Any) -> Any:
        return bare(request)  # the body is already read in full by Django's ASGI handler

    inbox = _floor()

    def floor(request: Any) -> Any:
        signature = request.META.get("HTTP_X_AEROSTIC_SIGNATURE", "")
        content, status = inbox.answer(request.body, signature)
        return http.HttpResponse(content, status=status, content_type=CONTENT_TYPE)

    async def async_floor(request: Any) -> Any:
        return floor(request)

    def route(view: Any) -> Any:
        return csrf.csrf_exempt(methods.require_POST(view))

    urlpatterns[:] = [
        urls.path(MOUNT.lstrip("/") + "/", View.as_view()),
        urls.path(BARE_PATH.lstrip("/"), route(async_bare if asynchronous else bare)),
        urls.path(FLOOR_PATH.lstrip("/"), route(async_floor if asynchronous else floor)),
    ]


def django_app() -> Any:
    """gunicorn 'servers:django_app()'"""
    _django(asynchronous=False)
    return importlib.import_module("django.core.wsgi").get_wsgi_application()


def django_asgi_app() -> Any:
    """uvicorn --factory servers:django_asgi_app"""
    _django(asynchronous=True)
    return importlib.import_module("django.core.asgi").get_asgi_application()


def server_command(framework: str, port: int) -> list[str]:
    bind = f"127.0.0.1:{port}"
    if framework in ("flask", "django"):
        return [
            str(VENV_BIN / "gunicorn"),
            *("-k", "sync", "-w", "2", "-b", bind, "--log-level", "warning"),
            f"servers:{framework}_app()",
        ]
    return [
        str(VENV_BIN / "uvicorn"),
        *("--factory", f"servers:{framework.replace('-', '_')}_app", "--workers", "1"),
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        "--no-access-log",
    ]


SERVER_NOTES = {
    "flask": "gunicorn -k sync -w 2 'servers:flask_app()'",
    "django": "gunicorn -k sync -w 2 'servers:django_app()' (AerosticWebhookView)",
    "django-asgi": "uvicorn --factory servers:django_asgi_app --workers 1 (async view)",
    "starlette": "uvicorn --factory servers:starlette_app --workers 1",
    "fastapi": "uvicorn --factory servers:fastapi_app --workers 1",
}

#: Where each server answers the adapter: Django's URLconf has the documented trailing slash.
MOUNTS = {"django": MOUNT + "/", "django-asgi": MOUNT + "/"}

# -- load generation: wrk and a Lua script over pre-signed bodies ---------------------------

LUA = r"""
local threads = {}
local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local requests = {}
local index = 0
bad = 0  -- a global: done() reads it with thread:get
function init(args)
  local path, file, nthreads = args[1], args[2], tonumber(args[3])
  local n = 0
  for line in io.lines(file) do
    if n % nthreads == tid - 1 then
      local tab = string.find(line, "\t", 1, true)
      local signature, body = string.sub(line, 1, tab - 1), string.sub(line, tab + 1)
      local headers = {}
      headers["Content-Type"] = "application/json"
      headers["X-Aerostic-Signature"] = signature
      table.insert(requests, wrk.format("POST", path, headers, body))
    end
    n = n + 1
  end
end

function request()
  index = index + 1
  if index > #requests then index = 1 end
  return requests[index]
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, "received", 1, true) then bad = bad + 1 end
end

function done(summary, latency, requests)
  local b = 0
  for _, thread in ipairs(threads) do b = b + thread:get("bad") end
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, b))
end
"""


@dataclass
class Cell:
    framework: str
    handler: str
    route: str
    concurrency: int
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    socket_errors: int = 0
    bad: int = 0
    bodies: int = 0
    server_cpu: float | None = None  # seconds of CPU, every process of the server

    @property
    def cpu_us(self) -> float | None:
        """The server's CPU time per answered request, in microseconds."""
        if self.server_cpu is None or not self.requests:
            return None
        return self.server_cpu / self.requests * 1e6

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def wrapped(self) -> bool:
        return self.route != "bare" and self.requests > self.bodies


def write_bodies(path: Path, prefix: str, number: int) -> None:
    template = sample_body(EVENT_TYPE, id=PLACEHOLDER).decode()
    check(PLACEHOLDER in template and "\n" not in template, "unexpected sample body")
    key = SECRET.encode()
    lines = []
    for i in range(number):
        body = template.replace(PLACEHOLDER, f"{prefix}_{i:07d}")
        digest = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
        lines.append(f"sha256={digest}\t{body}\n")
    path.write_text("".join(lines))


def run_wrk(port: int, path: str, bodies: Path, concurrency: int, duration: float) -> list[int]:
    threads = min(concurrency, 2)
    command = [
        "wrk",
        *("-t", str(threads), "-c", str(concurrency), "-d", f"{duration:g}s"),
        *("--timeout", "30s", "-s", str(bodies.parent / "load.lua")),
        f"http://127.0.0.1:{port}",
        "--",
        path,
        str(bodies),
        str(threads),
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=duration + 60
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return [int(x) for x in line.split()[1:]]
    raise CheckFailed(f"wrk gave no result: {done.stdout}\n{done.stderr}")


# -- servers --------------------------------------------------------------------------------


class CheckFailed(Exception):
    """A benchmark self-check failed: the numbers of this run are not to be trusted."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /bare HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 405"):
                    return
        except OSError:
            time.sleep(0.1)
    raise CheckFailed(f"server did not start serving:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group; SIGKILL it after 5 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # leftover workers of the group, if any
    process.wait(5)


def group_cpu_seconds(group: int) -> float | None:
    """User + system CPU seconds of every live process in process group ``group`` (Linux
    ``/proc``; ``None`` elsewhere). Workers live as long as the server, so the difference
    over a cell is what the server spent on it, less noisy than its rate on a shared host."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == group:  # pgrp; then utime and stime, fields 14 and 15 of stat
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def recorded(db: Path, table: str | None = None) -> int:
    """Events in the adapter's store, or rows in the floor route's ``table``."""
    if table is not None:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    store = SQLiteStore(str(db))
    try:
        return sum(store.counts().values())
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def run_server(
    framework: str,
    handler: str,
    concurrencies: Sequence[int],
    duration: float,
    bodies_per_cell: int,
    work: Path,
) -> tuple[list[Cell], int, int]:
    """The server's cells, then the events its store and its floor route's file recorded."""
    db = work / f"{framework}-{handler}.sqlite3"
    floor_db = work / f"{framework}-{handler}-floor.sqlite3"
    create_floor_inbox(floor_db)
    log = work / f"{framework}-{handler}.log"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "AEROSTIC_BENCH_DB": str(db),
        "AEROSTIC_BENCH_FLOOR_DB": str(floor_db),
        "AEROSTIC_BENCH_HANDLER": handler,
    }
    cells: list[Cell] = []
    with log.open("wb") as out:
        process = subprocess.Popen(
            server_command(framework, port),
            cwd=HERE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_serving(port, process, log)
        # Untimed warm-up of every route (first requests, worker threads, SQLite files).
        warm = work / "warm.txt"
        write_bodies(warm, f"warm_{framework}_{handler}", 2000)
        paths = {"bare": BARE_PATH, "floor": FLOOR_PATH, "adapter": MOUNTS.get(framework, MOUNT)}
        for path in paths.values():
            run_wrk(port, path, warm, 4, 1)
        for concurrency in concurrencies:
            for route, path in paths.items():
                bodies = work / "bodies.txt"
                prefix = f"{framework}_{handler}_{route}_{concurrency}"
                write_bodies(bodies, prefix, bodies_per_cell)
                cpu_before = group_cpu_seconds(process.pid)
                result = run_wrk(port, path, bodies, concurrency, duration)
                time.sleep(0.2)  # the last answers' bookkeeping
                cpu_after = group_cpu_seconds(process.pid)
                count, micros, p50, p99, top, errors, bad = result
                cells.append(
                    Cell(
                        framework,
                        handler,
                        route,
                        concurrency,
                        count,
                        micros / 1e6,
                        p50 / 1e3,
                        p99 / 1e3,
                        top / 1e3,
                        errors,
                        bad,
                        bodies_per_cell,
                        None if cpu_after is None or cpu_before is None else cpu_after - cpu_before,
                    )
                )
                check(process.poll() is None, f"{framework} server died:\n{log.read_text()}")
    finally:
        stop(process)
    return cells, recorded(db), recorded(floor_db, FLOOR_TABLE)


# -- reporting ------------------------------------------------------------------------------


def print_environment(args: argparse.Namespace) -> None:
    print_run()
    names = ("flask", "werkzeug", "django", "starlette", "fastapi", "gunicorn", "uvicorn")
    print(f"packages:    {', '.join(f'{n} {version_of(n)}' for n in names)}")
    wrk = subprocess.run(["wrk", "--version"], check=False, capture_output=True, text=True)
    print(f"load:        {(wrk.stdout or wrk.stderr).splitlines()[0].strip()}")
    print_machine()
    print(f"load avg:    {load_average()} (at start)")
    print(
        f"settings:    duration={args.duration:g}s per cell, concurrency="
        f"{','.join(map(str, args.concurrency))}, bodies per cell={args.bodies}, "
        f"frameworks={','.join(args.frameworks)}"
    )
    print("servers:     on 127.0.0.1 (a free port), in a subprocess; wrk on the same host")
    for name in args.frameworks:
        print(f"  {name:<10} {SERVER_NOTES[name]}")
    print("receiver:    WebhookReceiver(SECRET, store=SQLiteStore(<tmp file>)), background;")
    print("             handler 'noop' (returns) or 'sleep10' (time.sleep(10))")


def print_table(cells: Sequence[Cell]) -> None:
    print()
    print("== requests/s and latency per (framework, handler, route, concurrency) ==")
    print(
        f"{'framework':<10} {'handler':<8} {'route':<8} {'conc':>4}  {'requests':>8}  "
        f"{'req/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  {'max ms':>8}  {'cpu us':>6}  "
        f"{'errors':>6}  {'wrapped':>7}"
    )
    for c in cells:
        cpu = "-" if c.cpu_us is None else f"{c.cpu_us:,.0f}"
        print(
            f"{c.framework:<10} {c.handler:<8} {c.route:<8} {c.concurrency:>4}  {c.requests:>8}  "
            f"{c.rate:>8,.0f}  {c.p50_ms:>8.2f}  {c.p99_ms:>8.2f}  {c.max_ms:>8.1f}  {cpu:>6}  "
            f"{c.socket_errors + c.bad:>6}  {'yes' if c.wrapped else '':>7}"
        )
    print("(cpu us: the server's CPU time per request, all its processes and threads, from")
    print(" /proc; errors: socket errors + answers not 200 with 'received' in the body;")
    print(" wrapped: the cell sent more requests than it had distinct bodies, so some were")
    print(" duplicates)")


def print_verdicts(cells: Sequence[Cell]) -> list[bool]:
    by = {(c.framework, c.handler, c.route, c.concurrency): c for c in cells}
    results: list[bool] = []
    print()
    print(f"-- target: adapter requests/s >= {TARGET_RATIO:.0%} of the bare route's, same server")
    for c in cells:
        if c.route != "adapter":
            continue
        bare = by[(c.framework, c.handler, "bare", c.concurrency)]
        ratio = c.rate / bare.rate if bare.rate else 0.0
        ok = ratio >= TARGET_RATIO
        results.append(ok)
        label = f"{c.framework} {c.handler} c={c.concurrency}"
        cpu = ""
        if c.cpu_us is not None and bare.cpu_us:
            cpu = f"  (server CPU a request: {c.cpu_us:,.0f} vs {bare.cpu_us:,.0f} us)"
        print(
            f"   {label:<24} adapter {c.rate:8,.0f}  bare {bare.rate:8,.0f}  "
            f"ratio {ratio:5.3f}  {'PASS' if ok else 'FAIL'}{cpu}"
        )
    print()
    print(
        "-- for reference: the floor route (stdlib verify + parse + one SQLite INSERT) against\n"
        "   the bare route, the most a receiver that records before it answers keeps here,\n"
        "   and the adapter against the floor"
    )
    for c in cells:
        floor = by.get((c.framework, c.handler, "floor", c.concurrency))
        if c.route != "adapter" or floor is None or not floor.rate:
            continue
        bare = by[(c.framework, c.handler, "bare", c.concurrency)]
        label = f"{c.framework} {c.handler} c={c.concurrency}"
        print(
            f"   {label:<24} floor {floor.rate:8,.0f}  floor/bare "
            f"{floor.rate / bare.rate if bare.rate else 0.0:5.3f}  adapter/floor "
            f"{c.rate / floor.rate:5.3f}  (floor CPU a request: {floor.cpu_us or 0:,.0f} us)"
        )
    print()
    print(
        f"-- target: sleep10-handler adapter p99 <= {TARGET_P99_RATIO}x the noop-handler p99 "
        f"and < {TARGET_P99_MS:g} ms\n   (judged at concurrency {JUDGED_CONCURRENCY}; "
        "other concurrencies for reference)"
    )
    for c in cells:
        if c.route != "adapter" or c.handler != "sleep10":
            continue
        noop = by.get((c.framework, "noop", "adapter", c.concurrency))
        if noop is None:
            continue
        ratio = c.p99_ms / noop.p99_ms if noop.p99_ms else float("inf")
        label = f"{c.framework} c={c.concurrency}"
        figures = (
            f"   {label:<16} p99 sleep10 {c.p99_ms:8.2f} ms  noop {noop.p99_ms:8.2f} ms  "
            f"ratio {ratio:6.2f}"
        )
        if c.concurrency == JUDGED_CONCURRENCY:
            ok = ratio <= TARGET_P99_RATIO and c.p99_ms < TARGET_P99_MS
            results.append(ok)
            print(f"{figures}  {'PASS' if ok else 'FAIL'}")
        else:
            print(f"{figures}  (reference)")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell (5)")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64]
    )
    parser.add_argument(
        "--frameworks",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(SERVER_NOTES),
        help=f"comma-separated, from {','.join(SERVER_NOTES)}",
    )
    parser.add_argument("--bodies", type=int, default=30000, help="distinct bodies per cell")
    args = parser.parse_args(argv)
    unknown = [f for f in args.frameworks if f not in SERVER_NOTES]
    if unknown:
        parser.error(f"unknown framework(s): {', '.join(unknown)}")
    if shutil.which("wrk") is None:
        print("wrk not found (apt-get install -y wrk)", file=sys.stderr)
        return 2
    print_environment(args)
    cells: list[Cell] = []
    stores: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="aerostic-bench-servers-") as tmp:
            work = Path(tmp)
            (work / "load.lua").write_text(LUA)
            for framework in args.frameworks:
                for handler in ("noop", "sleep10"):
                    server_cells, count, floor_count = run_server(
                        framework, handler, args.concurrency, args.duration, args.bodies, work
                    )
                    cells.extend(server_cells)
                    for route, number in (("adapter", count), ("floor", floor_count)):
                        answered = sum(c.requests for c in server_cells if c.route == route)
                        stores.append(
                            f"  {framework} {handler} {route}: {number} events recorded "
                            f"({route} answers counted by wrk: {answered}, plus 2000 warm-up "
                            "bodies at most)"
                        )
    except CheckFailed as failure:
        print(f"benchmark self-check failed: {failure}", file=sys.stderr)
        return 1
    print_table(cells)
    print()
    print("store check (SQLite file opened after the server stopped):")
    for line in stores:
        print(line)
    results = print_verdicts(cells)
    errors = sum(c.socket_errors + c.bad for c in cells)
    print()
    print(
        f"overall: {'PASS' if all(results) and not errors else 'FAIL'} "
        f"({sum(results)}/{len(results)} judged targets met; {errors} request errors)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
