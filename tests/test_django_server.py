"""The Django example under gunicorn and uvicorn, over real sockets: fast acks, each event once.

Both servers serve ``examples/django_project`` unchanged, through a settings module written
into a temporary directory that adds one app: its ``webhook_received`` receiver sleeps 10 s and
then appends ``pid event_type event_id`` to a counter file, outside the store under test. The
servers start together and get their deliveries one after the other, so their receivers sleep
at the same time and the module takes about as long as the slower of the two.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

django = pytest.importorskip("django", reason="Django is not installed: pip install -e '.[django]'")

from aerostic_webhooks import sign
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body

from . import servers as server_helpers

ROOT = Path(__file__).resolve().parent.parent
PROJECT = server_helpers.DJANGO_PROJECT
SECRET = "whsec_django_server_test"
RECEIVER_SECONDS = 10.0
URL = "/webhooks/aerostic/"
ACCEPTED = (200, b'{"received": true}')
PHONE = SAMPLE_PAYLOADS["message.received"]["data"]["from"]
MESSAGE_TEXT = SAMPLE_PAYLOADS["message.received"]["data"]["text"]
# A claim the worker logs and retries (see the test below): the error's type and first line,
# no traceback (a database error's text may quote a row).
RETRIED_CLAIM = re.compile(
    r"could not claim work from the store \(OperationalError: database is locked\); "
    r"trying again\n"
)

# The example's settings, plus an app whose receiver sleeps and counts its runs.
SETTINGS = """
from config.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "slow_receiver"]  # noqa: F405
"""
SLOW_RECEIVER_APP = """
import os
import time

from django.apps import AppConfig


class SlowReceiverConfig(AppConfig):
    name = "slow_receiver"

    def ready(self):
        from aerostic_webhooks.django.signals import webhook_received

        counter = os.environ["SLOW_RECEIVER_COUNTER"]

        def slow(sender, event, event_id, **kwargs):
            time.sleep({seconds!r})
            fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{{os.getpid()}} {{event.event}} {{event_id}}\\n".encode())
            finally:
                os.close(fd)

        webhook_received.connect(slow, weak=False, dispatch_uid="slow_receiver")
"""


def find(executable: str) -> str | None:
    return shutil.which(executable, path=str(Path(sys.executable).parent))


def gunicorn_command(executable: str, port: int) -> list[str]:
    command = [executable, "-w", "2", "-k", "gthread", "--threads", "4"]
    command += ["--graceful-timeout", "5", "-b", f"127.0.0.1:{port}", "config.wsgi:application"]
    return command


def uvicorn_command(executable: str, port: int) -> list[str]:
    command = [executable, "--workers", "2", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--lifespan", "off", "--timeout-graceful-shutdown", "5", "config.asgi:application"]
    return command


SERVERS = {"gunicorn": gunicorn_command, "uvicorn": uvicorn_command}


@dataclasses.dataclass
class Server:
    name: str
    port: int
    counter: Path
    log: Path
    process: subprocess.Popen[bytes]

    def handled(self) -> list[str]:
        return self.counter.read_text().splitlines() if self.counter.exists() else []


@dataclasses.dataclass
class Delivery:
    event_id: str
    status: int
    answer: bytes
    elapsed: float


def stop(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def environment(wrapper: Path, directory: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT), str(wrapper), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "served_settings",  # pytest-django set the tests' own
        "DJANGO_DB_PATH": str(directory / "db.sqlite3"),
        "AEROSTIC_WEBHOOK_SECRET": SECRET,
        "AEROSTIC_WEBHOOKS_WORKER": "thread",
        "SLOW_RECEIVER_COUNTER": str(directory / "handled.txt"),
    }


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Every installed server, each on its own migrated SQLite file, serving the example."""
    installed = {name: path for name in SERVERS if (path := find(name)) is not None}
    if not installed:
        pytest.skip("neither gunicorn nor uvicorn is installed: pip install -e '.[test]'")
    wrapper = tmp_path_factory.mktemp("wrapper")
    (wrapper / "served_settings.py").write_text(SETTINGS)
    (wrapper / "slow_receiver").mkdir()
    (wrapper / "slow_receiver" / "__init__.py").write_text("")
    (wrapper / "slow_receiver" / "apps.py").write_text(
        SLOW_RECEIVER_APP.format(seconds=RECEIVER_SECONDS)
    )
    # One migrate, then a copy of its database for each server: each run costs seconds.
    template = tmp_path_factory.mktemp("template")
    migrated = server_helpers.manage(environment(wrapper, template), "migrate", "--no-input")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    started: dict[str, Server] = {}
    try:
        for name, executable in installed.items():
            directory = tmp_path_factory.mktemp(name)
            shutil.copy(template / "db.sqlite3", directory / "db.sqlite3")
            port = server_helpers.free_port()
            log = directory / "server.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    SERVERS[name](executable, port),
                    env=environment(wrapper, directory),
                    cwd=PROJECT,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            started[name] = Server(name, port, directory / "handled.txt", log, process)
        for server in started.values():
            server_helpers.wait_until_serving(
                server.port, server.process, URL, status=405, log=server.log.read_text
            )
        yield started
    finally:
        for server in started.values():
            stop(server)


def server_named(servers: dict[str, Server], name: str) -> Server:
    if name not in servers:
        pytest.skip(f"{name} is not installed: pip install -e '.[test]'")
    return servers[name]


def post(
    port: int, body: bytes, *, chunked: bool = False, signed: bool = True
) -> tuple[int, bytes, float]:
    headers = {"Content-Type": "application/json"}
    if signed:
        headers["X-Aerostic-Signature"] = sign(body, SECRET)
    return server_helpers.post(port, URL, body, headers, chunked=chunked, timeout=10)


@pytest.fixture(scope="module")
def deliveries(servers: dict[str, Server]) -> dict[str, tuple[list[Delivery], int]]:
    """The six samples, with Content-Length and chunked, to each server; and the first one
    again (the sender's retry). For each server: the deliveries, and how many events its
    receivers had finished once the last answer was in."""
    results: dict[str, tuple[list[Delivery], int]] = {}
    for name, server in servers.items():
        done: list[Delivery] = []
        for event_type in SAMPLE_PAYLOADS:
            for chunked in (False, True):
                data_id = f"{name}-{event_type}-{'chunked' if chunked else 'length'}"
                body = sample_body(event_type, id=data_id)
                event_id = f"{event_type}:{data_id}"
                done.append(Delivery(event_id, *post(server.port, body, chunked=chunked)))
                if len(done) == 1:
                    done.append(Delivery(event_id, *post(server.port, body, chunked=True)))
        results[name] = (done, len(server.handled()))
    return results


@pytest.mark.parametrize("name", SERVERS)
def test_every_delivery_is_acknowledged_at_once_while_receivers_sleep(
    servers: dict[str, Server], deliveries: dict[str, tuple[list[Delivery], int]], name: str
) -> None:
    server_named(servers, name)
    done, handled_by_then = deliveries[name]
    assert len(done) == 2 * len(SAMPLE_PAYLOADS) + 1
    for delivery in done:
        assert (delivery.status, delivery.answer) == ACCEPTED, delivery
        assert delivery.elapsed < 1.0, (
            f"{delivery.event_id} took {delivery.elapsed:.2f}s while receivers sleep 10 s"
        )
    assert handled_by_then == 0, "the answers waited for the signal receivers"


@pytest.mark.parametrize("name", SERVERS)
def test_post_without_signature_is_401(servers: dict[str, Server], name: str) -> None:
    server = server_named(servers, name)
    body = sample_body("message.sent", id=f"{name}-unsigned")
    status, answer, _ = post(server.port, body, signed=False)
    assert (status, answer) == (401, b'{"error": "Invalid signature"}')


@pytest.mark.parametrize("name", SERVERS)
def test_get_is_405(servers: dict[str, Server], name: str) -> None:
    server = server_named(servers, name)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", URL)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 405


@pytest.mark.parametrize("name", SERVERS)
def test_every_event_is_handled_exactly_once(
    servers: dict[str, Server], deliveries: dict[str, tuple[list[Delivery], int]], name: str
) -> None:
    server = server_named(servers, name)
    expected = collections.Counter(
        f"{event_id.split(':', 1)[0]} {event_id}"
        for event_id in dict.fromkeys(delivery.event_id for delivery in deliveries[name][0])
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(server.handled()) < sum(expected.values()):
        time.sleep(0.5)
    time.sleep(1)  # a second run of anything would show up now
    handled = collections.Counter(line.split(" ", 1)[1] for line in server.handled())
    assert handled == expected
    log = server.log.read_text()
    if django.VERSION < (5, 1):
        # SQLite takes its write lock up front only from Django 5.1 (the example's
        # transaction_mode IMMEDIATE): before, two processes' claims can meet "database is
        # locked", which the worker logs in one line, without a traceback, and retries.
        log = RETRIED_CLAIM.sub("", log)
    assert "Traceback" not in log, log
    # The example's receivers log ids, never phone numbers or message text.
    assert f"event {next(iter(expected)).split(' ')[1]}" in log
    assert PHONE not in log
    assert MESSAGE_TEXT not in log


def test_the_applications_refuse_to_start_without_a_secret(tmp_path: Path) -> None:
    # Servers run no system checks: the example's wsgi.py and asgi.py build the receiver at
    # import, so gunicorn and uvicorn stop at start-up instead of answering 503 to Aerostic.
    script = (
        "import importlib\n"
        "for module in ('config.wsgi', 'config.asgi'):\n"
        "    try:\n"
        "        importlib.import_module(module)\n"
        "    except ValueError as error:\n"
        "        print(module, 'refused:', error)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DB_PATH": str(tmp_path / "db.sqlite3"),
        "AEROSTIC_WEBHOOK_SECRET": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    refusal = "refused: AEROSTIC_WEBHOOKS['SECRET'] (or 'SECRETS') is missing or empty"
    assert result.stdout.splitlines() == [
        f"config.wsgi {refusal}",
        f"config.asgi {refusal}",
    ], result.stdout + result.stderr
