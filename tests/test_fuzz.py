"""Fuzzing every adapter with mutated requests: the contract holds and nothing invalid is kept.

Each test drives one adapter (Flask's test client and a raw chunked WSGI call; Starlette's and
FastAPI's ``TestClient``, with and without a Content-Length, on a MemoryStore and on SQLite,
where deliveries go through the receiver's intake thread; Django's test ``Client`` on the
app's view at ``/webhooks/aerostic/``, with a MemoryStore receiver and with the app's own
database-backed one) with requests built by hypothesis:

- bodies: the documented sample events (signed), near-limit and over-limit padded samples,
  unknown event types, arbitrary JSON and arbitrary bytes, then byte-flipped, truncated,
  extended, spliced and whitespace-padded mutations of them;
- headers: no ``X-Aerostic-Signature``, a valid one (any spelling of the name, whitespace
  around it, upper-case hex, inside a comma-separated rotation list), a stale one (of the body
  before mutation), a wrong-secret one, a mutated one (flipped, cut, extended), arbitrary and
  non-ASCII text (bytes for the ASGI clients, latin-1 decoded str as a WSGI server gives it),
  odd or missing Content-Type, and unrelated extra headers;
- methods: mostly POST, sometimes GET/PUT/DELETE/PATCH/HEAD/OPTIONS, on both spellings of the
  mount point (Django: its documented one with the slash).

Properties, for every example:

- POST answers exactly the contract: 413 when the body is over ``max_body_bytes``, else 401
  unless the signature verifies, else 400 unless the body parses, else 200; the Content-Type
  is ``application/json`` and the JSON body is the contract's for that status;
- every other method gets 405 (all four adapters register POST only and no automatic OPTIONS
  or HEAD) and records nothing;
- no exception escapes (Flask propagates exceptions, the other test clients raise them);
- nothing invalid is recorded: a 200 means the store holds the event's record, whose body was
  sent with a signature that verifies under the secret and which parses; the store never holds
  more records than distinct accepted events; at the end every record is checked again.

The request model, the checks and the adapters' ``send`` live in ``tests/_fuzzing.py``, shared
with the atheris (libFuzzer) harness ``tests/fuzz_atheris.py``, which checks the same
properties on requests decoded from the fuzzer's bytes (see its docstring; not run by pytest).

The default run is short (CI: 100 examples per adapter, a few seconds in all). The long run,
100000 examples per adapter, one adapter at a time (``-k flask``, ``-k starlette``,
``-k fastapi``, ``-k "django and memory"``, ``-k "django and app"``)::

    AEROSTIC_FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest tests/test_fuzz.py -q -s -k flask

With ``-s`` a long run prints its progress every 1000 requests (count, rate, records) and, at
the end, the tally of answers. Add ``--hypothesis-seed=N`` to repeat a run. Rates and results
of the last long runs: ``bench/README.md``, "Fuzzing".
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import event as tally
from hypothesis import strategies as st

from aerostic_webhooks import SQLiteStore, sign
from aerostic_webhooks.testing import sample_body

from ._fuzzing import (
    CONTENT_TYPES,
    EVENT_TYPES,
    OTHER_METHODS,
    SIGNATURE,
    TOKEN,
    Answer,
    Ledger,
    Request,
    Send,
    asgi_send,
    django_receiver,
    django_send,
    extra_name_allowed,
    flask_send,
    make_receiver,
    padded,
    quiet,
)
from ._fuzzing import run as send_and_check
from .contract import LIMIT, SECRET

_LONG = os.environ.get("AEROSTIC_FUZZ_EXAMPLES")
EXAMPLES = int(_LONG) if _LONG else 100
PROGRESS = 1000  # more than the default run checks: CI prints nothing
STALL_SECONDS = 60  # in a long run, one request (sent and checked) taking longer dumps the
WATCHDOG = sys.__stderr__ if _LONG else None  # stacks to the process's own stderr (fd 2)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    # The autouse conftest fixture only sets an environment variable: sharing it is harmless.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# -- strategies ----------------------------------------------------------------------------------

# Header text: no control characters (no client lets them through), anything else goes.
header_chars = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))
header_text = st.text(header_chars, max_size=80)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
data_ids = st.one_of(
    st.text(max_size=24), st.integers(), st.none(), st.booleans(), st.just(""), json_values
)


@st.composite
def seed_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["sample"] * 5 + ["padded", "unknown", "json", "binary"]))
    event_type = draw(st.sampled_from(EVENT_TYPES))
    if kind == "sample":
        overrides = draw(
            st.dictionaries(st.sampled_from(["id", "from", "to", "text", "status"]), data_ids)
        )
        return sample_body(event_type, **overrides)
    if kind == "padded":
        size = draw(st.one_of(st.integers(LIMIT - 3, LIMIT + 3), st.integers(200, 3 * LIMIT)))
        return padded(event_type, size, draw(st.text(max_size=12)))
    if kind == "unknown":
        payload = {
            "event": draw(st.one_of(st.text(max_size=20), json_values)),
            "timestamp": draw(st.sampled_from(["2026-01-30T15:45:00Z", "", "yesterday", 0])),
            "data": draw(st.one_of(st.dictionaries(st.text(max_size=8), json_values), json_values)),
        }
        return json.dumps(payload, ensure_ascii=draw(st.booleans())).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    return draw(st.binary(max_size=300))


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` after a few byte-level mutations (possibly none)."""
    data = bytearray(body)
    ops = ["flip", "truncate", "extend", "insert", "delete", "spaces", "duplicate"]
    for op in draw(st.lists(st.sampled_from(ops), max_size=3)):
        at = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=20))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "spaces":  # still the same JSON, maybe pushed over the limit
            data += b" " * draw(st.sampled_from([1, LIMIT - len(data), LIMIT + 1 - len(data)]))
        elif op == "duplicate":
            data += bytes(data[at:])
    return bytes(data)


@st.composite
def signatures(draw: st.DrawFn, original: bytes, body: bytes) -> str | bytes | None:
    valid = sign(body, SECRET)
    mode = draw(
        st.sampled_from(
            ["valid"] * 6
            + ["missing"] * 2
            + ["stale", "wrong secret", "mutated", "upper", "spaced", "rotation", "text", "bytes"]
        )
    )
    if mode == "valid":
        return valid
    if mode == "missing":
        return None
    if mode == "stale":
        return sign(original, SECRET)
    if mode == "wrong secret":
        return sign(body, draw(st.sampled_from(["guess", SECRET + "x", SECRET.upper()])))
    if mode == "mutated":
        at = draw(st.integers(0, len(valid)))
        what = draw(st.sampled_from(["cut", "flip", "extend", "prefix"]))
        if what == "cut":
            return valid[:at]
        if what == "flip":
            at = min(at, len(valid) - 1)
            other = draw(header_chars.filter(lambda char: char != valid[at]))
            return valid[:at] + other + valid[at + 1 :]
        if what == "extend":
            return valid + draw(header_text)
        return (
            draw(st.sampled_from(["sha1=", "SHA256=", "sha256:", "", "sha256=sha256="]))
            + (valid[7:])
        )
    if mode == "upper":
        return valid.upper()
    if mode == "spaced":
        return draw(st.sampled_from([" ", "\t", ""])) + valid + draw(st.sampled_from([" ", ""]))
    if mode == "rotation":
        parts = [valid, sign(body, "old-secret"), "sha256=" + "0" * 64, draw(header_text)]
        parts = draw(st.permutations(parts))[: draw(st.integers(1, 4))]
        return draw(st.sampled_from([",", ", ", " , "])).join(parts)
    if mode == "text":
        return draw(header_text)
    # Raw bytes on the wire, not UTF-8 (no control bytes: no client lets them through).
    return bytes(byte for byte in draw(st.binary(max_size=80)) if byte >= 32 and byte != 127)


extra_names = st.text(TOKEN, min_size=1, max_size=16).filter(extra_name_allowed)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    original = draw(seed_bodies())
    body = draw(mutated(original))
    headers: dict[str, bytes] = {}
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type is not None:
        headers["Content-Type"] = content_type.encode()
    extra = draw(st.dictionaries(extra_names, header_text, max_size=3))
    headers.update({name: value.encode() for name, value in extra.items()})
    signature = draw(signatures(original, body))
    if signature is not None:
        name = draw(st.sampled_from([SIGNATURE, SIGNATURE.lower(), SIGNATURE.upper()]))
        headers[name] = signature if isinstance(signature, bytes) else signature.encode()
    method = draw(st.sampled_from(["POST"] * 14 + OTHER_METHODS))
    return Request(method, draw(st.booleans()), body, headers, draw(st.booleans()))


# -- running -------------------------------------------------------------------------------------


def _observe(request: Request, answer: Answer) -> None:
    note(f"request: {request!r}")
    note(f"answer: {answer!r}")
    tally(f"{request.method} {answer.status}")


def fuzz_adapter(ledger: Ledger, send: Send) -> None:
    """Run the hypothesis search against one adapter, then check the whole store once more.

    Long runs report progress on stderr (seen with ``-s``) every ``PROGRESS`` requests checked,
    so that a run stopped early still says exactly how many passed; there, a request that takes
    more than ``STALL_SECONDS`` to send and check dumps every thread's stack (faulthandler).
    """
    start = time.monotonic()

    @FUZZ
    @given(requests())
    def fuzz(request: Request) -> None:
        if not WATCHDOG:
            send_and_check(ledger, send, request, _observe)
        else:  # a request that hangs shows where: every thread's stack, and the run goes on
            faulthandler.dump_traceback_later(STALL_SECONDS, file=WATCHDOG)
            try:
                send_and_check(ledger, send, request, _observe)
            finally:
                faulthandler.cancel_dump_traceback_later()
        checked = ledger.answers.total()
        if checked % PROGRESS == 0:
            elapsed = time.monotonic() - start
            print(
                f"fuzz progress: {checked} requests checked in {elapsed:.0f} s"
                f" ({checked / elapsed:.0f}/s), {len(ledger.accepted)} records",
                file=sys.stderr,
                flush=True,
            )

    fuzz()
    ledger.final()


# -- Flask ---------------------------------------------------------------------------------------


def test_flask() -> None:
    pytest.importorskip("flask")
    with make_receiver() as receiver, quiet(), flask_send(receiver) as send:
        fuzz_adapter(Ledger(receiver.store), send)


# -- Starlette and FastAPI -----------------------------------------------------------------------


# On SQLite the deliveries go through the receiver's intake thread, many per transaction.
@pytest.mark.parametrize("store", ["memory", "sqlite"])
@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_asgi(framework: str, store: str, tmp_path: Path) -> None:
    pytest.importorskip(framework)
    pytest.importorskip("httpx")
    inbox = SQLiteStore(tmp_path / "inbox.sqlite3") if store == "sqlite" else None
    with make_receiver(inbox) as receiver, quiet(), asgi_send(framework, receiver) as send:
        fuzz_adapter(Ledger(receiver.store), send)


# -- Django --------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("store", ["memory", "app"])
def test_django(store: str) -> None:
    pytest.importorskip("django")
    from django.test import Client

    own = make_receiver() if store == "memory" else None
    with django_receiver(own) as receiver, quiet():
        assert receiver.max_body_bytes == LIMIT
        fuzz_adapter(Ledger(receiver.store), django_send(Client(enforce_csrf_checks=True)))
