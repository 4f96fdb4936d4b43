"""Helpers for the tests that talk to real servers over loopback sockets."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    chunked: bool = False,
    timeout: float = 30.0,
) -> tuple[int, bytes, float]:
    """POST on a connection of its own; ``(status, body, seconds)``.

    Chunked bodies go without a Content-Length. http.client follows no redirect, so the
    status is the endpoint's own answer.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        if chunked:
            chunks = iter([body[: len(body) // 3], body[len(body) // 3 :]])
            connection.request("POST", path, body=chunks, headers=headers, encode_chunked=True)
        else:
            connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    return response.status, answer, time.monotonic() - started


def wait_until_serving(
    port: int,
    process: subprocess.Popen[bytes],
    path: str,
    *,
    status: int,
    log: Callable[[], str] = str,
    timeout: float = 30.0,
) -> None:
    """Poll ``GET path`` until it answers ``status``; fail with the server's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited early:\n{log()}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status == status:
                return
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    raise AssertionError(f"the server did not start serving:\n{log()}")


DJANGO_PROJECT = Path(__file__).resolve().parent.parent / "examples" / "django_project"


def manage(
    env: dict[str, str], *args: str, cwd: Path = DJANGO_PROJECT, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``manage.py *args`` of the example Django project in a subprocess, output captured."""
    return subprocess.run(
        [sys.executable, str(DJANGO_PROJECT / "manage.py"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
