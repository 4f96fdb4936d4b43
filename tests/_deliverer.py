"""A receiving process for the multi-process tests: delivers events and counts handler runs.

Run as ``python tests/_deliverer.py STORE COUNTER MODE ...``; STORE is ``sqlite:PATH`` or
``redis:URL|PREFIX``. Handler runs are appended to COUNTER (one ``pid event_id`` line each,
written with O_APPEND), outside the store under test.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aerostic_webhooks import Event, WebhookReceiver, sign
from aerostic_webhooks.stores import SQLiteStore, Status, Store
from aerostic_webhooks.testing import sample_body

SECRET = "whsec_processes"


def open_store(spec: str) -> Store:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        return SQLiteStore(where)
    from aerostic_webhooks.stores.redis import RedisStore

    url, _, prefix = where.partition("|")
    return RedisStore(url, prefix=prefix)


def build(args: argparse.Namespace) -> WebhookReceiver:
    webhooks = WebhookReceiver(
        SECRET, store=open_store(args.store), lease_seconds=args.lease, concurrency=4
    )
    counter = os.open(args.counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @webhooks.on("*")
    def count(event: Event) -> None:
        if args.handler_seconds:
            time.sleep(args.handler_seconds)
        os.write(counter, f"{os.getpid()} {event.data.id}\n".encode())

    return webhooks


def deliver_all(args: argparse.Namespace) -> None:
    """Each thread delivers every event ``copies`` times; receipts go to stdout."""
    webhooks = build(args)
    bodies = [sample_body("message.received", id=f"msg_{n}") for n in range(args.events)]
    signed = [(body, {"X-Aerostic-Signature": sign(body, SECRET)}) for body in bodies]
    barrier = threading.Barrier(args.threads)
    acked: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        for _ in range(args.copies):
            for body, headers in signed:
                receipt = webhooks.receive(body, headers)
                with lock:
                    acked.append(receipt.event_id)
                    # A line per acknowledgement, flushed: the parent may SIGKILL us any time.
                    print(receipt.event_id, flush=True)

    threads = [threading.Thread(target=run) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    drained = webhooks.drain(timeout=120)
    webhooks.close()
    sys.exit(0 if drained else 3)


def recover(args: argparse.Namespace) -> None:
    """Start a worker on the store and process what is left, then exit."""
    webhooks = build(args)
    webhooks.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        webhooks.drain(timeout=5)
        counts = webhooks.store.counts()
        if counts[Status.PENDING] == 0 and counts[Status.PROCESSING] == 0:
            break
        time.sleep(0.1)
    webhooks.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("counter")
    parser.add_argument("mode", choices=["deliver", "recover"])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--handler-seconds", type=float, default=0.0)
    args = parser.parse_args()
    deliver_all(args) if args.mode == "deliver" else recover(args)


if __name__ == "__main__":
    main()
