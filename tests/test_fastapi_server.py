"""The FastAPI example under uvicorn, over real sockets: 200 concurrent deliveries, each
acknowledged within a second while every handler sleeps 10 s, and each handled exactly once.

uvicorn serves ``examples/fastapi_app.py``'s ``create_app(receiver)`` through a module written
into a temporary directory: its receiver (secret and SQLite inbox from the environment, 256
handler threads) has one ``"*"`` handler that sleeps 10 s and then appends
``pid event_type event_id`` to a counter file, outside the store under test. Two servers run:
one uvicorn process, and two worker processes sharing one SQLite inbox. They start together
and get their deliveries one after the other, so their handlers sleep at the same time and
the module takes about as long as one of them.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="FastAPI is not installed: pip install -e '.[fastapi]'")
pytest.importorskip("uvicorn", reason="uvicorn is not installed: pip install -e '.[test]'")

from aerostic_webhooks import sign
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body

from . import servers as server_helpers

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_fastapi_server_test"
URL = "/webhooks/aerostic"
ACCEPTED = (200, b'{"received": true}')
HANDLER_SECONDS = 10.0
DELIVERIES = 200
CHUNKED = 12  # of the 200, this many (every 17th) are sent chunked, without a length
ACK_SECONDS = 1.0
SERVERS = {"1-worker": 1, "2-workers": 2}  # name: uvicorn worker processes

# The example's create_app() around a receiver whose one handler sleeps and counts its runs.
WRAPPER = """
import os
import sys
import time

sys.path.insert(0, {examples!r})

import fastapi_app

from aerostic_webhooks import WebhookReceiver

receiver = WebhookReceiver(concurrency=256)
counter = os.open({counter!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@receiver.on("*")
def slow(event):
    time.sleep({seconds!r})
    line = f"{{os.getpid()}} {{event.event}} {{event.event}}:{{event.data.id}}\\n"
    os.write(counter, line.encode())


app = fastapi_app.create_app(receiver)
"""


@dataclasses.dataclass
class Server:
    port: int
    workers: int
    counter: Path
    log: Path
    process: subprocess.Popen[bytes]

    def handled(self) -> list[str]:
        return self.counter.read_text().splitlines() if self.counter.exists() else []

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM (the lifespan drains the receiver), then SIGKILL after ``timeout``;
        returns the seconds it took to exit by itself (``inf`` if it had to be killed)."""
        if self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return float("inf")
        return time.monotonic() - started


@dataclasses.dataclass
class Delivery:
    event_id: str
    status: int
    answer: bytes
    elapsed: float


def launch(directory: Path, workers: int) -> Server:
    counter = directory / "handled.txt"
    (directory / "served_app.py").write_text(
        WRAPPER.format(
            examples=str(ROOT / "examples"), counter=str(counter), seconds=HANDLER_SECONDS
        )
    )
    port = server_helpers.free_port()
    env = {
        **os.environ,
        "AEROSTIC_WEBHOOK_SECRET": SECRET,
        "AEROSTIC_WEBHOOKS_DB": str(directory / "inbox.sqlite3"),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(directory), "served_app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    if workers > 1:
        command += ["--workers", str(workers)]
    log = directory / "uvicorn.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=env, cwd=directory, stdout=output, stderr=subprocess.STDOUT
        )
    return Server(port, workers, counter, log, process)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Both servers, started together, each with its own inbox and counter; stopped at the end
    (killed if SIGTERM has not stopped one within 30 s)."""
    started: dict[str, Server] = {}
    try:
        for name, workers in SERVERS.items():
            started[name] = launch(tmp_path_factory.mktemp(name), workers)
        for server in started.values():
            server_helpers.wait_until_serving(
                server.port, server.process, URL, status=405, log=server.output
            )
        yield started
    finally:
        for server in started.values():
            server.stop()


def delivery_body(n: int) -> tuple[str, bytes]:
    """Event ``n``: the samples in turn, each with its own ``data.id``; and its event id."""
    event_type = list(SAMPLE_PAYLOADS)[n % len(SAMPLE_PAYLOADS)]
    data_id = f"evt-{n}"
    return f"{event_type}:{data_id}", sample_body(event_type, id=data_id)


def post(
    port: int,
    n: int,
    *,
    chunked: bool = False,
    signed: bool = True,
    path: str = URL,
    start: threading.Barrier | None = None,
) -> Delivery:
    """Deliver event ``n`` on a connection of its own; chunked bodies have no Content-Length.

    http.client follows no redirect, so a 200 is the endpoint's own answer.
    """
    event_id, body = delivery_body(n)
    headers = {"Content-Type": "application/json"}
    if signed:
        headers["X-Aerostic-Signature"] = sign(body, SECRET)
    if start is not None:
        start.wait()
    status, answer, seconds = server_helpers.post(port, path, body, headers, chunked=chunked)
    return Delivery(event_id, status, answer, seconds)


def post_all(port: int, numbers: range, *, chunked: Callable[[int], bool]) -> list[Delivery]:
    """Deliver every event of ``numbers`` at once: one thread and one connection each, all
    released together; each delivery's time runs from its own release to its answer."""
    start = threading.Barrier(len(numbers), timeout=30)
    with ThreadPoolExecutor(max_workers=len(numbers)) as pool:
        futures = [pool.submit(post, port, n, chunked=chunked(n), start=start) for n in numbers]
        return [future.result() for future in futures]


def get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    return response.status


def wait_for_lines(server: Server, count: int, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(server.handled()) < count:
        time.sleep(0.25)
    time.sleep(1)  # a second run of anything would show up now
    return server.handled()


@dataclasses.dataclass
class Exchange:
    """What one server answered, in the order it was asked."""

    unsigned: Delivery  # no signature header
    get_status: int  # GET at the mount point
    slash: Delivery  # a new event, POSTed to the mount point with a trailing slash
    burst: list[Delivery]  # DELIVERIES new events at once, CHUNKED of them chunked
    handled_after_burst: int  # handler runs finished once the burst was answered
    retries: list[Delivery]  # CHUNKED of the burst's events again, chunked

    def expected(self) -> list[str]:
        """The events accepted: each must be handled exactly once."""
        return [self.slash.event_id, *(delivery.event_id for delivery in self.burst)]


def exchange(server: Server) -> Exchange:
    unsigned = post(server.port, DELIVERIES + 1, signed=False)
    get_status = get(server.port, URL)
    slash = post(server.port, DELIVERIES, path=URL + "/")
    burst = post_all(server.port, range(DELIVERIES), chunked=lambda n: n % 17 == 0)
    handled_after_burst = len(server.handled())
    retries = post_all(server.port, range(CHUNKED), chunked=lambda n: True)
    return Exchange(unsigned, get_status, slash, burst, handled_after_burst, retries)


@pytest.fixture(scope="module")
def exchanges(servers: dict[str, Server]) -> dict[str, Exchange]:
    """Each server's exchange, one server after the other (one burst at a time)."""
    return {name: exchange(server) for name, server in servers.items()}


@pytest.mark.parametrize("name", SERVERS)
def test_200_concurrent_deliveries_are_acknowledged_within_a_second_while_handlers_sleep(
    servers: dict[str, Server], exchanges: dict[str, Exchange], name: str
) -> None:
    done = exchanges[name]
    assert sum(n % 17 == 0 for n in range(DELIVERIES)) == CHUNKED
    assert len(done.burst) == DELIVERIES
    assert len(set(done.expected())) == DELIVERIES + 1
    for delivery in [*done.burst, *done.retries]:
        assert (delivery.status, delivery.answer) == ACCEPTED, (delivery, servers[name].output())
    slowest = max([*done.burst, *done.retries], key=lambda delivery: delivery.elapsed)
    assert slowest.elapsed < ACK_SECONDS, (
        f"{slowest.event_id} was acknowledged after {slowest.elapsed:.2f}s "
        f"while every handler sleeps {HANDLER_SECONDS:g}s"
    )
    assert done.handled_after_burst == 0, "an answer waited for a handler"


@pytest.mark.parametrize("name", SERVERS)
def test_contract_at_the_mount_point(exchanges: dict[str, Exchange], name: str) -> None:
    done = exchanges[name]
    assert (done.unsigned.status, done.unsigned.answer) == (401, b'{"error": "Invalid signature"}')
    assert done.get_status == 405
    # http.client follows no redirect: this 200 is the endpoint's own answer.
    assert (done.slash.status, done.slash.answer) == ACCEPTED
    assert done.slash.elapsed < ACK_SECONDS


@pytest.mark.parametrize("name", SERVERS)
def test_every_accepted_event_is_handled_exactly_once(
    servers: dict[str, Server], exchanges: dict[str, Exchange], name: str
) -> None:
    server, expected = servers[name], exchanges[name].expected()
    lines = wait_for_lines(server, len(expected))
    handled = collections.Counter(line.split(" ")[2] for line in lines)
    assert handled == collections.Counter(expected), (
        f"{len(lines)} handler runs for {len(expected)} events; "
        f"missing: {sorted(set(expected) - set(handled))[:10]}, "
        f"twice: {sorted(e for e, c in handled.items() if c > 1)[:10]}\n{server.output()}"
    )
    for line in lines:
        _, event_type, event_id = line.split(" ")
        assert event_id.startswith(f"{event_type}:evt-")


@pytest.mark.parametrize("name", SERVERS)
def test_sigterm_runs_the_lifespan_shutdown_and_stops(
    servers: dict[str, Server], exchanges: dict[str, Exchange], name: str
) -> None:
    server = servers[name]
    wait_for_lines(server, len(exchanges[name].expected()))
    seconds = server.stop()
    output = server.output()
    assert seconds < 15, f"uvicorn took {seconds:.1f}s to stop on SIGTERM:\n{output}"
    # uvicorn raises the signal again once shut down (exit -15); its supervisor exits 0.
    assert server.process.returncode in (0, -signal.SIGTERM), output
    assert output.count("Application shutdown complete") == server.workers, output
    assert "Traceback" not in output, output
