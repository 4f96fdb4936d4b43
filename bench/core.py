"""Microbenchmark of the request path: ``WebhookReceiver.receive`` against a floor and two peers.

Run from the repository root (see ``bench/README.md``)::

    python bench/core.py              # full run, a few minutes at most
    python bench/core.py --quick      # smoke run, a few seconds

Every row is timed as ``number`` calls over pre-built ``(body, headers)`` pairs, one
``perf_counter_ns`` pair around the whole batch. Rows are interleaved: each repeat runs
every row once (in a rotated order) before the next repeat starts, so machine noise hits
all rows alike. Best (min) and median of the per-call times over the repeats are printed.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import gc
import hashlib
import hmac
import importlib
import importlib.metadata
import io
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import pydantic
import pydantic_core
from _env import print_machine, print_run, version_of

from aerostic_webhooks import MemoryStore, WebhookReceiver, parse_event, verify_signature
from aerostic_webhooks.signature import SIGNATURE_HEADER
from aerostic_webhooks.stores.base import Status
from aerostic_webhooks.testing import sample_body, signed_request

# Fixed, made-up secrets: the benchmark needs reproducible inputs, not secrecy.
SECRET = "whsec_aerostic_bench_0123456789abcdef"
KEY = SECRET.encode()
STRIPE_SECRET = "whsec_stripe_bench_0123456789abcdef"
SLACK_SECRET = "slack_bench_signing_secret_0123456789"
STRIPE_TOLERANCE = 300
STANDARD_KEY = bytes(range(32))
STANDARD_SECRET = "whsec_" + base64.b64encode(STANDARD_KEY).decode()
PREFIX = "sha256="
EVENT_TYPE = "message.received"

#: Target: receive() costs at most this many times the floor.
FLOOR_TARGET = 2.0

#: One unit of the ~10 KB message text: mostly ASCII, some Devanagari and an emoji (UTF-8).
_TEXT_UNIT = "Hi, I need help with my order #12345, it has not arrived yet. नमस्ते \U0001f44b "

Call = Callable[[Any, Any], object]
Pairs = list[tuple[Any, Any]]


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """``number`` distinct signed deliveries of one body size, plus one for warming up."""

    name: str
    bodies: list[bytes]
    headers: list[dict[str, str]]
    warmup_body: bytes
    warmup_headers: dict[str, str]

    @property
    def pairs(self) -> Pairs:
        return list(zip(self.bodies, self.headers, strict=True))

    @property
    def body_bytes(self) -> int:
        return len(self.bodies[0])


def _body(size: str, data_id: str) -> bytes:
    if size == "small":
        return sample_body(EVENT_TYPE, id=data_id)
    if size == "10k":
        base = len(sample_body(EVENT_TYPE, id=data_id, text=""))
        unit = len(_TEXT_UNIT.encode())
        text = _TEXT_UNIT * ((10_240 - base) // unit + 1)
        return sample_body(EVENT_TYPE, id=data_id, text=text)
    raise ValueError(f"unknown size {size!r}")


def build_workload(size: str, number: int) -> Workload:
    """Distinct ``data.id`` per body, so that no ``receive`` is short-circuited as a duplicate."""
    bodies: list[bytes] = []
    headers: list[dict[str, str]] = []
    for i in range(number):
        body, signed = signed_request(_body(size, f"msg_bench_{i:08d}"), SECRET)
        bodies.append(body)
        headers.append(signed)
    warmup_body, warmup_headers = signed_request(_body(size, "msg_bench_warmup"), SECRET)
    return Workload(size, bodies, headers, warmup_body, warmup_headers)


# -- the calls being timed ------------------------------------------------------------------


def noop(body: bytes, headers: dict[str, str]) -> object:
    """Loop and call overhead, included in every other row."""
    return None


def floor_hexdigest(body: bytes, headers: dict[str, str]) -> object:
    """The minimum: HMAC-SHA256 of the raw body, constant-time compare, json.loads."""
    expected = PREFIX + hmac.new(KEY, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, headers[SIGNATURE_HEADER]):
        raise ValueError("bad signature")
    return json.loads(body)


def floor_digest(body: bytes, headers: dict[str, str]) -> object:
    """The same minimum with the one-shot ``hmac.digest`` and a bytes compare."""
    value = headers[SIGNATURE_HEADER]
    if not (
        value.startswith(PREFIX)
        and hmac.compare_digest(hmac.digest(KEY, body, "sha256"), bytes.fromhex(value[7:]))
    ):
        raise ValueError("bad signature")
    return json.loads(body)


def ours_pieces(body: bytes, headers: dict[str, str]) -> object:
    verify_signature(body, headers[SIGNATURE_HEADER], SECRET)
    return parse_event(body)


def ours_verify(body: bytes, headers: dict[str, str]) -> object:
    verify_signature(body, headers[SIGNATURE_HEADER], SECRET)
    return None


def ours_parse(body: bytes, headers: dict[str, str]) -> object:
    return parse_event(body)


def optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def stripe_header(body: bytes, timestamp: int) -> str:
    """``Stripe-Signature`` as stripe builds it: ``t=<ts>,v1=<hex HMAC of "<ts>.<payload>">``."""
    signed = f"{timestamp}.".encode() + body  # == f"{t}.{payload}".encode() for a UTF-8 body
    digest = hmac.new(STRIPE_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def standard_headers(body: bytes, msg_id: str, timestamp: int) -> dict[str, str]:
    """Standard Webhooks headers: base64 HMAC of ``"<id>.<ts>.<payload>"`` under the raw key."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.digest(STANDARD_KEY, signed, "sha256")).decode()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
        "Content-Type": "application/json",
    }


# -- rows -----------------------------------------------------------------------------------


@dataclass
class Batch:
    """One prepared batch: ``call(a, b)`` for each pair, then the untimed ``after`` (checks)."""

    call: Call
    pairs: Pairs
    after: Callable[[], None] | None = None
    #: Timed work after the loop (``drain`` for the row that counts the worker's work).
    tail: Callable[[], object] | None = None


@dataclass
class Row:
    key: str
    label: str
    prepare: Callable[[], Batch]
    note: str = ""
    per_call_ns: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.per_call_ns)

    @property
    def median(self) -> float:
        return statistics.median(self.per_call_ns)


def run_batch(batch: Batch) -> int:
    """Run one batch; return the elapsed nanoseconds of the timed part."""
    call, pairs, tail = batch.call, batch.pairs, batch.tail
    gc.collect()
    start = time.perf_counter_ns()
    for a, b in pairs:
        call(a, b)
    if tail is not None:
        tail()
    elapsed = time.perf_counter_ns() - start
    if batch.after is not None:
        batch.after()
    return elapsed


def simple(call: Call, pairs: Pairs) -> Callable[[], Batch]:
    return lambda: Batch(call, pairs)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"benchmark self-check failed: {message}")


def receiver_rows(w: Workload) -> list[Row]:
    pairs = w.pairs
    number = len(pairs)

    def fresh(
        process: Literal["background", "inline", "external"] = "background",
    ) -> tuple[WebhookReceiver, MemoryStore]:
        store = MemoryStore()
        receiver = WebhookReceiver(SECRET, store=store, process=process)
        # Outside the timing: the first receive() starts the worker thread.
        check(not receiver.receive(w.warmup_body, w.warmup_headers).duplicate, "warm-up")
        check(receiver.drain(60), "warm-up drain")
        return receiver, store

    def finished(receiver: WebhookReceiver, store: MemoryStore, expected: int) -> None:
        # Untimed: let the worker finish, check it marked everything done, stop its threads.
        check(receiver.drain(120), "drain timed out")
        check(len(store) == expected, f"{len(store)} records kept, {expected} expected")
        done = store.counts()[Status.DONE]
        check(done == expected, f"{done} records done, {expected} expected")
        receiver.close()

    def request_path() -> Batch:
        receiver, store = fresh("external")

        def recorded() -> None:
            pending = store.counts()[Status.PENDING]
            check(pending == number, f"{pending} records pending, {number} expected")
            receiver.close()

        return Batch(receiver.receive, pairs, recorded)

    def new_events() -> Batch:
        receiver, store = fresh()
        return Batch(receiver.receive, pairs, lambda: finished(receiver, store, number + 1))

    def new_events_drained() -> Batch:
        receiver, store = fresh()
        return Batch(
            receiver.receive,
            pairs,
            lambda: finished(receiver, store, number + 1),
            tail=lambda: receiver.drain(120),
        )

    def new_events_inline() -> Batch:
        receiver, store = fresh("inline")
        return Batch(receiver.receive, pairs, lambda: finished(receiver, store, number + 1))

    def duplicates() -> Batch:
        receiver, store = fresh()
        for body, headers in pairs:
            receiver.receive(body, headers)
        check(receiver.drain(120), "drain before duplicates timed out")
        return Batch(receiver.receive, pairs, lambda: finished(receiver, store, number + 1))

    return [
        Row(
            "request",
            "ours: receive(), new event, request path",
            request_path,
            'process="external": verify, parse, dedupe, record, return; handled elsewhere',
        ),
        Row(
            "receive",
            "ours: receive(), new event, worker live",
            new_events,
            "worker thread live: its claim/parse/complete competes for the GIL during the loop",
        ),
        Row(
            "receive+drain",
            "ours: receive(), new event, + drain()",
            new_events_drained,
            "all the worker's work for these events counted (no handlers: marked done)",
        ),
        Row(
            "inline",
            "ours: receive(), new event, inline",
            new_events_inline,
            'process="inline", no handlers: record, complete; no worker thread',
        ),
        Row(
            "duplicate",
            "ours: receive(), duplicate",
            duplicates,
            "same body again: store.add False",
        ),
    ]


def peer_rows(w: Workload, skipped: list[str]) -> list[Row]:
    rows: list[Row] = []
    stripe = optional_module("stripe")
    if stripe is None:
        skipped.append("stripe: not installed (pip install stripe); row skipped")
    else:
        verify_header = stripe.WebhookSignature.verify_header

        def stripe_call(payload: bytes, header: str) -> object:
            verify_header(payload, header, STRIPE_SECRET, STRIPE_TOLERANCE)
            return json.loads(payload)

        def stripe_batch() -> Batch:
            # Fresh timestamps each repeat, well inside the 300 s tolerance.
            now = int(time.time())
            return Batch(stripe_call, [(body, stripe_header(body, now)) for body in w.bodies])

        # Our header must be the one stripe's own helper builds, and must verify.
        now = int(time.time())
        body = w.bodies[0]
        generated = stripe.WebhookSignature.generate_signature_header(
            body.decode(), STRIPE_SECRET, timestamp=now
        )
        check(generated == stripe_header(body, now), "stripe header differs from stripe's own")
        check(stripe_call(body, generated) == json.loads(body), "stripe row")
        rows.append(
            Row(
                "stripe",
                "stripe: verify_header + json.loads",
                stripe_batch,
                "decodes body to str, re-encodes it for HMAC, checks the timestamp",
            )
        )

    standard = optional_module("standardwebhooks")
    if standard is None:
        skipped.append(
            "standardwebhooks: not installed (pip install standardwebhooks); row skipped"
        )
    else:
        webhook = standard.Webhook(STANDARD_SECRET)  # built once, as an application would

        def standard_batch() -> Batch:
            now = int(time.time())
            return Batch(
                webhook.verify,
                [
                    (body, standard_headers(body, f"msg_{i:08d}", now))
                    for i, body in enumerate(w.bodies)
                ],
            )

        body = w.bodies[0]
        parsed = webhook.verify(body, standard_headers(body, "msg_check", int(time.time())))
        check(parsed == json.loads(body), "standardwebhooks row (verify returns the parsed JSON)")
        rows.append(
            Row(
                "standardwebhooks",
                "standardwebhooks: Webhook.verify",
                standard_batch,
                "verify() json.loads the body itself (json_parse=True, the default)",
            )
        )
    rows.extend(svix_rows(w, skipped))
    rows.extend(slack_rows(w, skipped))
    return rows


def svix_rows(w: Workload, skipped: list[str]) -> list[Row]:
    """svix's verifier: the Standard Webhooks scheme under ``svix-*`` header names."""
    webhooks = optional_module("svix.webhooks")
    if webhooks is None:
        skipped.append("svix: not installed (pip install svix); row skipped")
        return []
    webhook = webhooks.Webhook(STANDARD_SECRET)  # built once, as an application would

    def headers(body: bytes, msg_id: str, timestamp: int) -> dict[str, str]:
        standard = standard_headers(body, msg_id, timestamp)
        return {name.replace("webhook-", "svix-"): value for name, value in standard.items()}

    def call(body: bytes, request_headers: dict[str, str]) -> object:
        webhook.verify(body, request_headers)  # raises if it does not verify; returns None
        return json.loads(body)

    def batch() -> Batch:
        now = int(time.time())
        return Batch(
            call, [(body, headers(body, f"msg_{i:08d}", now)) for i, body in enumerate(w.bodies)]
        )

    body = w.bodies[0]
    check(call(body, headers(body, "msg_check", int(time.time()))) == json.loads(body), "svix")
    return [
        Row(
            "svix",
            "svix: Webhook.verify + json.loads",
            batch,
            "svix 2.x verify() checks only (Standard Webhooks' verify with json_parse=False)",
        )
    ]


def slack_rows(w: Workload, skipped: list[str]) -> list[Row]:
    """slack-sdk's verifier (``v0=`` hex HMAC of ``"v0:<ts>:<body>"``), then ``json.loads``."""
    signature = optional_module("slack_sdk.signature")
    if signature is None:
        skipped.append("slack-sdk: not installed (pip install slack-sdk); row skipped")
        return []
    verifier = signature.SignatureVerifier(SLACK_SECRET)

    def headers(body: bytes, timestamp: int) -> dict[str, str]:
        signed = f"v0:{timestamp}:".encode() + body
        digest = hmac.new(SLACK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}"}

    def call(body: bytes, request_headers: dict[str, str]) -> object:
        if not verifier.is_valid_request(body, request_headers):
            raise ValueError("slack signature does not verify")
        return json.loads(body)

    def batch() -> Batch:
        now = int(time.time())
        return Batch(call, [(body, headers(body, now)) for body in w.bodies])

    body = w.bodies[0]
    check(call(body, headers(body, int(time.time()))) == json.loads(body), "slack-sdk row")
    return [
        Row(
            "slack",
            "slack-sdk: SignatureVerifier.is_valid_request + json.loads",
            batch,
            "is_valid_request() lower-cases the headers, checks the timestamp, hex HMAC",
        )
    ]


def all_rows(w: Workload, skipped: list[str]) -> list[Row]:
    pairs = w.pairs
    # Self-checks of the plain rows on one real input before anything is timed.
    body, headers = pairs[0]
    for call in (floor_hexdigest, floor_digest, ours_parse):
        check(call(body, headers) is not None, f"{call.__name__}")
    check(ours_pieces(body, headers) == parse_event(body), "pieces")
    return [
        Row("noop", "loop + call overhead (no-op)", simple(noop, pairs), "included in every row"),
        Row(
            "floor-hex",
            "floor: hmac.new().hexdigest + compare + json.loads",
            simple(floor_hexdigest, pairs),
        ),
        Row(
            "floor-digest",
            "floor: hmac.digest + compare + json.loads",
            simple(floor_digest, pairs),
        ),
        Row("verify", "ours: verify_signature", simple(ours_verify, pairs)),
        Row("parse", "ours: parse_event", simple(ours_parse, pairs)),
        Row("pieces", "ours: verify_signature + parse_event", simple(ours_pieces, pairs)),
        *receiver_rows(w),
        *peer_rows(w, skipped),
    ]


# -- running and reporting ------------------------------------------------------------------


def measure(rows: Sequence[Row], number: int, repeat: int, warmup: bool) -> None:
    if warmup:
        for row in rows:
            run_batch(row.prepare())
    for r in range(repeat):
        start = r % len(rows)
        for row in [*rows[start:], *rows[:start]]:
            batch = row.prepare()
            row.per_call_ns.append(run_batch(batch) / number)


def us(ns: float) -> str:
    return f"{ns / 1000:8.2f}"


def floor_of(by_key: dict[str, Row]) -> tuple[float, float]:
    """Best and median of the floor: the faster of the two floor rows, statistic by statistic."""
    floors = [by_key["floor-hex"], by_key["floor-digest"]]
    return min(f.best for f in floors), min(f.median for f in floors)


def print_table(w: Workload, rows: Sequence[Row], number: int, repeat: int) -> dict[str, Row]:
    by_key = {row.key: row for row in rows}
    floor_best, _ = floor_of(by_key)
    receive = by_key["receive"]
    print()
    print(
        f"== body {w.name}: {w.body_bytes} bytes, {number} calls x {repeat} repeats, "
        "microseconds per call =="
    )
    width = max(len(row.label) for row in rows)
    print(f"{'row':<{width}}  {'best':>8}  {'median':>8}  {'x floor':>7}  {'x receive':>9}")
    for row in rows:
        print(
            f"{row.label:<{width}}  {us(row.best)}  {us(row.median)}  "
            f"{row.best / floor_best:7.2f}  {row.best / receive.best:9.2f}"
        )
    print("(x floor, x receive: ratios of best times; floor = the faster floor row)")
    for row in rows:
        if row.note:
            print(f"  {row.key}: {row.note}")
    return by_key


def verdicts(w: Workload, by_key: dict[str, Row]) -> list[bool]:
    # The targets are about what receive() does before it answers (verify, type, dedupe,
    # enqueue): the request-path row. The worker's share shows in the rows beside it.
    receive = by_key["request"]
    floor_best, floor_median = floor_of(by_key)
    results: list[bool] = []
    print(f"-- targets, body {w.name} (verdict on best; median ratio for reference)")
    ratio_best = receive.best / floor_best
    ratio_median = receive.median / floor_median
    ok = ratio_best <= FLOOR_TARGET
    results.append(ok)
    print(
        f"   {'receive() / floor':<30}best {ratio_best:5.2f}x  median {ratio_median:5.2f}x  "
        f"target <= {FLOOR_TARGET:.1f}x  {'PASS' if ok else 'FAIL'}"
    )
    for key in ("svix", "slack"):
        peer = by_key.get(key)
        if peer is not None:
            print(
                f"   {key + ' / receive()':<30}best {peer.best / receive.best:5.2f}x  median "
                f"{peer.median / receive.median:5.2f}x  (for reference: verify + parse only)"
            )
    for key in ("stripe", "standardwebhooks"):
        peer = by_key.get(key)
        if peer is None:
            print(f"   {key + ' / receive()':<30}SKIPPED (not installed)")
            continue
        ratio_best = peer.best / receive.best
        ratio_median = peer.median / receive.median
        ok = ratio_best > 1.0
        results.append(ok)
        print(
            f"   {key + ' / receive()':<30}best {ratio_best:5.2f}x  median {ratio_median:5.2f}x  "
            f"target >  1.0x  {'PASS' if ok else 'FAIL'}"
        )
    return results


def print_environment(args: argparse.Namespace) -> None:
    print_run()
    print(f"pydantic:    {pydantic.VERSION} (pydantic-core {pydantic_core.__version__})")
    print(f"stripe:      {version_of('stripe')}")
    print(f"standardwh:  {version_of('standardwebhooks')}")
    print(f"svix:        {version_of('svix')}")
    print(f"slack-sdk:   {version_of('slack-sdk')}")
    print_machine()
    print(f"settings:    number={args.number} repeat={args.repeat} sizes={','.join(args.sizes)}")
    print("timer:       time.perf_counter_ns around each batch; gc enabled, collected before")


def profile_receive(number: int) -> None:
    """cProfile of ``receive()`` on new events (main thread only; the worker runs unprofiled)."""
    w = build_workload("small", number)
    store = MemoryStore()
    receiver = WebhookReceiver(SECRET, store=store)
    receiver.receive(w.warmup_body, w.warmup_headers)
    receiver.drain(60)
    profiler = cProfile.Profile()
    receive = receiver.receive
    pairs = w.pairs
    profiler.enable()
    for body, headers in pairs:
        receive(body, headers)
    profiler.disable()
    receiver.drain(120)
    receiver.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    print()
    print(f"== cProfile of {number} receive() calls (small body, main thread), by tottime ==")
    print(out.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=None, help="calls per batch (5000)")
    parser.add_argument("--repeat", type=int, default=None, help="repeats per row (7)")
    parser.add_argument("--quick", action="store_true", help="smoke run: --number 300 --repeat 3")
    parser.add_argument(
        "--sizes",
        type=lambda text: [part for part in text.split(",") if part],
        default=["small", "10k"],
        help="comma-separated body sizes: small (the documented sample), 10k (default: both)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up pass")
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile of receive() (main thread)"
    )
    args = parser.parse_args(argv)
    if args.number is None:
        args.number = 300 if args.quick else 5000
    if args.repeat is None:
        args.repeat = 3 if args.quick else 7
    if args.number < 1 or args.repeat < 1:
        parser.error("--number and --repeat must be positive")
    for size in args.sizes:
        if size not in ("small", "10k"):
            parser.error(f"unknown size {size!r}: use small, 10k")

    print_environment(args)
    skipped: list[str] = []
    results: list[bool] = []
    for size in args.sizes:
        workload = build_workload(size, args.number)
        rows = all_rows(workload, skipped)
        measure(rows, args.number, args.repeat, warmup=not args.no_warmup)
        by_key = print_table(workload, rows, args.number, args.repeat)
        results.extend(verdicts(workload, by_key))
    for message in dict.fromkeys(skipped):
        print(f"skipped: {message}")
    print()
    print(f"overall: {'PASS' if all(results) else 'FAIL'} ({sum(results)}/{len(results)} targets)")
    if args.profile:
        profile_receive(args.number)
    return 0


if __name__ == "__main__":
    sys.exit(main())
