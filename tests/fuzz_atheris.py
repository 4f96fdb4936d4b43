"""Coverage-guided fuzzing of every adapter with atheris (libFuzzer), beside the hypothesis
harness in ``tests/test_fuzz.py``; not collected by pytest.

libFuzzer's bytes are decoded with ``atheris.FuzzedDataProvider`` into a request (method,
mount-point spelling, chunked or not, Content-Type, up to three extra headers, a signature
header and a body), sent through one adapter exactly as ``tests/test_fuzz.py`` sends it, and
checked with the same ``Ledger`` (``tests/_fuzzing.py``): POST gets exactly the contract's
status and JSON, other methods 405, no exception escapes, and a 200 means a valid record while
nothing invalid is ever recorded; every 10,000 executions, and on the last one, every record in
the store is checked again. The package ``aerostic_webhooks`` is imported under atheris's
instrumentation, so libFuzzer keeps the inputs that reach new code in it.

Bodies are the fuzzer's bytes as they are, or a documented sample (fields from the fuzzer, or
the fuzzer's bytes spliced into it), a near-limit or over-limit padded sample, or an unknown
event type, sometimes padded with spaces to the limit; the signature is mostly valid, else
missing, stale, under a wrong secret, cut or altered, upper-case, padded, in a rotation list,
or the fuzzer's raw bytes.

Run from the repository root, one adapter per process (``flask``, ``starlette``, ``fastapi``,
``django-memory``, ``django-app``), any libFuzzer options and corpus directories after it::

    .venv/bin/pip install atheris
    .venv/bin/python -m tests.fuzz_atheris flask -runs=100000 .fuzz/flask

``-max_len`` defaults to 16384 here. A new (or empty) corpus directory is first filled with
200 random inputs. The Django adapters create the test database of ``tests.django_settings``
(a SQLite file in the temporary directory) and drop it after the last of ``-runs``.

A failure prints the request and the traceback, and libFuzzer writes the input to
``crash-<sha1>`` in the working directory (``-artifact_prefix=DIR/`` to put it elsewhere;
corpora and crash files are git-ignored: ``.fuzz/``, ``crash-*``). Replay it with the same
command and the file in place of the corpus directory. A failure that depends on what the
store already held (a duplicate, say) may not come back on its own: try the run again with the
``-seed=N`` libFuzzer printed at its start (handlers on the worker's threads make coverage, and
so the run, not quite repeatable).
"""

from __future__ import annotations

import importlib
import json
import os
import random
import sys
from contextlib import ExitStack
from typing import Any, Protocol, TypeVar

# atheris has no type information of its own (and types-atheris leaves out what is used here).
atheris: Any = importlib.import_module("atheris")

# Under instrumentation: the package and every adapter module that needs no configured Django.
with atheris.instrument_imports(include=["aerostic_webhooks"]):
    from . import _fuzzing as fz

    for _module in ("flask", "starlette", "fastapi"):
        importlib.import_module(f"aerostic_webhooks.{_module}")

from aerostic_webhooks import sign
from aerostic_webhooks.testing import sample_body

from .contract import LIMIT, SECRET

ADAPTERS = ("flask", "starlette", "fastapi", "django-memory", "django-app")
CHECK_EVERY = 10_000
SEEDS = 200  # random inputs in a new corpus directory
SIGNATURE_MODES = ["valid"] * 6 + ["missing"] * 2
SIGNATURE_MODES += ["stale", "wrong secret", "mutated", "upper", "spaced", "rotation", "bytes"]
BODY_MODES = ["raw"] * 3 + ["sample"] * 2 + ["spliced"] * 2 + ["padded", "unknown"]
FIELDS = ["id", "from", "to", "text", "status"]
T = TypeVar("T")


class DataProvider(Protocol):
    """The part of ``atheris.FuzzedDataProvider`` used here (atheris's method names)."""

    def ConsumeBytes(self, count: int) -> bytes: ...
    def ConsumeUnicodeNoSurrogates(self, count: int) -> str: ...
    def ConsumeIntInRange(self, low: int, high: int) -> int: ...
    def ConsumeInt(self, size: int) -> int: ...
    def ConsumeBool(self) -> bool: ...
    def PickValueInList(self, values: list[T]) -> T: ...
    def remaining_bytes(self) -> int: ...


# -- decoding ------------------------------------------------------------------------------------


def _header_bytes(fdp: DataProvider, max_size: int) -> bytes:
    """Header value bytes as on the wire, without control bytes (no client lets them through)."""
    raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, max_size))
    return bytes(byte for byte in raw if byte >= 32 and byte != 127)


def _value(fdp: DataProvider) -> Any:
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind == 0:
        return fdp.ConsumeInt(4)
    if kind == 1:
        return None
    if kind == 2:
        return fdp.ConsumeBool()
    return fdp.ConsumeUnicodeNoSurrogates(24)


def _body(fdp: DataProvider) -> tuple[bytes, bytes]:
    """``(original, body)``: a body, and the one it was made from (signed by a stale header)."""
    mode = fdp.PickValueInList(BODY_MODES)
    event_type = fdp.PickValueInList(fz.EVENT_TYPES)
    spaces = fdp.PickValueInList([None] * 6 + [1, "limit", "over"])
    if mode == "raw":
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
        original = body + b" "
    elif mode == "sample":
        overrides = {name: _value(fdp) for name in FIELDS if fdp.ConsumeBool()}
        body = original = sample_body(event_type, **overrides)
    elif mode == "spliced":
        original = sample_body(event_type, id=fdp.ConsumeUnicodeNoSurrogates(12))
        at = fdp.ConsumeIntInRange(0, len(original))
        how = fdp.PickValueInList(["overwrite", "insert", "cut"])
        chunk = fdp.ConsumeBytes(fdp.remaining_bytes())
        if how == "overwrite":
            body = original[:at] + chunk + original[at + len(chunk) :]
        elif how == "insert":
            body = original[:at] + chunk + original[at:]
        else:
            body = original[:at] + chunk
    elif mode == "padded":
        size = (
            fdp.ConsumeIntInRange(LIMIT - 3, LIMIT + 3)
            if fdp.ConsumeBool()
            else fdp.ConsumeIntInRange(200, 3 * LIMIT)
        )
        body = original = fz.padded(event_type, size, fdp.ConsumeUnicodeNoSurrogates(12))
    else:
        payload = {
            "event": fdp.ConsumeUnicodeNoSurrogates(20),
            "timestamp": fdp.PickValueInList(["2026-01-30T15:45:00Z", "", "yesterday", 0]),
            "data": {"id": fdp.ConsumeUnicodeNoSurrogates(12)},
        }
        body = original = json.dumps(payload, ensure_ascii=fdp.ConsumeBool()).encode()
    if spaces is not None:  # still the same JSON, maybe pushed to or over the limit
        count = 1 if spaces == 1 else LIMIT - len(body) + (spaces == "over")
        body += b" " * max(0, count)
    return original, body


def _signature(
    fdp: DataProvider, mode: str, original: bytes, body: bytes, raw: bytes
) -> bytes | None:
    valid = sign(body, SECRET)
    if mode == "valid":
        return valid.encode()
    if mode == "missing":
        return None
    if mode == "stale":
        return sign(original, SECRET).encode()
    if mode == "wrong secret":
        return sign(body, fdp.PickValueInList(["guess", SECRET + "x", SECRET.upper()])).encode()
    if mode == "mutated":
        at = fdp.ConsumeIntInRange(0, len(valid))
        what = fdp.PickValueInList(["cut", "flip", "extend", "prefix"])
        if what == "cut":
            return valid[:at].encode()
        if what == "flip":
            at = min(at, len(valid) - 1)
            other = raw[:1] or b"0"
            return (
                valid[:at].encode()
                + (b"1" if other == valid[at].encode() else other)
                + (valid[at + 1 :].encode())
            )
        if what == "extend":
            return valid.encode() + raw
        prefix = fdp.PickValueInList(["sha1=", "SHA256=", "sha256:", "", "sha256=sha256="])
        return (prefix + valid[7:]).encode()
    if mode == "upper":
        return valid.upper().encode()
    if mode == "spaced":
        before = fdp.PickValueInList([" ", "\t", ""])
        return (before + valid + fdp.PickValueInList([" ", ""])).encode()
    if mode == "rotation":
        parts = [valid.encode(), sign(body, "old-secret").encode(), b"sha256=" + b"0" * 64, raw]
        start = fdp.ConsumeIntInRange(0, 3)
        parts = (parts[start:] + parts[:start])[: fdp.ConsumeIntInRange(1, 4)]
        return fdp.PickValueInList([b",", b", ", b" , "]).join(parts)
    return raw


def decode(data: bytes) -> fz.Request:
    """The request that libFuzzer's ``data`` stands for."""
    fdp: DataProvider = atheris.FuzzedDataProvider(data)
    method = "POST" if fdp.ConsumeIntInRange(0, 19) < 14 else fdp.PickValueInList(fz.OTHER_METHODS)
    path_slash = fdp.ConsumeBool()
    chunked = fdp.ConsumeBool()
    headers: dict[str, bytes] = {}
    content_type = fdp.PickValueInList(fz.CONTENT_TYPES)
    if content_type is not None:
        headers["Content-Type"] = content_type.encode()
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        letters = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16))
        name = "".join(fz.TOKEN[byte % len(fz.TOKEN)] for byte in letters)
        if name and fz.extra_name_allowed(name):
            headers[name] = _header_bytes(fdp, 80)
    mode = fdp.PickValueInList(SIGNATURE_MODES)
    name = fdp.PickValueInList([fz.SIGNATURE, fz.SIGNATURE.lower(), fz.SIGNATURE.upper()])
    raw = _header_bytes(fdp, 80)
    original, body = _body(fdp)
    signature = _signature(fdp, mode, original, body, raw)
    if signature is not None:
        headers[name] = signature
    return fz.Request(method, path_slash, body, headers, chunked)


# -- adapters ------------------------------------------------------------------------------------


def adapter(name: str, stack: ExitStack) -> tuple[fz.Ledger, fz.Send]:
    """The ledger and ``send`` for one adapter; ``stack`` tears it (and a test database) down."""
    stack.enter_context(fz.quiet())
    if name in ("flask", "starlette", "fastapi"):
        receiver = stack.enter_context(fz.make_receiver())
        if name == "flask":
            send = stack.enter_context(fz.flask_send(receiver))
        else:
            send = stack.enter_context(fz.asgi_send(name, receiver))
        return fz.Ledger(receiver.store), send
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_settings")
    import django

    with atheris.instrument_imports(include=["aerostic_webhooks"]):
        django.setup()
        importlib.import_module("tests.django_urls")  # the views, under instrumentation
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment, teardown_test_environment

    setup_test_environment()
    stack.callback(teardown_test_environment)
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    stack.callback(connection.creation.destroy_test_db, old_name, verbosity=0)
    own = fz.make_receiver() if name == "django-memory" else None
    receiver = stack.enter_context(fz.django_receiver(own))
    assert receiver.max_body_bytes == LIMIT
    return fz.Ledger(receiver.store), fz.django_send(Client(enforce_csrf_checks=True))


# -- entry point ---------------------------------------------------------------------------------


def _runs(argv: list[str]) -> int | None:
    for arg in argv:
        if arg.startswith("-runs="):
            return int(arg.split("=", 1)[1])
    return None


def seed_corpus(argv: list[str]) -> None:
    """Fill the first corpus directory, when missing or empty, with random inputs of a few
    hundred bytes: libFuzzer's own start (the empty input, growing a few bytes at a time) would
    spend its first thousands of runs on requests too short to reach a valid delivery."""
    directories = [arg for arg in argv[1:] if not arg.startswith("-")]
    if not directories or os.path.isfile(directories[0]):
        return
    os.makedirs(directories[0], exist_ok=True)
    if os.listdir(directories[0]):
        return
    rng = random.Random(SEEDS)
    for number in range(SEEDS):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(16, 600)))
        with open(os.path.join(directories[0], f"seed-{number:03}"), "wb") as seed:
            seed.write(data)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in ADAPTERS:
        sys.exit(f"usage: python -m tests.fuzz_atheris {{{','.join(ADAPTERS)}}} [libFuzzer args]")
    name = argv.pop(1)
    if not any(arg.startswith("-max_len=") for arg in argv):
        argv.insert(1, "-max_len=16384")
    last = _runs(argv)
    seed_corpus(argv)
    # libFuzzer ends the process itself (after -runs, or on a failure): nothing after Fuzz()
    # runs, so the last execution does the final check and tears the adapter down.
    stack = ExitStack()
    ledger, send = adapter(name, stack)
    count = 0

    def test_one_input(data: bytes) -> None:
        nonlocal count
        count += 1
        request = decode(data)
        try:
            fz.run(ledger, send, request)
        except BaseException:
            print(f"failing request: {request!r}", file=sys.stderr, flush=True)
            raise
        if count % CHECK_EVERY == 0 or count == last:
            ledger.final()
            print(f"{name}: {count} executions checked, then the whole store", flush=True)
        if count == last:
            stack.close()

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
