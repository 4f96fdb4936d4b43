"""The ``aerostic-webhooks`` command: sign, send, serve, worker, inbox and demo.

Exit codes: 0 success, 1 failure, 2 usage error. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from . import __version__
from .errors import WebhookError
from .events import Event
from .receiver import SECRET_ENV, WebhookReceiver, current_event_id, secrets_from_env
from .signature import SIGNATURE_HEADER, sign
from .stores.base import Status, utcnow
from .stores.sqlite import SQLiteStore, is_inbox
from .testing import SAMPLE_PAYLOADS, sample_body

__all__ = ["main"]

PATH = "/webhooks/aerostic"
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class CommandError(Exception):
    """A failure to report as one line, exit code 1."""


class UsageError(CommandError):
    """A mistake in the command line, exit code 2."""


# -- sign -------------------------------------------------------------------------------------


def _secrets(args: argparse.Namespace) -> list[str]:
    """``--secret`` (``serve`` takes several), else ``$AEROSTIC_WEBHOOK_SECRET`` split on commas
    as the receiver splits it; none, or an empty one, is a usage error."""
    if args.secret is not None:
        secrets: list[str] = [args.secret] if isinstance(args.secret, str) else args.secret
    else:
        secrets = secrets_from_env()
    if not secrets or not all(secrets):
        raise UsageError(f"a webhook secret is required: --secret or ${SECRET_ENV}")
    return secrets


def _read_input(name: str | None) -> bytes:
    if name in (None, "-"):
        if sys.stdin is None:
            raise CommandError("no input: standard input is closed")
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {name}: {error.strerror or error}") from None


def cmd_sign(args: argparse.Namespace) -> int:
    secret = _secrets(args)[0]
    print(sign(_read_input(args.file), secret))
    return 0


# -- send -------------------------------------------------------------------------------------


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"not an http(s) URL: {url}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an http(s) URL: {url}")
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.hostname, port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        raise CommandError(f"cannot reach {url}: {error}") from None
    finally:
        connection.close()


def _bodies(what: str, count: int) -> list[bytes]:
    if what in SAMPLE_PAYLOADS:
        prefix = what.split(".", maxsplit=1)[0][:3]
        return [sample_body(what, id=f"{prefix}_{uuid.uuid4().hex[:12]}") for _ in range(count)]
    if Path(what).is_file():
        return [_read_input(what)] * count
    known = ", ".join(SAMPLE_PAYLOADS)
    raise UsageError(f"{what!r} is neither an event type ({known}) nor a file")


def cmd_send(args: argparse.Namespace) -> int:
    secret = _secrets(args)[0]
    bodies = _bodies(args.what, args.count)
    bodies += [bodies[n % len(bodies)] for n in range(args.duplicates)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    try:
        _send_all(args, secret, bodies, latencies, statuses)
    except BrokenPipeError:  # e.g. `send ... | head -1`
        _silence_stdout()
        if len(latencies) < len(bodies):
            raise CommandError(
                f"output closed: stopped after {len(latencies)} of {len(bodies)} deliveries"
            ) from None
    return 0 if all(200 <= status < 300 for status in statuses) else 1


def _send_all(
    args: argparse.Namespace,
    secret: str,
    bodies: list[bytes],
    latencies: list[float],
    statuses: dict[int, int],
) -> None:
    """Post each body in turn, a line for each answer, then a summary of several."""
    progress = len(bodies) > 1 and sys.stderr.isatty()
    try:
        for number, body in enumerate(bodies, start=1):
            headers = {SIGNATURE_HEADER: sign(body, secret), "Content-Type": "application/json"}
            started = time.perf_counter()
            status, answer = _post(args.url, body, headers, args.timeout)
            latency = (time.perf_counter() - started) * 1000
            latencies.append(latency)
            statuses[status] = statuses.get(status, 0) + 1
            print(f"{status} {answer.decode('utf-8', 'replace')} {latency:.1f} ms", flush=True)
            if progress:
                done = 30 * number // len(bodies)
                sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {number}/{len(bodies)}")
    finally:
        if progress:  # ends the progress bar's line, before a summary or an error
            sys.stderr.write("\n")
    if len(bodies) > 1:
        failed = sum(n for status, n in statuses.items() if not 200 <= status < 300)
        counts = ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items()))
        ordered = sorted(latencies)
        p50 = ordered[len(ordered) // 2]
        print(
            f"summary: {len(bodies)} sent, {counts}, {failed} failed, p50 {p50:.1f} ms", flush=True
        )


def _silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone, so the exit's flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# -- serve and demo ---------------------------------------------------------------------------


def _server(receiver: WebhookReceiver, host: str, port: int) -> Any:
    """A uvicorn server for the Starlette adapter (imported here: the ``cli`` extra)."""
    try:
        import uvicorn  # noqa: PLC0415
        from starlette.applications import Starlette  # noqa: PLC0415

        from .starlette import webhook_lifespan, webhook_route  # noqa: PLC0415
    except ImportError:
        raise CommandError(
            "serving needs Starlette and uvicorn: pip install 'aerostic-webhooks[cli]'"
        ) from None
    app = Starlette(routes=[webhook_route(PATH, receiver)], lifespan=webhook_lifespan(receiver))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    return uvicorn.Server(config)


_OUTPUT_LOCK = threading.Lock()


def _printer(event: Event) -> None:
    # Ids only: never phone numbers or message text. Under a lock: handlers run on several
    # threads, and print() writes a line and its newline apart, so two lines could merge.
    with _OUTPUT_LOCK:
        print(f"handled {event.event} {current_event_id()}", flush=True)


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (all interfaces for ""), bound as
    uvicorn's own asyncio server binds them, but here: a failure is one line of ours."""
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as error:
        raise _cannot_serve(host, port, error.strerror or str(error)) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # a family this kernel lacks (IPv6 off): skipped, as asyncio does
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # an IPv4 socket of its own takes IPv4
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise _cannot_serve(host, port, error.strerror or str(error)) from None
    if not sockets:
        raise _cannot_serve(host, port, "no address of it can be used here")
    return sockets


def _cannot_serve(host: str, port: int, reason: str = "") -> CommandError:
    """The one line ``serve`` ends with when it cannot start."""
    return CommandError(f"cannot serve on {host}:{port}" + (f": {reason}" if reason else ""))


def _url(host: str, port: int) -> str:
    if not host:
        return f"http://0.0.0.0:{port}{PATH} (every interface)"
    return f"http://[{host}]:{port}{PATH}" if ":" in host else f"http://{host}:{port}{PATH}"


def cmd_serve(args: argparse.Namespace) -> int:
    secrets = _secrets(args)
    sockets = _listen(args.host, args.port)
    receiver = WebhookReceiver(secrets, store=_open_store(args.db, create=True))
    receiver.on("*")(_printer)
    server = _server(receiver, args.host, args.port)

    def request_stop(signum: int, frame: object) -> None:
        server.should_exit = True

    # Our own handlers: uvicorn's re-raise the signal once it has stopped, so the command
    # would end "killed by SIGTERM" (or with a KeyboardInterrupt) after a clean shutdown.
    server.capture_signals = contextlib.nullcontext
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(f"receiving on {_url(args.host, args.port)} (inbox {args.db})", flush=True)
    try:
        server.run(sockets=sockets)
    except SystemExit:  # uvicorn exits when it cannot start
        raise _cannot_serve(args.host, args.port) from None
    finally:
        for sock in sockets:
            sock.close()
    if not server.started:
        raise _cannot_serve(args.host, args.port)
    return 0


class _Stopped(Exception):
    """SIGTERM or Ctrl-C asked the demo to stop."""


@contextlib.contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    """SIGTERM and Ctrl-C set the event for as long as the block runs (then the handlers are
    put back), rather than raise ``KeyboardInterrupt`` wherever the main thread happens to be.

    An exception raised from a signal handler can land anywhere: in a weakref callback, where
    Python prints it and carries on; between a directory's creation and whoever would remove
    it; or in code run by ``exec()`` of a string (a dataclass being built, say), which makes
    ``python -m`` end "killed by SIGINT" whatever ``main()`` returned.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    with contextlib.ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set here
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(signum, request_stop)
                # None: a handler not set from Python, which Python cannot set back
                stack.callback(
                    signal.signal, signum, signal.SIG_DFL if previous is None else previous
                )
        yield stop


def _until(stop: threading.Event, done: Callable[[float], bool], seconds: float) -> bool:
    """Call ``done(slice)`` until it says so or ``seconds`` pass: ``False`` then; raises
    ``_Stopped`` as soon as ``stop`` is set."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        if done(0.05):
            return True
        if time.monotonic() >= deadline:
            return False
    raise _Stopped


def cmd_demo(args: argparse.Namespace) -> int:
    with _stop_requests() as stop:
        try:
            return _demo(stop)
        except _Stopped:
            return 1


def _demo(stop: threading.Event) -> int:
    secret = "whsec_demo_" + uuid.uuid4().hex
    handled: list[str] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="aerostic-demo-") as workdir:
        receiver = WebhookReceiver(secret, store=SQLiteStore(Path(workdir) / "inbox.sqlite3"))

        @receiver.on("*")
        def record(event: Event) -> None:
            with lock:
                handled.append(event.event)

        port = _free_port()
        server = _server(receiver, "127.0.0.1", port)
        thread = threading.Thread(target=server.run, name="aerostic-webhooks-demo", daemon=True)
        try:
            thread.start()

            def started(wait: float) -> bool:
                thread.join(wait)
                return bool(server.started) or not thread.is_alive()

            if not _until(stop, started, 20) or not server.started:
                raise CommandError("the demo server did not start")
            url = f"http://127.0.0.1:{port}{PATH}"
            rows = []
            for delivery in _demo_deliveries(receiver, secret):
                if stop.is_set():
                    raise _Stopped
                rows.append(_deliver(url, *delivery))
            drained = _until(stop, lambda wait: receiver.drain(timeout=wait), 20)
        finally:
            server.should_exit = True
            if thread.is_alive():  # not when it could not be started
                thread.join(20)
            receiver.close()
    if stop.is_set():  # asked to stop while cleaning up: no verdict
        raise _Stopped
    print(f"{'delivery':<32} {'expected':>8} {'answered':>8}  body")
    for name, expected, status, text in rows:
        mark = "" if status == expected else "   <- unexpected"
        print(f"{name:<32} {expected:>8} {status:>8}  {text}{mark}")
    once = sorted(handled) == sorted(SAMPLE_PAYLOADS)
    print(f"\nhandled: {', '.join(sorted(handled))}")
    print(f"each of the six sample events handled exactly once: {'yes' if once else 'NO'}")
    ok = drained and once and all(status == expected for _, expected, status, _ in rows)
    print("demo passed" if ok else "demo FAILED")
    return 0 if ok else 1


def _demo_deliveries(receiver: WebhookReceiver, secret: str) -> list[tuple[str, bytes, str, int]]:
    """The six samples, a duplicate and three refusals: (name, body, key, expected) each."""
    first = sample_body("message.received")
    deliveries = [
        (event_type, sample_body(event_type), secret, 200) for event_type in SAMPLE_PAYLOADS
    ]
    deliveries += [
        ("duplicate of message.received", first, secret, 200),
        ("forged (wrong secret)", first, "whsec_guessed", 401),
        ("oversized (1 MiB + 1)", b"x" * (receiver.max_body_bytes + 1), secret, 413),
        ("not JSON", b"{oops", secret, 400),
    ]
    return deliveries


def _deliver(
    url: str, name: str, body: bytes, key: str, expected: int
) -> tuple[str, int, int, str]:
    """Post one delivery signed with ``key``: (name, expected, status, body)."""
    headers = {SIGNATURE_HEADER: sign(body, key), "Content-Type": "application/json"}
    status, response = _post(url, body, headers, 10)
    return name, expected, status, response.decode("utf-8", "replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- worker -----------------------------------------------------------------------------------


def _load_receiver(spec: str) -> WebhookReceiver:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--app must be module:attribute, not {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the module's own code may raise anything while importing
        raise CommandError(
            f"cannot import {module_name}: {type(error).__name__}: {error}"
        ) from None
    receiver = getattr(module, attribute, None)
    if not isinstance(receiver, WebhookReceiver):
        raise CommandError(f"{spec} is not a WebhookReceiver")
    if receiver.process == "inline":
        raise CommandError(f"{spec} is inline: its handlers run in its requests, not a worker")
    return receiver


def cmd_worker(args: argparse.Namespace) -> int:
    receiver = _load_receiver(args.app)
    with _stop_requests() as stop:
        receiver.start()
        print(f"worker started for {args.app}", flush=True)
        stop.wait()
        print("stopping: waiting for running handlers", flush=True)
        receiver.close(timeout=30)
    print("worker stopped", flush=True)
    return 0


# -- inbox ------------------------------------------------------------------------------------


def _open_store(path: str, *, create: bool = False) -> SQLiteStore:
    if not create:
        if not Path(path).is_file():
            raise CommandError(f"no inbox at {path}")
        if not is_inbox(path):  # opened as a store, it would be changed into one
            raise CommandError(f"{path} is not an aerostic-webhooks inbox")
    return SQLiteStore(path)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a port number (1-65535): {text!r}")
    return int(text)


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration like 7d, 12h, 30m or 0s: {text!r}")
    try:
        duration = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        utcnow() - duration  # the cut-off must be a date the clock can express
    except OverflowError:
        raise argparse.ArgumentTypeError(f"too long a duration: {text!r}") from None
    return duration


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` up to a billion."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is None or not minimum <= number <= 10**9:
            raise argparse.ArgumentTypeError(
                f"not a whole number from {minimum} to 1000000000: {text!r}"
            )
        return number

    return parse


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 86400:
        raise argparse.ArgumentTypeError(f"not a number of seconds from 0 to 86400: {text!r}")
    return seconds


def cmd_inbox(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    try:
        return _INBOX[args.action](store, args)
    finally:
        store.close()


def _inbox_list(store: SQLiteStore, args: argparse.Namespace) -> int:
    status = Status(args.status) if args.status else None
    for record in store.list(status=status, event_type=args.type, limit=args.limit):
        received = record.received_at.isoformat(timespec="seconds")
        print(
            f"{record.event_id}  {record.event_type}  {record.status}  "
            f"attempts={record.attempts}  received={received}"
        )
    return 0


def _inbox_show(store: SQLiteStore, args: argparse.Namespace) -> int:
    record = store.get(args.event_id)
    if record is None:
        raise CommandError(f"no record {args.event_id!r} in {args.db}")
    for name in ("event_id", "event_type", "status", "attempts", "last_error"):
        print(f"{name}: {getattr(record, name)}")
    for name in ("received_at", "next_attempt_at", "lease_expires_at", "updated_at"):
        value = getattr(record, name)
        print(f"{name}: {value.isoformat() if value else '-'}")
    try:
        payload = json.dumps(json.loads(record.body), indent=2, ensure_ascii=False)
    except ValueError:
        payload = record.body.decode("utf-8", "replace")
    print(f"payload:\n{payload}")
    return 0


def _inbox_retry(store: SQLiteStore, args: argparse.Namespace) -> int:
    if args.failed == bool(args.event_id):
        raise UsageError("give one EVENT_ID or --failed")
    if args.failed:
        count = store.requeue_failed()
    elif store.requeue(args.event_id):
        count = 1
    else:
        raise CommandError(f"{args.event_id!r} is unknown or being processed now")
    print(f"queued {count} record(s) again; a running worker takes them up")
    return 0


def _inbox_purge(store: SQLiteStore, args: argparse.Namespace) -> int:
    purged = store.purge(older_than=utcnow() - args.older_than)
    print(f"purged {purged} done or failed record(s) older than {args.older_than}")
    return 0


_INBOX: dict[str, Callable[[SQLiteStore, argparse.Namespace], int]] = {
    "list": _inbox_list,
    "show": _inbox_show,
    "retry": _inbox_retry,
    "purge": _inbox_purge,
}


# -- the parser -------------------------------------------------------------------------------


_SECRET_HELP = (
    f"the webhook secret (default: ${SECRET_ENV}; the first one if it holds several); "
    "prefer the variable: a command line is visible to other users"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aerostic-webhooks",
        description="Sign, send and receive Aerostic webhooks; read and mend the inbox.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sign_parser = commands.add_parser("sign", help="print the signature header for a body")
    sign_parser.add_argument("file", nargs="?", help="the body; '-' or nothing for stdin")
    sign_parser.add_argument("--secret", help=_SECRET_HELP)
    sign_parser.set_defaults(func=cmd_sign)

    send = commands.add_parser("send", help="post signed sample events or a file's body")
    send.add_argument("what", metavar="TYPE|FILE", help="an event type, or a file to send")
    send.add_argument("--url", required=True, help="the receiving endpoint")
    send.add_argument("--secret", help=_SECRET_HELP)
    send.add_argument("--count", type=_count(1), default=1, help="how many to send (default 1)")
    send.add_argument(
        "--duplicates",
        type=_count(0),
        default=0,
        help="how many more to send, repeating the bodies already sent in turn (default 0)",
    )
    send.add_argument("--timeout", type=_seconds, default=10.0, help="seconds per request")
    send.set_defaults(func=cmd_send)

    serve = commands.add_parser("serve", help="run a standalone receiver (uvicorn)")
    serve.add_argument(
        "--secret",
        action="append",
        help=f"a webhook secret, repeated while rotating (default: ${SECRET_ENV}, comma-separated)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument(
        "--db",
        default=os.environ.get("AEROSTIC_WEBHOOKS_DB") or "aerostic_webhooks.sqlite3",
        help="the SQLite inbox (default: $AEROSTIC_WEBHOOKS_DB, else ./aerostic_webhooks.sqlite3)",
    )
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help="run a receiver's worker in this process")
    worker.add_argument("--app", required=True, help="module:attribute of a WebhookReceiver")
    worker.set_defaults(func=cmd_worker)

    inbox = commands.add_parser("inbox", help="read and mend a SQLite inbox")
    actions = inbox.add_subparsers(dest="action", required=True, parser_class=_Parser)
    listing = actions.add_parser("list", help="records, newest first")
    listing.add_argument("--status", choices=[status.value for status in Status])
    listing.add_argument("--type", help="an event type")
    listing.add_argument("--limit", type=_count(1), default=50, help="at most (default 50)")
    show = actions.add_parser("show", help="one record and its payload")
    show.add_argument("event_id")
    retry = actions.add_parser("retry", help="queue a record, or every failed one, again")
    retry.add_argument("event_id", nargs="?")
    retry.add_argument("--failed", action="store_true", help="every failed record")
    purge = actions.add_parser("purge", help="delete done and failed records past an age")
    purge.add_argument("--older-than", type=_duration, required=True, help="e.g. 7d, 12h")
    for action in (listing, show, retry, purge):
        action.add_argument("--db", required=True, help="the SQLite inbox")
    inbox.set_defaults(func=cmd_inbox)

    demo = commands.add_parser("demo", help="serve, send the documented samples, check")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="log: %(levelname)s %(message)s")
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is handled below, not at exit
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (CommandError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except WebhookError as error:  # the store could not be opened or written
        print(f"error: {error.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    except BrokenPipeError:  # e.g. `inbox list | head`: the reader has what it wanted
        _silence_stdout()
        return 0
    return result
