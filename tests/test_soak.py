"""A soak test on real servers: deliveries with duplicates and forgeries while the worker
process is SIGKILLed and restarted twice; afterwards each valid event was handled, none twice
once done, and no forged delivery was recorded.

For each adapter (the Flask example under gunicorn, the FastAPI example under uvicorn) a web
process serves the example's ``create_app(receiver)`` around a receiver with
``process="external"`` and a SQLite inbox: it only records. A separate
``python -m aerostic_webhooks worker`` process handles the inbox (lease 1 s, 4 handler
threads); its ``"*"`` handler sleeps 5 ms and appends ``pid event_id`` to a counter file,
outside the store under test. A few client threads deliver N events (400 here;
``AEROSTIC_SOAK_DELIVERIES=10000`` for a long run): 10% are redeliveries of earlier events,
5% are forged (signed with a wrong secret, each with a data id of its own). At about 1/3 and
2/3 of the run the worker is SIGKILLed and a new one started. Then the last worker runs until
the inbox has nothing pending or processing, and is stopped with SIGTERM.

At-least-once delivery allows one repeat only: a killed worker may have run a handler (and
written its line) without completing the record. So an event may be handled again by a later
worker only if its earlier runs were all by killed workers, and never once it was done (the
done records are listed just before each kill).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aerostic_webhooks import SQLiteStore, sign
from aerostic_webhooks.stores.base import Status
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body

from . import servers as server_helpers

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_soak_test"
FORGED_SECRET = "whsec_guessed"
URL = "/webhooks/aerostic"
DELIVERIES = int(os.environ.get("AEROSTIC_SOAK_DELIVERIES") or 400)
CLIENTS = 4
DUPLICATES = 0.10
FORGED = 0.05
KILLS = 2

# The web process: the example's create_app() around a receiver that only records.
WEB_APP = """
import sys
sys.path.insert(0, {examples!r})
import {module}
from aerostic_webhooks import SQLiteStore, WebhookReceiver

receiver = WebhookReceiver(process="external", store=SQLiteStore({inbox!r}))
app = {module}.create_app(receiver)
"""

# The worker process: `python -m aerostic_webhooks worker --app worker_app:receiver`.
WORKER_APP = """
import os
import time
from aerostic_webhooks import SQLiteStore, WebhookReceiver
from aerostic_webhooks.receiver import current_event_id

receiver = WebhookReceiver(store=SQLiteStore({inbox!r}), lease_seconds=1, concurrency=4)
counter = os.open({counter!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@receiver.on("*")
def count(event):
    time.sleep(0.005)
    os.write(counter, f"{{os.getpid()}} {{current_event_id()}}\\n".encode())
"""


def gunicorn_command(directory: Path, port: int) -> list[str]:
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent))
    if gunicorn is None:
        pytest.skip("gunicorn is not installed: pip install -e '.[test]'")
    command = [gunicorn, "--chdir", str(directory), "-w", "2", "-k", "gthread"]
    return [*command, "--threads", "4", "-b", f"127.0.0.1:{port}", "web_app:app"]


def uvicorn_command(directory: Path, port: int) -> list[str]:
    pytest.importorskip("fastapi", reason="FastAPI is not installed: pip install -e '.[fastapi]'")
    pytest.importorskip("uvicorn", reason="uvicorn is not installed: pip install -e '.[test]'")
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(directory), "web_app:app"]
    return [*command, "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]


ADAPTERS: dict[str, tuple[str, Callable[[Path, int], list[str]]]] = {
    "flask-gunicorn": ("flask_app", gunicorn_command),
    "fastapi-uvicorn": ("fastapi_app", uvicorn_command),
}


@dataclasses.dataclass(frozen=True)
class Delivery:
    event_id: str
    body: bytes
    forged: bool


def plan(count: int, seed: int = 20261127) -> list[Delivery]:
    """``count`` deliveries: new events, redeliveries of earlier ones, forged ones."""
    rng = random.Random(seed)
    types = list(SAMPLE_PAYLOADS)
    deliveries: list[Delivery] = []
    valid: list[Delivery] = []
    for n in range(count):
        event_type = types[n % len(types)]
        roll = rng.random()
        if roll < FORGED:
            data_id = f"forged-{n}"
            body = sample_body(event_type, id=data_id)
            deliveries.append(Delivery(f"{event_type}:{data_id}", body, forged=True))
        elif roll < FORGED + DUPLICATES and valid:
            deliveries.append(rng.choice(valid))
        else:
            data_id = f"evt-{n}"
            delivery = Delivery(
                f"{event_type}:{data_id}", sample_body(event_type, id=data_id), False
            )
            valid.append(delivery)
            deliveries.append(delivery)
    return deliveries


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclasses.dataclass
class Soak:
    directory: Path
    inbox: Path
    counter: Path
    env: dict[str, str]
    port: int
    workers: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = self.directory / f"worker-{len(self.workers)}.log"
        command = [sys.executable, "-m", "aerostic_webhooks", "worker"]
        with log.open("wb") as output:
            process = subprocess.Popen(
                [*command, "--app", "worker_app:receiver"],
                env=self.env,
                cwd=self.directory,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.workers.append(process)
        return process

    def worker_logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')}"
            for log in sorted(self.directory.glob("worker-*.log"))
        )

    def wait_for_work(self, worker: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(pid == worker.pid for pid, _ in self.lines()):
            assert worker.poll() is None, self.worker_logs()
            assert time.monotonic() < deadline, self.worker_logs()
            time.sleep(0.01)

    def lines(self) -> list[tuple[int, str]]:
        if not self.counter.exists():
            return []
        return [
            (int(pid), event_id)
            for pid, event_id in (
                line.split(" ", 1) for line in self.counter.read_text().splitlines()
            )
        ]


@pytest.fixture(params=list(ADAPTERS))
def soak(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Soak]:
    module, command_for = ADAPTERS[request.param]
    inbox = tmp_path / "inbox.sqlite3"
    counter = tmp_path / "handled.txt"
    port = server_helpers.free_port()
    command = command_for(tmp_path, port)
    (tmp_path / "web_app.py").write_text(
        WEB_APP.format(examples=str(ROOT / "examples"), module=module, inbox=str(inbox))
    )
    (tmp_path / "worker_app.py").write_text(
        WORKER_APP.format(inbox=str(inbox), counter=str(counter))
    )
    env = {
        **os.environ,
        "AEROSTIC_WEBHOOK_SECRET": SECRET,
        # The examples' own module-level receivers open this one; ours use `inbox`.
        "AEROSTIC_WEBHOOKS_DB": str(tmp_path / "unused.sqlite3"),
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "web.log"
    with log.open("wb") as output:
        web = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT
        )
    state = Soak(tmp_path, inbox, counter, env, port)
    try:
        server_helpers.wait_until_serving(port, web, URL, status=405, log=log.read_text)
        yield state
    finally:
        for worker in state.workers:
            stop(worker)
        stop(web)


def deliver(port: int, delivery: Delivery) -> int:
    key = FORGED_SECRET if delivery.forged else SECRET
    headers = {"X-Aerostic-Signature": sign(delivery.body, key), "Content-Type": "application/json"}
    status, _, _ = server_helpers.post(port, URL, delivery.body, headers, timeout=30)
    return status


def test_soak_with_duplicates_forgeries_and_a_worker_killed_twice(soak: Soak) -> None:
    started = time.monotonic()
    deliveries = plan(DELIVERIES)
    valid_ids = {d.event_id for d in deliveries if not d.forged}
    forged_ids = {d.event_id for d in deliveries if d.forged}
    assert len(valid_ids) + len(forged_ids) < len(deliveries), "the plan has no duplicates"

    store = SQLiteStore(soak.inbox)
    try:
        worker = soak.start_worker()
        answered = 0
        lock = threading.Lock()
        wrong: list[tuple[str, bool, int]] = []

        def run(delivery: Delivery) -> None:
            nonlocal answered
            status = deliver(soak.port, delivery)
            with lock:
                answered += 1
                if status != (401 if delivery.forged else 200):
                    wrong.append((delivery.event_id, delivery.forged, status))

        killed: list[int] = []
        done_before_kill: list[set[str]] = []  # per kill: done records just before it
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            futures = [pool.submit(run, delivery) for delivery in deliveries]
            for kill in range(1, KILLS + 1):
                while True:
                    with lock:
                        progress = answered
                    if progress >= kill * len(deliveries) // (KILLS + 1):
                        break
                    time.sleep(0.005)
                # Kill a worker at work: one that has handled something already.
                soak.wait_for_work(worker)
                done = store.list(status=Status.DONE, limit=len(deliveries) + 1)
                done_before_kill.append({record.event_id for record in done})
                assert worker.poll() is None, soak.worker_logs()
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
                killed.append(worker.pid)
                worker = soak.start_worker()
            for future in futures:
                future.result()
        assert not wrong, wrong[:20]

        # The last worker runs until nothing is pending or processing (a killed worker's
        # records come back once their 1 s lease ends).
        deadline = time.monotonic() + 60
        while True:
            counts = store.counts()
            if counts[Status.PENDING] == counts[Status.PROCESSING] == 0:
                break
            assert time.monotonic() < deadline, (counts, soak.worker_logs())
            assert worker.poll() is None, soak.worker_logs()
            time.sleep(0.1)
        assert stop(worker) == 0, soak.worker_logs()
        counts = store.counts()
        assert counts[Status.FAILED] == 0, counts
        assert counts[Status.DONE] == len(valid_ids), counts

        for event_id in forged_ids:  # forged deliveries never recorded
            assert store.get(event_id) is None, event_id
        for event_id in valid_ids:
            record = store.get(event_id)
            assert record is not None, event_id
            assert record.status is Status.DONE, record
    finally:
        store.close()

    lines = soak.lines()
    handled = collections.Counter(event_id for _, event_id in lines)
    assert set(handled) == valid_ids, (
        f"missing {sorted(valid_ids - set(handled))[:10]}, "
        f"unexpected {sorted(set(handled) - valid_ids)[:10]}"
    )

    # Handled twice only after a kill: every run but the last by a killed worker, each worker
    # at most once per event.
    runs: dict[str, list[int]] = collections.defaultdict(list)
    for pid, event_id in lines:
        runs[event_id].append(pid)
    worker_pids = [w.pid for w in soak.workers]
    for event_id, pids in runs.items():
        assert len(pids) == len(set(pids)), (event_id, pids)
        assert all(pid in killed for pid in pids[:-1]), (event_id, pids, killed)
        assert all(pid in worker_pids for pid in pids), (event_id, pids)

    # Never handled again once done: nothing done before kill k runs on a later worker.
    for kill, done in enumerate(done_before_kill):
        later = set(worker_pids[kill + 1 :])
        again = [(pid, e) for pid, e in lines if e in done and pid in later]
        assert not again, again[:10]

    by_killed = sum(1 for pid, _ in lines if pid in killed)
    assert by_killed, "the killed workers handled nothing"
    repeats = sum(n - 1 for n in handled.values())
    elapsed = time.monotonic() - started
    print(
        f"{len(deliveries)} deliveries, {len(valid_ids)} events, {by_killed} runs by killed "
        f"workers, {repeats} repeats, {elapsed:.1f} s"
    )
