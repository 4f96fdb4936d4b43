"""The Flask example under gunicorn, over real sockets: fast acks, every event handled once."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="Flask is not installed: pip install -e '.[flask]'")

from aerostic_webhooks import sign
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body

from . import servers as server_helpers

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_gunicorn_test"
HANDLER_SECONDS = 10.0

# Serves the example's create_app() with a receiver whose handler sleeps, and counts its runs
# in a file, outside the store under test.
WRAPPER = """
import os, sys, time
sys.path.insert(0, {examples!r})
import flask_app
from aerostic_webhooks import WebhookReceiver

webhooks = WebhookReceiver(concurrency=16)
counter = os.open({counter!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

@webhooks.on("*")
def slow(event):
    time.sleep({seconds!r})
    line = f"{{os.getpid()}} {{event.event}} {{event.data.id}}\\n"
    os.write(counter, line.encode())

app = flask_app.create_app(webhooks)
"""


@pytest.fixture(params=["sync", "gthread"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent))
    if gunicorn is None:
        pytest.skip("gunicorn is not installed: pip install -e '.[test]'")
    counter = tmp_path / "handled.txt"
    (tmp_path / "served_app.py").write_text(
        WRAPPER.format(
            examples=str(ROOT / "examples"), counter=str(counter), seconds=HANDLER_SECONDS
        )
    )
    port = server_helpers.free_port()
    env = {
        **os.environ,
        "AEROSTIC_WEBHOOK_SECRET": SECRET,
        "AEROSTIC_WEBHOOKS_DB": str(tmp_path / "inbox.sqlite3"),
        "PYTHONPATH": str(ROOT),
    }
    command = [gunicorn, "--chdir", str(tmp_path), "-w", "3", "-k", request.param]
    command += ["--threads", "4", "-b", f"127.0.0.1:{port}", "served_app:app"]
    log = tmp_path / "server.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=env, stderr=stderr)
    try:
        server_helpers.wait_until_serving(port, process, "/", status=200, log=log.read_text)
        yield port, counter
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def post(port: int, body: bytes, *, chunked: bool) -> tuple[int, bytes, float]:
    headers = {"X-Aerostic-Signature": sign(body, SECRET), "Content-Type": "application/json"}
    return server_helpers.post(
        port, "/webhooks/aerostic", body, headers, chunked=chunked, timeout=10
    )


def test_gunicorn_acks_at_once_while_handlers_sleep_and_handles_each_event_once(
    server: tuple[int, Path],
) -> None:
    port, counter = server
    expected = []
    for event_type in SAMPLE_PAYLOADS:
        for chunked in (False, True):
            event_id = f"{event_type}-{'chunked' if chunked else 'length'}"
            body = sample_body(event_type, id=event_id)
            status, answer, elapsed = post(port, body, chunked=chunked)
            assert (status, answer) == (200, b'{"received": true}')
            assert elapsed < 1.0, f"the ack took {elapsed:.2f}s while a handler sleeps 10 s"
            expected.append(f"{event_type} {event_id}")
            if len(expected) == 1:  # the sender's retry of the first one: still 200
                assert post(port, body, chunked=True)[:2] == (200, b'{"received": true}')
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        lines = counter.read_text().splitlines() if counter.exists() else []
        if len(lines) >= len(expected):
            break
        time.sleep(0.5)
    time.sleep(1)  # a second run of anything would show up now
    handled = collections.Counter(
        line.split(" ", 1)[1] for line in counter.read_text().splitlines()
    )
    assert handled == collections.Counter(expected)


def test_a_body_the_server_cannot_read_is_a_400_not_a_500(
    server: tuple[int, Path], tmp_path: Path
) -> None:
    """Broken chunked framing: gunicorn raises from the body's read, inside the blueprint."""
    port, _ = server
    signature = sign(b"", SECRET).encode()
    for framing in (b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXX0\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /webhooks/aerostic HTTP/1.1\r\nHost: localhost\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n"
                b"X-Aerostic-Signature: " + signature + b"\r\n\r\n" + framing
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 BAD REQUEST", framing
        assert b"content-type: application/json" in head.lower()
        assert json.loads(body) == {"error": "Invalid payload"}
    assert "Traceback" not in (tmp_path / "server.log").read_text()
