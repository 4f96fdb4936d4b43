"""The ``aerostic-webhooks`` command, run as a user runs it: ``python -m aerostic_webhooks``
subprocesses, each with a timeout.

``send``, ``serve`` and ``demo`` talk over real sockets on loopback. ``send`` posts to a small
Starlette app of this module's own under uvicorn (``webhook_route`` around a receiver that
notes every delivery in a file), so its tests do not depend on ``serve``. The inbox commands
read SQLite inboxes built here with ``SQLiteStore`` and ``WebhookReceiver``.

The contract under test: exit 0 on success, 1 on failure, 2 on a usage error; a failure is
one line on stderr starting with ``error: ``, never a traceback; every subcommand has
``--help``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from aerostic_webhooks import MemoryStore, SQLiteStore, WebhookReceiver, sign
from aerostic_webhooks.stores.base import Record, Status, utcnow
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body, sample_payload, signed_request

from .servers import free_port, post

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_cli_test"
WEBHOOK_PATH = "/webhooks/aerostic"
TYPES = list(SAMPLE_PAYLOADS)
ACCEPTED = '{"received": true}'
INVALID_SIGNATURE = '{"error": "Invalid signature"}'
PHONE = SAMPLE_PAYLOADS["message.received"]["data"]["from"]
TEXT = SAMPLE_PAYLOADS["message.received"]["data"]["text"]
LIMIT = 1_048_576
MS = re.compile(r"\d+(?:\.\d+)?\s?ms\b")

needs_server = pytest.mark.skipif(
    importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("starlette") is None,
    reason="serve needs Starlette and uvicorn: pip install -e '.[all,test]'",
)


# -- running the command ----------------------------------------------------------------------


def environment(**changes: str | None) -> dict[str, str]:
    """The test's environment without a webhook secret (only ``--secret`` counts), with the
    package importable from this checkout; ``None`` removes a variable."""
    env = dict(os.environ)
    env.pop("AEROSTIC_WEBHOOK_SECRET", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def command(*args: str, python_flags: Sequence[str] = ()) -> list[str]:
    return [sys.executable, *python_flags, "-m", "aerostic_webhooks", *args]


@dataclasses.dataclass(repr=False)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __repr__(self) -> str:  # what pytest shows as an assertion's message
        return (
            f"aerostic-webhooks {' '.join(self.args)}\n-> exit {self.returncode} "
            f"after {self.seconds:.1f}s\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def cli(
    *args: str,
    cwd: Path,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    python_flags: Sequence[str] = (),
) -> Result:
    """Run the command to its end (killed, and the test failed, after ``timeout`` seconds)."""
    started = time.monotonic()
    completed = subprocess.run(
        command(*args, python_flags=python_flags),
        cwd=cwd,
        env=environment() if env is None else env,
        input=b"" if stdin is None else stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return Result(
        args,
        completed.returncode,
        completed.stdout.decode("utf-8", "replace"),
        completed.stderr.decode("utf-8", "replace"),
        time.monotonic() - started,
    )


def cli_many(runs: Sequence[Sequence[str]], *, cwd: Path, timeout: float = 30.0) -> list[Result]:
    """Several independent runs at once (each is a process of its own)."""
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda args: cli(*args, cwd=cwd, timeout=timeout), runs))


def assert_error(result: Result, codes: int | tuple[int, ...] = 1, starts: str = "error: ") -> str:
    """Exit ``codes``, stderr exactly one line starting with ``starts``, no traceback."""
    codes = (codes,) if isinstance(codes, int) else codes
    assert result.returncode in codes, result
    assert "Traceback" not in result.stderr, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line on stderr\n{result}"
    assert lines[0].startswith(starts), result
    return lines[0]


def assert_usage_error(result: Result) -> None:
    """Exit 2 with an ``error:`` message and no traceback (argparse adds its usage lines)."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result
    assert "error: " in result.stderr, result


@dataclasses.dataclass(repr=False)
class Background:
    """A command running in the background, its output in files."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def __repr__(self) -> str:  # what pytest shows as an assertion's message
        return f"--- stdout\n{self.stdout()}--- stderr\n{self.stderr()}"

    def stop(self, signum: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> float:
        """Send ``signum`` and wait; the seconds it took to exit (fails the test if it did not
        exit within ``timeout``, after killing it)."""
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running {timeout}s after {signum.name}\n{self}") from None
        return time.monotonic() - started

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"exited ({self.process.returncode}) before {what}\n{self}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} after {timeout}s\n{self}")
            time.sleep(0.05)

    def wait_listening(self, port: int, timeout: float = 20.0) -> None:
        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        self.wait_for(listening, f"listening on port {port}", timeout)


_runs = itertools.count()


@contextlib.contextmanager
def background(
    args: Sequence[str],
    *,
    cwd: Path,
    logs: Path,
    env: dict[str, str] | None = None,
) -> Iterator[Background]:
    """Start ``args`` (a command line); killed at the end if the test left it running."""
    n = next(_runs)
    stdout_path, stderr_path = logs / f"run{n}.out", logs / f"run{n}.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=environment() if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        yield Background(process, stdout_path, stderr_path)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def status_of(line: str, status: int) -> bool:
    return re.search(rf"(?<!\d){status}(?!\d)", line) is not None


def token(text: str, word: str) -> bool:
    """``word`` in ``text`` as a whole token (event ids contain dots and colons)."""
    return re.search(rf"(?<![\w.:]){re.escape(word)}(?![\w.:])", text) is not None


def snapshot(db: Path) -> dict[str, Record]:
    with SQLiteStore(db) as store:
        return {record.event_id: record for record in store.list(limit=10_000)}


# -- --help and usage ---------------------------------------------------------------------------

HELP = {
    (): ["sign", "send", "serve", "worker", "inbox", "demo"],
    ("sign",): ["--secret"],
    ("send",): ["--url", "--secret", "--count", "--duplicates", "--timeout"],
    ("serve",): ["--secret", "--host", "--port", "--db"],
    ("worker",): ["--app"],
    ("inbox",): ["list", "show", "retry", "purge"],
    ("inbox", "list"): ["--db", "--status", "--type", "--limit"],
    ("inbox", "show"): ["--db"],
    ("inbox", "retry"): ["--db", "--failed"],
    ("inbox", "purge"): ["--db", "--older-than"],
    ("demo",): [],
}


def test_every_subcommand_has_help_that_exits_0(tmp_path: Path) -> None:
    results = cli_many([[*words, "--help"] for words in HELP], cwd=tmp_path)
    problems = []
    for (words, mentions), result in zip(HELP.items(), results, strict=True):
        if result.returncode != 0 or "usage" not in result.stdout.lower():
            problems.append(str(result))
        elif missing := [word for word in mentions if word not in result.stdout]:
            problems.append(f"help of {' '.join(words) or 'the command'} lacks {missing}")
    assert not problems, "\n\n".join(problems)
    assert list(tmp_path.iterdir()) == [], "--help created files"


def test_no_or_an_unknown_subcommand_is_a_usage_error(tmp_path: Path) -> None:
    for result in cli_many([[], ["frobnicate"]], cwd=tmp_path):
        assert_usage_error(result)


# -- sign -----------------------------------------------------------------------------------

# Raw bytes as a file holds them: non-ASCII, CRLF, a trailing newline; none may change.
RAW = json.dumps(sample_payload("contact.created", name="Zoë"), indent=2).encode() + b"\r\n"


def test_sign_prints_the_header_value_for_a_file(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(RAW)
    result = cli("sign", str(body), "--secret", SECRET, cwd=tmp_path)
    assert result.returncode == 0, result
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", result.stdout.strip()), result
    assert result.stdout.strip() == sign(RAW, SECRET), result


@pytest.mark.parametrize("source", [["-"], []], ids=["dash", "no-file"])
def test_sign_reads_stdin(tmp_path: Path, source: list[str]) -> None:
    result = cli("sign", *source, "--secret", SECRET, cwd=tmp_path, stdin=RAW)
    assert result.returncode == 0, result
    assert result.stdout.strip() == sign(RAW, SECRET), result


def test_sign_missing_file_is_one_error_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    line = assert_error(cli("sign", str(missing), "--secret", SECRET, cwd=tmp_path))
    assert "nope.json" in line


def test_sign_takes_the_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a receiver reads ``$AEROSTIC_WEBHOOK_SECRET``: while rotating, the first signs, and
    a receiver built from the same variable accepts the signature."""
    for value in ("whsec_new", " whsec_new , whsec_old"):
        env = environment(AEROSTIC_WEBHOOK_SECRET=value)
        result = cli("sign", cwd=tmp_path, stdin=RAW, env=env)
        assert result.returncode == 0, result
        assert result.stdout.strip() == sign(RAW, "whsec_new"), result
        monkeypatch.setenv("AEROSTIC_WEBHOOK_SECRET", value)
        with WebhookReceiver(store=MemoryStore(), process="external") as receiver:
            receiver.receive(RAW, {"X-Aerostic-Signature": result.stdout.strip()})


@pytest.mark.parametrize(
    ("args", "variable"),
    [([], None), ([], " , "), (["--secret", ""], "whsec_set")],
    ids=["none", "empty-variable", "empty-option"],
)
def test_sign_without_a_secret_is_a_usage_error(
    tmp_path: Path, args: list[str], variable: str | None
) -> None:
    env = environment(AEROSTIC_WEBHOOK_SECRET=variable)
    result = cli("sign", *args, cwd=tmp_path, stdin=RAW, env=env)
    line = assert_error(result, 2)
    assert "secret" in line, result
    assert "sha256=" not in result.stdout, result


def test_sign_takes_the_last_secret_given(tmp_path: Path) -> None:
    result = cli("sign", "--secret", "whsec_old", "--secret", "whsec_new", cwd=tmp_path, stdin=RAW)
    assert result.returncode == 0, result
    assert result.stdout.strip() == sign(RAW, "whsec_new"), result


def test_sign_with_standard_input_closed_is_one_error_line(tmp_path: Path) -> None:
    shell = " ".join(command("sign", "--secret", SECRET)) + " <&-"
    completed = subprocess.run(
        ["/bin/sh", "-c", shell], cwd=tmp_path, env=environment(), capture_output=True,
        timeout=30, check=False,
    )  # fmt: skip
    result = Result(("sign",), completed.returncode, completed.stdout.decode(),
                    completed.stderr.decode(), 0.0)  # fmt: skip
    assert "closed" in assert_error(result, 1), result


# -- send -----------------------------------------------------------------------------------

# The receiving end for `send`: webhook_route around a receiver that notes each delivery.
RECEIVER_APP = """
import json
import os

from starlette.applications import Starlette

from aerostic_webhooks import MemoryStore, WebhookError, WebhookReceiver
from aerostic_webhooks.starlette import webhook_lifespan, webhook_route

LOG = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def note(entry):
    os.write(LOG, (json.dumps(entry) + "\\n").encode())


class Noting(WebhookReceiver):
    def receive(self, body, headers):
        try:
            receipt = super().receive(body, headers)
        except WebhookError as error:
            note({{"refused": type(error).__name__}})
            raise
        note({{"event_id": receipt.event_id, "duplicate": receipt.duplicate,
               "body": bytes(body).hex()}})
        return receipt


receiver = Noting({secret!r}, store=MemoryStore(), process="external")
app = Starlette(
    routes=[webhook_route("/webhooks/aerostic", receiver)], lifespan=webhook_lifespan(receiver)
)
"""


@dataclasses.dataclass
class Receiving:
    port: int
    log: Path
    server: Background

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    @contextlib.contextmanager
    def new_entries(self) -> Iterator[list[dict[str, Any]]]:
        """The deliveries noted while the block ran (each send is over when its run ends)."""
        before = len(self.entries())
        found: list[dict[str, Any]] = []
        yield found
        found.extend(self.entries()[before:])


@pytest.fixture(scope="module")
def receiving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiving]:
    pytest.importorskip("uvicorn", reason="uvicorn is not installed: pip install -e '.[test]'")
    pytest.importorskip("starlette", reason="Starlette is not installed")
    directory = tmp_path_factory.mktemp("receiving")
    log = directory / "deliveries.jsonl"
    (directory / "cli_receiving_app.py").write_text(
        RECEIVER_APP.format(log=str(log), secret=SECRET)
    )
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "--app-dir", str(directory), "cli_receiving_app:app"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    with background(args, cwd=directory, logs=directory) as server:
        server.wait_listening(port)
        yield Receiving(port, log, server)
        server.stop()


def delivery_lines(result: Result, answer: str) -> list[str]:
    return [
        line
        for line in result.stdout.splitlines()
        if answer in line and not line.startswith("summary:")
    ]


def summary_lines(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("summary:")]


def payload_of(entry: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(bytes.fromhex(entry["body"]))
    return payload


def assert_is_sample(payload: dict[str, Any], event_type: str) -> None:
    """The documented sample of ``event_type``, with a fresh ``data.id``."""
    sample = sample_payload(event_type)
    data_id = payload["data"]["id"]
    assert data_id != sample["data"]["id"], "data.id is the documented one, not a fresh one"
    assert payload["event"] == event_type
    assert payload["data"] == {**sample["data"], "id": data_id}


def test_send_each_type_posts_a_signed_sample_with_a_fresh_id(
    receiving: Receiving, tmp_path: Path
) -> None:
    with receiving.new_entries() as entries:
        results = cli_many(
            [["send", kind, "--url", receiving.url, "--secret", SECRET] for kind in TYPES],
            cwd=tmp_path,
        )
    for result in results:
        assert result.returncode == 0, result
        [line] = delivery_lines(result, ACCEPTED)
        assert status_of(line, 200), result
        assert MS.search(line), f"no latency in ms\n{result}"
    assert sorted(entry["event_id"].split(":")[0] for entry in entries) == sorted(TYPES), entries
    for entry in entries:
        assert not entry["duplicate"], entries
        assert_is_sample(payload_of(entry), entry["event_id"].split(":")[0])


def test_send_count_and_duplicates(receiving: Receiving, tmp_path: Path) -> None:
    args = ["send", "message.received", "--url", receiving.url, "--secret", SECRET]
    with receiving.new_entries() as entries:
        result = cli(*args, "--count", "3", "--duplicates", "2", cwd=tmp_path)
    assert result.returncode == 0, result
    lines = delivery_lines(result, ACCEPTED)
    assert len(lines) == 5, result
    assert all(status_of(line, 200) and MS.search(line) for line in lines), result
    [summary] = summary_lines(result)
    assert token(summary, "5"), result
    assert "200" in summary, result

    new = [entry["event_id"] for entry in entries if not entry["duplicate"]]
    again = [entry["event_id"] for entry in entries if entry["duplicate"]]
    assert len(new) == 3, entries
    assert len(set(new)) == 3, f"the ids are not fresh for each delivery: {new}"
    assert len(again) == 2, entries
    assert set(again) <= set(new), entries

    # A second run sends other ids still.
    with receiving.new_entries() as later:
        assert cli(*args, cwd=tmp_path).returncode == 0
    assert [entry["duplicate"] for entry in later] == [False], later
    assert later[0]["event_id"] not in new


def test_send_file_posts_its_bytes_as_they_are(receiving: Receiving, tmp_path: Path) -> None:
    body = RAW.replace(b'"contact_xyz"', f'"file-{time.time_ns()}"'.encode())
    delivery = tmp_path / "delivery.json"
    delivery.write_bytes(body)
    with receiving.new_entries() as entries:
        result = cli(
            "send", str(delivery), "--url", receiving.url, "--secret", SECRET, cwd=tmp_path
        )
    assert result.returncode == 0, result
    [line] = delivery_lines(result, ACCEPTED)
    assert status_of(line, 200), result
    [entry] = entries
    assert bytes.fromhex(entry["body"]) == body


def test_send_with_a_wrong_secret_reports_401_and_exits_1(
    receiving: Receiving, tmp_path: Path
) -> None:
    args = ["send", "message.sent", "--url", receiving.url, "--secret", "whsec_wrong"]
    with receiving.new_entries() as entries:
        result = cli(*args, "--count", "2", cwd=tmp_path)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result
    lines = delivery_lines(result, INVALID_SIGNATURE)
    assert len(lines) == 2, result
    assert all(status_of(line, 401) for line in lines), result
    [summary] = summary_lines(result)
    assert "401" in summary, result
    assert entries == [{"refused": "InvalidSignature"}] * 2


def test_send_exits_1_when_any_delivery_is_refused(tmp_path: Path) -> None:
    """Some deliveries accepted and some refused is a failure, not a success."""
    answers = iter([200, 503])

    class OneOfEach(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(next(answers, 503))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), OneOfEach) as server:
        serving = threading.Thread(target=server.serve_forever)
        serving.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}{WEBHOOK_PATH}"
            args = ("send", "message.sent", "--url", url, "--secret", SECRET, "--count", "2")
            result = cli(*args, cwd=tmp_path)
        finally:
            server.shutdown()
            serving.join()
    assert result.returncode == 1, result
    [summary] = summary_lines(result)
    assert "1 failed" in summary, result


def test_send_to_an_unreachable_url_is_one_error_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}{WEBHOOK_PATH}"
    result = cli(
        "send", "message.received", "--url", url, "--secret", SECRET, "--timeout", "5",
        cwd=tmp_path,
    )  # fmt: skip
    assert_error(result, 1, starts="error: cannot reach")


def test_send_gives_up_after_timeout(tmp_path: Path) -> None:
    """A server that accepts the connection and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}{WEBHOOK_PATH}"
        result = cli(
            "send", "message.received", "--url", url, "--secret", SECRET, "--timeout", "1",
            cwd=tmp_path, timeout=20,
        )  # fmt: skip
    assert result.returncode == 1, result
    assert result.seconds < 10, result
    assert "Traceback" not in result.stderr, result
    if result.stderr.strip():
        assert_error(result, 1)


def test_send_unknown_type_is_a_usage_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}{WEBHOOK_PATH}"
    result = cli("send", "message.bogus", "--url", url, "--secret", SECRET, cwd=tmp_path)
    assert_usage_error(result)
    assert "message.bogus" in result.stderr, result


@pytest.mark.parametrize(
    "option",
    [
        ["--count", "0"],
        ["--count", "99999999999999999999"],
        ["--duplicates", "-1"],
        ["--timeout", "0"],
        ["--timeout", "-1"],
        ["--timeout", "inf"],
        ["--timeout", "nan"],
    ],
    ids=" ".join,
)
def test_send_numbers_out_of_range_are_usage_errors(tmp_path: Path, option: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}{WEBHOOK_PATH}"
    result = cli("send", "message.sent", "--url", url, "--secret", SECRET, *option, cwd=tmp_path)
    assert_error(result, 2)
    assert option[0] in result.stderr, result


def run_with_output_closed(
    args: Sequence[str], cwd: Path, stderr: int = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    """Run with a standard output whose reader has gone, and stdout buffered as a pipe's is
    (this environment may set PYTHONUNBUFFERED, which would hide the exit's flush)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            command(*args), cwd=cwd, env=environment(PYTHONUNBUFFERED=None),
            stdout=write_end, stderr=stderr, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)


@pytest.mark.parametrize(("count", "code"), [(50, 1), (1, 0)], ids=["stopped-early", "all-sent"])
def test_send_whose_output_is_closed_says_how_many_went(
    receiving: Receiving, tmp_path: Path, count: int, code: int
) -> None:
    """``send ... | head``: deliveries never sent are a failure; a closed output alone is not."""
    args = ("send", "message.sent", "--url", receiving.url, "--secret", SECRET)
    with receiving.new_entries() as entries:  # the first line written breaks the pipe
        completed = run_with_output_closed([*args, "--count", str(count)], tmp_path)
    result = Result(args, completed.returncode, "", completed.stderr.decode(), 0.0)
    assert len(entries) == 1, entries  # the first went before its line was written
    if code:
        assert f"stopped after 1 of {count}" in assert_error(result, 1), result
    else:
        assert result.returncode == 0 and not result.stderr, result


def test_send_on_a_terminal_ends_its_progress_line_before_an_error(
    receiving: Receiving, tmp_path: Path
) -> None:
    """The output closes after the first line (``| head -1``) while stderr is a terminal
    showing the progress bar: the error starts a line of its own."""
    import pty

    args = ["send", "message.sent", "--url", receiving.url, "--secret", SECRET, "--count", "50"]
    controller, terminal = pty.openpty()
    try:
        with subprocess.Popen(
            command(*args), cwd=tmp_path, env=environment(),
            stdout=subprocess.PIPE, stderr=terminal,
        ) as process:  # fmt: skip
            assert process.stdout is not None
            process.stdout.readline()
            process.stdout.close()
            process.wait(60)
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed
            while chunk := os.read(controller, 65536):
                shown += chunk
    finally:
        os.close(controller)
    assert process.returncode == 1
    text = shown.decode(errors="replace").replace("\r\n", "\n")
    assert "] 1/50" in text, text  # the progress bar was showing
    [error] = [line for line in text.split("\n") if "error:" in line]
    assert error.startswith("error: output closed"), text


# -- serve ----------------------------------------------------------------------------------


def headers_for(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Aerostic-Signature": sign(body, secret)}


def handled_lines(output: str, event_id: str) -> list[str]:
    """Lines naming ``event_id`` and, besides it, its event type."""
    event_type = event_id.split(":", maxsplit=1)[0]
    return [
        line
        for line in output.splitlines()
        if token(line, event_id) and event_type in line.replace(event_id, "")
    ]


@needs_server
def test_serve_answers_the_contract_handles_each_event_once_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    db, port = tmp_path / "serve.sqlite3", free_port()
    args = command("serve", "--secret", SECRET, "--host", "127.0.0.1", "--port", str(port))
    with background([*args, "--db", str(db)], cwd=tmp_path, logs=tmp_path) as serve:
        serve.wait_listening(port)
        answers = []
        for n, event_type in enumerate(TYPES):
            body = sample_body(event_type)
            path = WEBHOOK_PATH + "/" if n == 0 else WEBHOOK_PATH  # both, without a redirect
            answers.append(post(port, path, body, headers_for(body))[:2])
        duplicate = sample_body("message.received")
        forged = sample_body("message.sent", id="forged")
        malformed = b'{"event": "message.received", "data": '
        oversized = b" " * (LIMIT + 1)
        answers += [
            post(port, WEBHOOK_PATH, duplicate, headers_for(duplicate))[:2],
            post(port, WEBHOOK_PATH, forged, headers_for(forged, "whsec_forger"))[:2],
            post(port, WEBHOOK_PATH, malformed, headers_for(malformed))[:2],
            post(port, WEBHOOK_PATH, oversized, headers_for(oversized), chunked=True)[:2],
        ]
        assert answers == [(200, ACCEPTED.encode())] * 7 + [
            (401, INVALID_SIGNATURE.encode()),
            (400, b'{"error": "Invalid payload"}'),
            (413, b'{"error": "Payload too large"}'),
        ], serve
        event_ids = [f"{kind}:{SAMPLE_PAYLOADS[kind]['data']['id']}" for kind in TYPES]

        def all_done() -> bool:
            records = snapshot(db)
            return all(
                event_id in records and records[event_id].status is Status.DONE
                for event_id in event_ids
            )

        serve.wait_for(all_done, "done with the six events")

        def printed() -> bool:
            return all(handled_lines(serve.stdout(), e) for e in event_ids)

        with contextlib.suppress(AssertionError):
            serve.wait_for(printed, "printing the handled events", timeout=3)
        printed_while_running = printed()
        seconds = serve.stop(signal.SIGTERM)
    assert seconds < 10, serve
    stdout, stderr = serve.stdout(), serve.stderr()
    assert "Traceback" not in stderr, serve
    for event_id in event_ids:
        assert len(handled_lines(stdout, event_id)) == 1, f"{event_id} handled once?\n{serve}"
    assert sorted(snapshot(db)) == sorted(event_ids)  # nothing refused was recorded
    for secret in (PHONE, PHONE.lstrip("+"), TEXT):
        assert secret not in stdout + stderr, f"serve printed {secret!r}\n{serve}"
    assert serve.process.returncode == 0, f"exit {serve.process.returncode} on SIGTERM\n{serve}"
    assert printed_while_running, f"handled lines appear only at exit (buffered?)\n{serve}"


@needs_server
def test_serve_default_inbox_is_in_the_current_directory_and_sigint_stops_it(
    tmp_path: Path,
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    port = free_port()
    args = command("serve", "--secret", SECRET, "--port", str(port))
    env = environment(AEROSTIC_WEBHOOKS_DB=None)
    with background(args, cwd=cwd, logs=tmp_path, env=env) as serve:
        serve.wait_listening(port)
        body = sample_body("contact.created")
        assert post(port, WEBHOOK_PATH, body, headers_for(body))[:2] == (200, ACCEPTED.encode())
        event_id = "contact.created:contact_xyz"
        serve.wait_for(lambda: bool(handled_lines(serve.stdout(), event_id)), "handled")
        serve.stop(signal.SIGINT)
    inboxes = [p for p in cwd.iterdir() if not p.name.endswith(("-wal", "-shm", "-journal"))]
    assert len(inboxes) == 1, f"{sorted(p.name for p in cwd.iterdir())}\n{serve}"
    assert list(snapshot(inboxes[0])) == [event_id]
    assert "Traceback" not in serve.stderr(), serve
    assert serve.process.returncode == 0, f"exit {serve.process.returncode} on SIGINT\n{serve}"


@needs_server
def test_serve_accepts_every_secret_given_while_rotating(tmp_path: Path) -> None:
    db, port = tmp_path / "serve.sqlite3", free_port()
    args = command("serve", "--secret", "whsec_new", "--secret", SECRET, "--port", str(port))
    with background([*args, "--db", str(db)], cwd=tmp_path, logs=tmp_path) as serve:
        serve.wait_listening(port)
        answers = []
        for n, secret in enumerate(["whsec_new", SECRET]):
            body = sample_body("message.sent", id=f"msg_{n}")
            answers.append(post(port, WEBHOOK_PATH, body, headers_for(body, secret))[0])
        serve.stop()
    assert answers == [200, 200], serve
    assert serve.process.returncode == 0, serve


@needs_server
def test_serve_default_inbox_is_aerostic_webhooks_db_when_set(tmp_path: Path) -> None:
    cwd, db, port = tmp_path / "cwd", tmp_path / "from-env.sqlite3", free_port()
    cwd.mkdir()
    env = environment(AEROSTIC_WEBHOOKS_DB=str(db))
    args = command("serve", "--secret", SECRET, "--port", str(port))
    with background(args, cwd=cwd, logs=tmp_path, env=env) as serve:
        serve.wait_listening(port)
        body = sample_body("message.sent")
        assert post(port, WEBHOOK_PATH, body, headers_for(body))[:2] == (200, ACCEPTED.encode())
        serve.stop()
    assert serve.process.returncode == 0, serve
    assert [record.body for record in snapshot(db).values()] == [body]
    assert list(cwd.iterdir()) == [], "an inbox was made in the current directory"


def test_serve_with_an_inbox_it_cannot_create_is_one_error_line(tmp_path: Path) -> None:
    db = tmp_path / "absent" / "inbox.sqlite3"
    result = cli(
        "serve", "--secret", SECRET, "--port", str(free_port()), "--db", str(db),
        cwd=tmp_path, timeout=20,
    )  # fmt: skip
    line = assert_error(result, 1)
    assert str(db) in line, result


def test_serve_with_an_empty_secret_fails_at_start(tmp_path: Path) -> None:
    result = cli(
        "serve", "--secret", "", "--port", str(free_port()), "--db", str(tmp_path / "x.sqlite3"),
        cwd=tmp_path, timeout=20,
    )  # fmt: skip
    assert_error(result, (1, 2))


def test_serve_with_a_port_out_of_range_is_one_error_line(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite3"
    result = cli("serve", "--secret", SECRET, "--port", "99999", "--db", str(db), cwd=tmp_path)
    assert_error(result, (1, 2))


@needs_server
def test_serve_on_a_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cli(
            "serve", "--secret", SECRET, "--port", str(port), "--db", str(tmp_path / "x.sqlite3"),
            cwd=tmp_path, timeout=20,
        )  # fmt: skip
    line = assert_error(result, 1)
    assert f"cannot serve on 127.0.0.1:{port}" in line, result
    assert "receiving" not in result.stdout, result
    assert not (tmp_path / "x.sqlite3").exists(), "the inbox was made for a server that failed"


def test_serve_skips_an_address_family_the_kernel_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With IPv6 off, getaddrinfo may still give "::": asyncio (so uvicorn) skips it."""
    from aerostic_webhooks import cli as module

    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real(family, *args)

    monkeypatch.setattr(socket, "socket", no_ipv6)
    sockets = module._listen("", 0)  # the binding serve uses
    try:
        assert sockets and all(sock.family == socket.AF_INET for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    monkeypatch.setattr(socket, "socket", lambda *args: no_ipv6(socket.AF_INET6))
    with pytest.raises(module.CommandError, match="no address"):
        module._listen("127.0.0.1", 0)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@needs_server
@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_serve_on_ipv6_prints_a_url_with_brackets(tmp_path: Path) -> None:
    port = free_port()
    args = command("serve", "--secret", SECRET, "--host", "::1", "--port", str(port))
    with background(
        [*args, "--db", str(tmp_path / "x.sqlite3")], cwd=tmp_path, logs=tmp_path
    ) as serve:
        url = f"http://[::1]:{port}{WEBHOOK_PATH}"
        serve.wait_for(lambda: url in serve.stdout(), "printing its URL")
        body = sample_body("message.sent")
        connection = http.client.HTTPConnection("::1", port, timeout=5)
        connection.request("POST", WEBHOOK_PATH, body=body, headers=headers_for(body))
        status = connection.getresponse().status
        connection.close()
        assert status == 200
        serve.stop()
    assert serve.process.returncode == 0, serve


@needs_server
def test_serve_on_every_interface_listens_on_each_address(tmp_path: Path) -> None:
    """``--host ""`` binds every interface, as uvicorn does: IPv4 and, where there is
    one, IPv6 loopback both answer."""
    port = free_port()
    args = command("serve", "--secret", SECRET, "--host", "", "--port", str(port))
    addresses = ["127.0.0.1", *(["::1"] if ipv6_loopback() else [])]
    with background(
        [*args, "--db", str(tmp_path / "x.sqlite3")], cwd=tmp_path, logs=tmp_path
    ) as serve:
        serve.wait_listening(port)
        for address in addresses:
            body = sample_body("message.sent", id=f"msg_{address}")
            connection = http.client.HTTPConnection(address, port, timeout=5)
            connection.request("POST", WEBHOOK_PATH, body=body, headers=headers_for(body))
            assert connection.getresponse().status == 200, address
            connection.close()
        serve.stop()
    assert serve.process.returncode == 0, serve


# -- worker ---------------------------------------------------------------------------------

WORKER_APP = """
from aerostic_webhooks import MemoryStore, SQLiteStore, WebhookReceiver

receiver = WebhookReceiver({secret!r}, store=SQLiteStore({db!r}), retry_delays=())


@receiver.on("*")
def note(event):
    with open({out!r}, "a", encoding="utf-8") as file:
        file.write(f"{{event.event}} {{event.data.id}}\\n")


not_a_receiver = 42
inline = WebhookReceiver({secret!r}, store=MemoryStore(), process="inline")
"""


def worker_setup(tmp_path: Path, events: Sequence[str]) -> tuple[Path, Path, list[str]]:
    """Events recorded (pending) in an inbox, and ``worker_app.py`` beside it: (db, out, ids)."""
    db, out = tmp_path / "inbox.sqlite3", tmp_path / "handled.txt"
    (tmp_path / "worker_app.py").write_text(
        WORKER_APP.format(secret=SECRET, db=str(db), out=str(out))
    )
    with WebhookReceiver(SECRET, process="external", store=SQLiteStore(db)) as recorder:
        ids = [
            recorder.receive(*signed_request(sample_body(kind), SECRET)).event_id for kind in events
        ]
    assert [record.status for record in snapshot(db).values()] == [Status.PENDING] * len(ids)
    return db, out, ids


def handled(out: Path) -> list[str]:
    return sorted(out.read_text().splitlines()) if out.exists() else []


def test_worker_processes_recorded_events_until_sigterm(tmp_path: Path) -> None:
    db, out, ids = worker_setup(tmp_path, TYPES)
    expected = sorted(f"{kind} {SAMPLE_PAYLOADS[kind]['data']['id']}" for kind in TYPES)
    args = command("worker", "--app", "worker_app:receiver")
    with background(args, cwd=tmp_path, logs=tmp_path) as worker:

        def all_done() -> bool:
            return {r.status for r in snapshot(db).values()} == {Status.DONE}

        worker.wait_for(all_done, "done with the six events")
        seconds = worker.stop(signal.SIGTERM)
    assert worker.process.returncode == 0, worker
    assert seconds < 5, f"took {seconds:.1f}s to stop\n{worker}"
    assert handled(out) == expected, worker
    assert "Traceback" not in worker.stderr(), worker
    assert sorted(snapshot(db)) == sorted(ids)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P is new in 3.11")
def test_worker_imports_the_app_from_the_current_directory_and_stops_on_sigint(
    tmp_path: Path,
) -> None:
    """Like the console script, with the current directory not on ``sys.path`` (``-P``)."""
    _, out, _ = worker_setup(tmp_path, ["message.read"])
    args = command("worker", "--app", "worker_app:receiver", python_flags=["-P"])
    with background(args, cwd=tmp_path, logs=tmp_path) as worker:
        worker.wait_for(lambda: handled(out) == ["message.read msg_def456"], "handled")
        seconds = worker.stop(signal.SIGINT)
    assert worker.process.returncode == 0, worker
    assert seconds < 5, f"took {seconds:.1f}s to stop\n{worker}"


@pytest.mark.parametrize(
    "app",
    [
        "worker_app",
        "no_such_module_here:receiver",
        "worker_app:no_such_attribute",
        "worker_app:not_a_receiver",
        "worker_app:inline",
    ],
    ids=["no-colon", "missing-module", "missing-attribute", "not-a-receiver", "inline"],
)
def test_worker_with_a_bad_app_is_one_error_line(tmp_path: Path, app: str) -> None:
    worker_setup(tmp_path, [])
    assert_error(cli("worker", "--app", app, cwd=tmp_path, timeout=20), (1, 2))


# A handler that runs until the test opens its gate (a file), so that it is running when the
# worker is told to stop.
GATED_APP = """
import pathlib
import time

from aerostic_webhooks import SQLiteStore, WebhookReceiver

receiver = WebhookReceiver({secret!r}, store=SQLiteStore({db!r}), retry_delays=())


@receiver.on("*")
def wait_for_the_gate(event):
    pathlib.Path({started!r}).touch()
    deadline = time.monotonic() + 20
    while not pathlib.Path({gate!r}).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
"""


def test_worker_stopped_while_a_handler_runs_lets_it_finish(tmp_path: Path) -> None:
    db, _, ids = worker_setup(tmp_path, ["message.sent"])
    started, gate = tmp_path / "started", tmp_path / "gate"
    app = GATED_APP.format(secret=SECRET, db=str(db), started=str(started), gate=str(gate))
    (tmp_path / "gated_app.py").write_text(app)
    args = command("worker", "--app", "gated_app:receiver")
    with background(args, cwd=tmp_path, logs=tmp_path) as worker:
        worker.wait_for(started.exists, "running the handler")
        worker.process.send_signal(signal.SIGTERM)
        worker.wait_for(lambda: "stopping" in worker.stdout(), "stopping")
        gate.touch()
        worker.process.wait(15)
    assert worker.process.returncode == 0, worker
    assert {event_id: record.status for event_id, record in snapshot(db).items()} == {
        ids[0]: Status.DONE
    }, worker


# -- inbox ----------------------------------------------------------------------------------

HANDLED_OK = [
    ("message.received", "msg_r1"),
    ("message.received", "msg_r2"),
    ("message.sent", "msg_s1"),
    ("contact.created", "contact_c1"),
]
HANDLED_FAILING = [("message.failed", "msg_f1"), ("message.failed", "msg_f2")]
RECORDED_ONLY = [("message.delivered", "msg_p1")]
ERROR_TEXT = "handler exploded"


def ident(event_type: str, data_id: str) -> str:
    return f"{event_type}:{data_id}"


DONE_IDS = [ident(*pair) for pair in HANDLED_OK]
FAILED_IDS = [ident(*pair) for pair in HANDLED_FAILING]
PENDING_IDS = [ident(*pair) for pair in RECORDED_ONLY]
ALL_IDS = DONE_IDS + FAILED_IDS + PENDING_IDS


def build_inbox(db: Path) -> dict[str, Record]:
    """Four done records, two failed (after one attempt), one pending (never processed)."""
    with WebhookReceiver(SECRET, store=SQLiteStore(db), retry_delays=()) as webhooks:

        @webhooks.on("message.failed")
        def explode(event: object) -> None:
            raise RuntimeError(ERROR_TEXT)

        for event_type, data_id in HANDLED_OK + HANDLED_FAILING:
            webhooks.receive(*signed_request(sample_payload(event_type, id=data_id), SECRET))
        assert webhooks.drain(10)
    with WebhookReceiver(SECRET, store=SQLiteStore(db), process="external") as recorder:
        for event_type, data_id in RECORDED_ONLY:
            recorder.receive(*signed_request(sample_payload(event_type, id=data_id), SECRET))
    records = snapshot(db)
    assert {i: r.status.value for i, r in records.items()} == {
        **dict.fromkeys(DONE_IDS, "done"),
        **dict.fromkeys(FAILED_IDS, "failed"),
        **dict.fromkeys(PENDING_IDS, "pending"),
    }
    return records


@pytest.fixture(scope="module")
def shared_inbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Record]]:
    """An inbox the read-only commands share."""
    db = tmp_path_factory.mktemp("inbox") / "inbox.sqlite3"
    return db, build_inbox(db)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """An inbox of the test's own, for the commands that change it."""
    db = tmp_path / "own.sqlite3"
    build_inbox(db)
    return db


def listed(output: str, records: dict[str, Record]) -> dict[str, str]:
    """The record lines of ``inbox list``: {event id: its line}."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        ids = [event_id for event_id in records if token(line, event_id)]
        if ids:
            assert len(ids) == 1, f"one record per line: {line!r}"
            assert ids[0] not in found, f"{ids[0]} listed twice"
            found[ids[0]] = line
    return found


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], ALL_IDS),
        (["--status", "failed"], FAILED_IDS),
        (["--status", "pending"], PENDING_IDS),
        (["--status", "done", "--type", "message.received"], DONE_IDS[:2]),
        (["--type", "message.failed"], FAILED_IDS),
    ],
    ids=["all", "failed", "pending", "done-received", "type"],
)
def test_inbox_list(
    shared_inbox: tuple[Path, dict[str, Record]],
    tmp_path: Path,
    options: list[str],
    expected: list[str],
) -> None:
    db, records = shared_inbox
    result = cli("inbox", "list", "--db", str(db), *options, cwd=tmp_path)
    assert result.returncode == 0, result
    lines = listed(result.stdout, records)
    assert sorted(lines) == sorted(expected), result
    for event_id, line in lines.items():
        record = records[event_id]
        rest = line.replace(event_id, " ")
        assert record.event_type in rest, f"no type in {line!r}"
        assert token(rest, record.status.value), f"no status in {line!r}"
        assert token(rest, str(record.attempts)), f"no attempts in {line!r}"


def test_inbox_list_limit(shared_inbox: tuple[Path, dict[str, Record]], tmp_path: Path) -> None:
    db, records = shared_inbox
    result = cli("inbox", "list", "--db", str(db), "--limit", "2", cwd=tmp_path)
    assert result.returncode == 0, result
    assert len(listed(result.stdout, records)) == 2, result


def test_inbox_list_unknown_status_is_a_usage_error(
    shared_inbox: tuple[Path, dict[str, Record]], tmp_path: Path
) -> None:
    db, _ = shared_inbox
    assert_usage_error(cli("inbox", "list", "--db", str(db), "--status", "lost", cwd=tmp_path))


def json_objects(text: str) -> list[tuple[object, bool]]:
    """Every JSON object that starts at the end of a line: (value, spans several lines)."""
    decoder = json.JSONDecoder()
    found = []
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.rstrip().endswith("{"):
            start = offset + line.rstrip().rindex("{")
            with contextlib.suppress(json.JSONDecodeError):
                value, end = decoder.raw_decode(text, start)
                found.append((value, "\n" in text[start:end]))
        offset += len(line)
    return found


def test_inbox_show_prints_the_record_and_its_payload_as_indented_json(
    shared_inbox: tuple[Path, dict[str, Record]], tmp_path: Path
) -> None:
    db, records = shared_inbox
    event_id = FAILED_IDS[0]
    result = cli("inbox", "show", event_id, "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0, result
    record = records[event_id]
    for field in (event_id, record.event_type, "failed", ERROR_TEXT):
        assert field in result.stdout, f"{field!r} not shown\n{result}"
    assert token(result.stdout.replace(event_id, " "), str(record.attempts)), result
    payload = sample_payload("message.failed", id="msg_f1")
    assert (payload, True) in json_objects(result.stdout), f"no indented payload\n{result}"


def test_inbox_show_unknown_id_exits_1(
    shared_inbox: tuple[Path, dict[str, Record]], tmp_path: Path
) -> None:
    db, _ = shared_inbox
    result = cli("inbox", "show", "message.sent:nope", "--db", str(db), cwd=tmp_path)
    assert_error(result, 1)


def test_inbox_retry_one_failed_record(inbox: Path, tmp_path: Path) -> None:
    result = cli("inbox", "retry", FAILED_IDS[0], "--db", str(inbox), cwd=tmp_path)
    assert result.returncode == 0, result
    assert token(result.stdout, "1"), result
    records = snapshot(inbox)
    assert records[FAILED_IDS[0]].status is Status.PENDING
    assert records[FAILED_IDS[0]].attempts == 0
    assert records[FAILED_IDS[1]].status is Status.FAILED


def test_inbox_retry_failed_requeues_every_failed_record(inbox: Path, tmp_path: Path) -> None:
    result = cli("inbox", "retry", "--failed", "--db", str(inbox), cwd=tmp_path)
    assert result.returncode == 0, result
    assert token(result.stdout, "2"), result
    records = snapshot(inbox)
    assert {event_id: records[event_id].status for event_id in FAILED_IDS} == dict.fromkeys(
        FAILED_IDS, Status.PENDING
    )
    assert {records[event_id].status for event_id in DONE_IDS} == {Status.DONE}


def test_inbox_retry_unknown_id_says_so(inbox: Path, tmp_path: Path) -> None:
    result = cli("inbox", "retry", "message.sent:nope", "--db", str(inbox), cwd=tmp_path)
    assert "Traceback" not in result.stderr, result
    if result.returncode == 0:
        assert token(result.stdout, "0"), result
    else:
        assert_error(result, 1)


def test_inbox_retry_needs_an_id_or_failed(inbox: Path, tmp_path: Path) -> None:
    assert_usage_error(cli("inbox", "retry", "--db", str(inbox), cwd=tmp_path))


def test_inbox_retry_with_both_an_id_and_failed_is_a_usage_error(
    inbox: Path, tmp_path: Path
) -> None:
    result = cli("inbox", "retry", FAILED_IDS[0], "--failed", "--db", str(inbox), cwd=tmp_path)
    assert_usage_error(result)
    records = snapshot(inbox)
    assert {records[event_id].status for event_id in FAILED_IDS} == {Status.FAILED}


@pytest.mark.parametrize(
    ("duration", "purged"),
    [
        ("7d", ["old-done", "old-failed"]),
        ("12h", ["old-done", "old-failed"]),
        ("30m", ["old-done", "old-failed", "hours-done"]),
        ("2w", []),
        ("0s", ["old-done", "old-failed", "hours-done", *DONE_IDS, *FAILED_IDS]),
    ],
)
def test_inbox_purge_older_than(
    inbox: Path, tmp_path: Path, duration: str, purged: list[str]
) -> None:
    now = utcnow()
    aged = [
        ("old-done", timedelta(days=10), Status.DONE),
        ("old-failed", timedelta(days=10), Status.FAILED),
        ("old-pending", timedelta(days=10), Status.PENDING),
        ("hours-done", timedelta(hours=2), Status.DONE),
    ]
    with SQLiteStore(inbox) as store:
        for event_id, age, status in aged:
            body = sample_body("message.sent", id=event_id)
            assert store.add(Record(event_id, "message.sent", body, now - age, status=status))
    before = set(snapshot(inbox))
    result = cli("inbox", "purge", "--older-than", duration, "--db", str(inbox), cwd=tmp_path)
    assert result.returncode == 0, result
    assert token(result.stdout, str(len(purged))), result
    assert set(snapshot(inbox)) == before - set(purged), result


@pytest.mark.parametrize("duration", ["soon", "7days", "7d ago"])
def test_inbox_purge_bad_duration_is_a_usage_error(
    inbox: Path, tmp_path: Path, duration: str
) -> None:
    result = cli("inbox", "purge", "--older-than", duration, "--db", str(inbox), cwd=tmp_path)
    assert_usage_error(result)
    assert set(snapshot(inbox)) == set(ALL_IDS)


def test_inbox_list_piped_into_head_prints_no_traceback(tmp_path: Path) -> None:
    """``inbox list | head -1`` on an inbox whose listing is larger than a pipe's buffer."""
    db, now = tmp_path / "big.sqlite3", utcnow()
    with SQLiteStore(db) as store:
        for n in range(3000):
            store.add(Record(f"message.sent:msg_{n:06}", "message.sent", b"{}", now))
    args = command("inbox", "list", "--db", str(db), "--limit", "3000")
    with subprocess.Popen(
        args, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        process.stdout.close()  # what head does after its line
        _, errors = process.communicate(timeout=30)
    assert b"message.sent:msg_" in first
    assert b"Traceback" not in errors, errors.decode(errors="replace")


def every_inbox_command(db: Path) -> list[list[str]]:
    """One run of each inbox action on ``db``."""
    return [
        ["inbox", "list", "--db", str(db)],
        ["inbox", "show", DONE_IDS[0], "--db", str(db)],
        ["inbox", "retry", "--failed", "--db", str(db)],
        ["inbox", "purge", "--older-than", "7d", "--db", str(db)],
    ]


def test_inbox_commands_on_a_missing_db_fail_and_create_nothing(tmp_path: Path) -> None:
    db = tmp_path / "absent" / "inbox.sqlite3"
    db.parent.mkdir()
    runs = every_inbox_command(db)
    problems = []
    for result in cli_many(runs, cwd=tmp_path):
        try:
            line = assert_error(result, 1, starts="error: no inbox at")
            assert str(db) in line, result
        except AssertionError as error:
            problems.append(str(error))
    assert not problems, "\n\n".join(problems)
    assert list(db.parent.iterdir()) == [], "an inbox command created the file"


@pytest.mark.parametrize("journal", ["DELETE", "WAL"])
def test_inbox_commands_refuse_a_sqlite_file_that_is_not_an_inbox(
    tmp_path: Path, journal: str
) -> None:
    """Opened as a store, another application's database would gain tables and WAL mode."""
    import sqlite3

    db = tmp_path / "other.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA journal_mode={journal}")
        conn.execute("CREATE TABLE customers (name TEXT)")
        conn.commit()
    before = db.read_bytes()
    runs = every_inbox_command(db)
    for result in cli_many(runs, cwd=tmp_path):
        assert "not an aerostic-webhooks inbox" in assert_error(result, 1), result
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("other")) == [db.name]


def test_inbox_commands_refuse_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "notes.sqlite3"
    db.write_bytes(b"these are notes, not a database\n" * 200)
    before = db.read_bytes()
    for result in cli_many(every_inbox_command(db), cwd=tmp_path):
        assert "not an aerostic-webhooks inbox" in assert_error(result, 1), result
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [
        ["purge", "--older-than", "3000000d"],
        ["purge", "--older-than", "99999999999d"],
        ["list", "--limit", "99999999999999999999"],
        ["list", "--limit", "0"],
    ],
    ids=" ".join,
)
def test_inbox_numbers_out_of_range_are_usage_errors(
    inbox: Path, tmp_path: Path, args: list[str]
) -> None:
    result = cli("inbox", *args, "--db", str(inbox), cwd=tmp_path)
    assert_error(result, 2)
    assert set(snapshot(inbox)) == set(ALL_IDS)


def test_inbox_list_and_sign_into_a_closed_output_exit_quietly(inbox: Path, tmp_path: Path) -> None:
    """``inbox list | true``: the reader has gone before the exit's flush; not a failure."""
    body = tmp_path / "body.json"
    body.write_bytes(RAW)
    for args in (["inbox", "list", "--db", str(inbox)], ["sign", str(body), "--secret", SECRET]):
        completed = run_with_output_closed(args, tmp_path)
        assert (completed.returncode, completed.stderr) == (0, b""), (args, completed)


# -- demo -----------------------------------------------------------------------------------


@needs_server
def test_demo_exits_0_and_mentions_every_event_type(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env_db = Path(os.environ["AEROSTIC_WEBHOOKS_DB"])  # set by conftest, inside tmp_path
    result = cli("demo", cwd=cwd, timeout=60)
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr, result
    missing = [kind for kind in TYPES if kind not in result.stdout]
    assert not missing, f"{missing} not in the output\n{result}"
    assert list(cwd.iterdir()) == [], "the demo left files in the current directory"
    assert not env_db.exists(), "the demo wrote into $AEROSTIC_WEBHOOKS_DB, not a temporary inbox"


@needs_server
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_demo_stopped_by_a_signal_exits_1_and_removes_its_scratch_inbox(
    tmp_path: Path, signum: signal.Signals
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = environment(TMPDIR=str(scratch))
    with background(command("demo"), cwd=tmp_path, logs=tmp_path, env=env) as demo:
        demo.wait_for(lambda: any(scratch.iterdir()), "making its scratch inbox")
        demo.stop(signum)
    assert demo.process.returncode == 1, demo
    assert "Traceback" not in demo.stderr(), demo
    assert list(scratch.iterdir()) == [], "the demo left its scratch inbox behind"


@needs_server
def test_demo_signalled_inside_code_run_by_exec_still_exits_1(tmp_path: Path) -> None:
    """SIGTERM can come while Python runs code made by ``exec()`` of a string, as when a
    dataclass or a named tuple is built. A ``KeyboardInterrupt`` raised there, even once
    caught, made ``python -m`` end "killed by SIGINT" (-2) with nothing on stderr."""
    (tmp_path / "signalled_demo.py").write_text(
        "import signal\n"
        "from aerostic_webhooks import cli\n"
        "real = cli._server\n"
        "def server(*args):\n"
        "    exec('import signal; signal.raise_signal(signal.SIGTERM)')\n"
        "    return real(*args)\n"
        "cli._server = server\n"
        "raise SystemExit(cli.main(['demo']))\n"
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = environment(TMPDIR=str(scratch))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    completed = subprocess.run(
        [sys.executable, "-m", "signalled_demo"],
        check=False,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 1, completed
    assert "Traceback" not in completed.stderr, completed
    assert list(scratch.iterdir()) == [], "the demo left its scratch inbox behind"


def demo_with_its_thread_started_by(
    starter: Callable[[threading.Thread, Callable[[threading.Thread], None]], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run ``demo`` in this process, its server thread started by ``starter(thread, start)``;
    it must exit 1 and leave no scratch inbox behind."""

    start = threading.Thread.start

    def starting(thread: threading.Thread) -> None:
        if thread.name == "aerostic-webhooks-demo":
            starter(thread, start)
        else:
            start(thread)

    monkeypatch.setattr(threading.Thread, "start", starting)
    demo_in_this_process_fails(tmp_path, monkeypatch)
    assert list(tmp_path.iterdir()) == [], "the demo left its scratch inbox behind"


def demo_in_this_process_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``demo`` in this process, its scratch inbox under ``tmp_path``: it must exit 1,
    and put back the SIGINT and SIGTERM handlers it set."""
    from aerostic_webhooks import cli as module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert module.main(["demo"]) == 1
        assert {signum: signal.getsignal(signum) for signum in handlers} == handlers
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@needs_server
def test_demo_interrupted_before_its_server_thread_starts_exits_1_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal can come as the server thread is about to start: the demo must stop it
    and still remove its scratch inbox."""

    def interrupted(thread: threading.Thread, start: Callable[[threading.Thread], None]) -> None:
        signal.raise_signal(signal.SIGTERM)
        start(thread)

    demo_with_its_thread_started_by(interrupted, tmp_path, monkeypatch)


@needs_server
def test_demo_interrupted_once_its_server_thread_exists_stops_and_joins_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal lands while ``start()`` waits for the new thread to say it runs: that thread
    must be stopped and joined, not left to start the worker after the clean-up. Another
    thread of the process is running, as in a real demo or test run: the kernel may hand
    the signal to it rather than to the main thread."""
    parked = threading.Event()
    bystander = threading.Thread(target=parked.wait, name="bystander", daemon=True)
    bystander.start()
    before = set(threading.enumerate())

    def interrupted(thread: threading.Thread, start: Callable[[threading.Thread], None]) -> None:
        started = getattr(thread, "_started", None)  # CPython's: start() waits on it
        if started is None:
            pytest.skip("this Python's Thread has no _started event to interrupt")
        wait = started.wait

        def signalled(timeout: float | None = None) -> bool:
            os.kill(os.getpid(), signal.SIGTERM)
            return bool(wait(timeout))

        started.wait = signalled
        start(thread)

    try:
        demo_with_its_thread_started_by(interrupted, tmp_path, monkeypatch)
    finally:
        parked.set()
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not [name for name in left if name.startswith("aerostic-webhooks")], left


def signal_inside(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, *, after: bool
) -> list[bool]:
    """Have SIGTERM come in just before (or just after) ``module.name`` does its work, on its
    first call; the list gets an item once it has come."""
    real = getattr(module, name)
    came: list[bool] = []

    def interrupt_once() -> None:
        if not came:
            came.append(True)
            signal.raise_signal(signal.SIGTERM)

    def calling(*args: Any, **kwargs: Any) -> Any:
        if not after:
            interrupt_once()
        result = real(*args, **kwargs)
        if after:
            interrupt_once()
        return result

    monkeypatch.setattr(module, name, calling)
    return came


@needs_server
@pytest.mark.parametrize(
    ("module", "name", "after"),
    [(tempfile, "mkdtemp", True), (shutil, "rmtree", False)],
    ids=["as the scratch inbox is made", "as it is removed"],
)
def test_demo_interrupted_while_its_scratch_inbox_is_made_or_removed_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: Any, name: str, after: bool
) -> None:
    """SIGTERM can come the moment the scratch directory exists, before anything has taken
    charge of it, or as it is being removed: the demo must exit 1 and leave nothing."""
    came = signal_inside(monkeypatch, module, name, after=after)
    demo_in_this_process_fails(tmp_path, monkeypatch)
    assert came, f"{name} was never called"
    assert list(tmp_path.iterdir()) == [], "the demo left its scratch inbox behind"


@needs_server
def test_demo_fails_when_an_event_is_handled_more_than_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo checks that each event is handled exactly once: a receiver that runs a
    handler twice (a fault injected here) must fail it."""
    from aerostic_webhooks import cli as module

    class Twice(WebhookReceiver):
        def on(self, pattern: str) -> Callable[[Any], Any]:
            register = super().on(pattern)

            def both(handler: Any) -> Any:
                register(handler)
                return register(handler)

            return both

    monkeypatch.setattr(module, "WebhookReceiver", Twice)
    demo_in_this_process_fails(tmp_path, monkeypatch)
    output = capsys.readouterr().out
    assert "handled exactly once: NO" in output, output
    assert "demo FAILED" in output, output


def test_the_demos_waits_end_on_a_stop_request_or_their_time() -> None:
    """``_until``: what the demo waits with (its server's start, the drain), a slice at a
    time, so that SIGTERM or Ctrl-C is heard within a slice, not after the whole wait."""
    from aerostic_webhooks import cli as module

    stop = threading.Event()
    slices: list[float] = []

    def never(wait: float) -> bool:
        slices.append(wait)
        time.sleep(wait)
        return False

    assert module._until(stop, lambda wait: True, 20) is True
    started = time.monotonic()
    assert module._until(stop, never, 0.2) is False
    assert 0.2 <= time.monotonic() - started < 2
    assert set(slices) == {0.05}

    def asked_to_stop(wait: float) -> bool:
        stop.set()
        return False

    started = time.monotonic()
    with pytest.raises(module._Stopped):
        module._until(stop, asked_to_stop, 20)
    assert time.monotonic() - started < 2


class _DeadServer:
    """A server whose thread ends at once without starting (its port taken, say)."""

    started = False
    should_exit = False

    def run(self) -> None:
        return None


def test_demo_whose_server_thread_ends_without_starting_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not after waiting out the 20 seconds a slow start is given, nor by posting its
    deliveries to a server that is not there."""
    from aerostic_webhooks import cli as module

    monkeypatch.setattr(module, "_server", lambda *args: _DeadServer())
    started = time.monotonic()
    demo_in_this_process_fails(tmp_path, monkeypatch)
    assert time.monotonic() - started < 10
    assert "the demo server did not start" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "the demo left its scratch inbox behind"


@needs_server
def test_demo_signalled_while_it_waits_for_its_handlers_stops_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while the demo drains (handlers that would take their time) ends it then,
    not once the drain's 20 seconds are out."""
    from aerostic_webhooks import cli as module

    class SlowToDrain(WebhookReceiver):
        def drain(self, timeout: float | None = None) -> bool:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(timeout or 0)
            return False

    monkeypatch.setattr(module, "WebhookReceiver", SlowToDrain)
    started = time.monotonic()
    demo_in_this_process_fails(tmp_path, monkeypatch)
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == [], "the demo left its scratch inbox behind"
