"""Sign and receive the six sample events of Aerostic's documentation, plus a few bad deliveries.

Run it with ``python examples/demo.py``. It uses the default store (an SQLite inbox, here in a
temporary directory), prints what each delivery was answered and what the handlers saw, and
exits 0 only if everything matched the response contract.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading

from aerostic_webhooks import Event, Receipt, WebhookError, WebhookReceiver, sign
from aerostic_webhooks.response import render
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body

SECRET = "whsec_demo"


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="  (log) %(levelname)s %(message)s")
    inbox = os.path.join(tempfile.mkdtemp(prefix="aerostic-demo-"), "inbox.sqlite3")
    os.environ["AEROSTIC_WEBHOOKS_DB"] = inbox
    handled: list[str] = []
    lock = threading.Lock()
    webhooks = WebhookReceiver(SECRET)  # no store=: the SQLite inbox at $AEROSTIC_WEBHOOKS_DB

    @webhooks.on("*")
    def record(event: Event) -> None:
        with lock:
            handled.append(event.event)

    deliveries: list[tuple[str, bytes, dict[str, str], int]] = []
    for event_type in SAMPLE_PAYLOADS:
        body = sample_body(event_type)
        deliveries.append((event_type, body, {"X-Aerostic-Signature": sign(body, SECRET)}, 200))
    body = sample_body("message.received")
    deliveries += [
        ("duplicate", body, {"X-Aerostic-Signature": sign(body, SECRET)}, 200),
        ("forged", body, {"X-Aerostic-Signature": sign(body, "guessed")}, 401),
        ("unsigned", body, {}, 401),
        ("not JSON", b"{oops", {"X-Aerostic-Signature": sign(b"{oops", SECRET)}, 400),
        ("oversized", b"x" * (webhooks.max_body_bytes + 1), {}, 413),
    ]

    ok = True
    print(f"inbox: {inbox}\n")
    print(f"{'delivery':<20} {'status':>6}  body")
    for name, body, headers, expected in deliveries:
        outcome: Receipt | WebhookError
        try:
            outcome = webhooks.receive(body, headers)
        except WebhookError as error:
            outcome = error
        status, response = render(outcome)
        ok &= status == expected
        mark = "" if status == expected else f"   <- expected {expected}"
        print(f"{name:<20} {status:>6}  {response.decode()}{mark}", flush=True)

    ok &= webhooks.drain(timeout=10)
    webhooks.close()
    expected_handled = sorted(SAMPLE_PAYLOADS)
    ok &= sorted(handled) == expected_handled
    print(f"\nhandled once each: {json.dumps(sorted(handled))}")
    print("demo passed" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
