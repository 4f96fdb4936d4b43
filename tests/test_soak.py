"""A soak test on real servers: deliveries with duplicates and forgeries while the worker
process is SIGKILLed and restarted twice; afterwards each valid event was handled, none twice
once done, and no forged delivery was recorded.

For each adapter a web process only records, and a separate worker process handles the inbox:

- ``flask-gunicorn``, ``fastapi-uvicorn``, ``starlette-uvicorn``: the example's
  ``create_app(receiver)`` (gunicorn gthread for Flask, uvicorn for the others) around a
  receiver with ``process="external"`` and a SQLite inbox. The worker is
  ``python -m aerostic_webhooks worker`` (lease 1 s, 4 handler threads); its ``"*"`` handler
  sleeps 5 ms and appends ``pid event_id`` to a counter file, outside the store under test.
- ``django-gunicorn``, ``django-uvicorn``: ``examples/django_project`` through a settings
  module written into the test's directory, with ``AEROSTIC_WEBHOOKS["WORKER"] = "external"``
  and ``"LEASE_SECONDS": 1``:
  the web processes record into the Django ORM store (a SQLite file migrated before the server
  starts), served by gunicorn gthread (``config.wsgi``, the sync view) or uvicorn
  (``config.asgi``, with the URL routed to ``AsyncAerosticWebhookView``). The worker is
  ``manage.py aerostic_webhooks_worker`` (lease 1 s, 4 handler threads), and one more app's
  ``webhook_received`` receiver sleeps 5 ms and appends ``pid event_id`` to the counter file.
  The inbox is read with sqlite3 from the model's table, as an operator would.

A few client threads deliver N events (400 here, the CI run): 10% are redeliveries of earlier
events, 5% are forged (signed with a wrong secret, each with a data id of its own). At about
1/3 and 2/3 of the run the worker is SIGKILLed and a new one started. Then the last worker runs
until the inbox has nothing pending or processing (a killed worker's records come back once its
lease ends), and is stopped with SIGTERM. The long run, 10000 deliveries per adapter::

    AEROSTIC_SOAK_DELIVERIES=10000 python -m pytest tests/test_soak.py -s -p no:cacheprovider

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
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import pytest

from aerostic_webhooks import SQLiteStore, sign
from aerostic_webhooks.stores.base import Status
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body

from . import servers as server_helpers

ROOT = Path(__file__).resolve().parent.parent
PROJECT = server_helpers.DJANGO_PROJECT
SECRET = "whsec_soak_test"
FORGED_SECRET = "whsec_guessed"
DELIVERIES = int(os.environ.get("AEROSTIC_SOAK_DELIVERIES") or 400)
CLIENTS = 4
DUPLICATES = 0.10
FORGED = 0.05
KILLS = 2
HANDLER_SECONDS = 0.005
DJANGO_TABLE = "aerostic_webhooks_webhookevent"
WORKER_COMMAND = [sys.executable, "-m", "aerostic_webhooks", "worker"]

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
    time.sleep({seconds!r})
    os.write(counter, f"{{os.getpid()}} {{current_event_id()}}\\n".encode())
"""

# The Django example's settings, its worker external, plus an app whose receiver counts runs.
DJANGO_SETTINGS = """
from config.settings import *  # noqa: F403

AEROSTIC_WEBHOOKS = {{"SECRET": {secret!r}, "WORKER": "external", "LEASE_SECONDS": 1}}
INSTALLED_APPS = [*INSTALLED_APPS, "soak_counter"]  # noqa: F405
ROOT_URLCONF = {urlconf!r}
"""
# The example's URL, served by the async view (for the ASGI server).
DJANGO_ASYNC_URLS = """
from django.urls import path

from aerostic_webhooks.django.views import AsyncAerosticWebhookView

urlpatterns = [path("webhooks/aerostic/", AsyncAerosticWebhookView.as_view())]
"""
DJANGO_COUNTER_APP = """
import os
import time

from django.apps import AppConfig


class SoakCounterConfig(AppConfig):
    name = "soak_counter"

    def ready(self):
        from aerostic_webhooks.django.signals import webhook_received

        counter = os.open({counter!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def count(sender, event, event_id, **kwargs):
            time.sleep({seconds!r})
            os.write(counter, f"{{os.getpid()}} {{event_id}}\\n".encode())

        webhook_received.connect(count, weak=False, dispatch_uid="soak_counter")
"""


class Inbox(Protocol):
    """The records as the test reads them, from outside the processes under test."""

    def counts(self) -> dict[Status, int]: ...

    def statuses(self) -> dict[str, Status]: ...

    def close(self) -> None: ...


class SQLiteInbox:
    """The SQLite inbox, read through ``SQLiteStore``."""

    def __init__(self, path: Path) -> None:
        self.store = SQLiteStore(path)

    def counts(self) -> dict[Status, int]:
        return self.store.counts()

    def statuses(self) -> dict[str, Status]:
        return {record.event_id: record.status for record in self.store.list(limit=10**9)}

    def close(self) -> None:
        self.store.close()


class DjangoInbox:
    """The Django store's table in its SQLite file, read with sqlite3."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, timeout=30)

    def counts(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        query = f"SELECT status, count(*) FROM {DJANGO_TABLE} GROUP BY status"
        for status, count in self.connection.execute(query):
            counts[Status(status)] = count
        return counts

    def statuses(self) -> dict[str, Status]:
        query = f"SELECT event_id, status FROM {DJANGO_TABLE}"
        return {event_id: Status(status) for event_id, status in self.connection.execute(query)}

    def close(self) -> None:
        self.connection.close()


@dataclasses.dataclass(frozen=True)
class Served:
    """How an adapter runs: its web server and worker commands, and where its inbox is."""

    web: list[str]
    worker: list[str]
    env: dict[str, str]
    url: str
    lease: float  # the worker's lease: a killed worker's records come back after it
    inbox: Callable[[], Inbox]


def executable(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed: pip install -e '.[test]'")
    return found


def gunicorn_command(app: str, port: int) -> list[str]:
    command = [executable("gunicorn"), "-w", "2", "-k", "gthread", "--threads", "4"]
    return [*command, "-b", f"127.0.0.1:{port}", app]


def uvicorn_command(app: str, port: int) -> list[str]:
    command = [executable("uvicorn"), app, "--host", "127.0.0.1", "--port", str(port)]
    return [*command, "--no-access-log"]


def example_app(module: str, framework: str, server: str) -> Callable[[Path, int], Served]:
    """An example's ``create_app(receiver)`` with a SQLite inbox, and the package's worker."""

    def serve(directory: Path, port: int) -> Served:
        pytest.importorskip(
            framework, reason=f"{framework} is not installed: pip install -e '.[{framework}]'"
        )
        inbox = directory / "inbox.sqlite3"
        (directory / "web_app.py").write_text(
            WEB_APP.format(examples=str(ROOT / "examples"), module=module, inbox=str(inbox))
        )
        counter = str(directory / "handled.txt")
        (directory / "worker_app.py").write_text(
            WORKER_APP.format(inbox=str(inbox), counter=counter, seconds=HANDLER_SECONDS)
        )
        env = {
            **os.environ,
            "AEROSTIC_WEBHOOK_SECRET": SECRET,
            # The examples' own module-level receivers open this one; ours use `inbox`.
            "AEROSTIC_WEBHOOKS_DB": str(directory / "unused.sqlite3"),
            # The test's directory first: it holds web_app and worker_app.
            "PYTHONPATH": os.pathsep.join([str(directory), str(ROOT)]),
        }
        command = gunicorn_command if server == "gunicorn" else uvicorn_command
        return Served(
            web=command("web_app:app", port),
            worker=[*WORKER_COMMAND, "--app", "worker_app:receiver"],
            env=env,
            url="/webhooks/aerostic",
            lease=1.0,
            inbox=lambda: SQLiteInbox(inbox),
        )

    return serve


def django_project(server: str) -> Callable[[Path, int], Served]:
    """``examples/django_project`` recording only, and ``manage.py aerostic_webhooks_worker``."""

    def serve(directory: Path, port: int) -> Served:
        pytest.importorskip("django", reason="Django is not installed: pip install -e '.[django]'")
        urlconf = "config.urls" if server == "gunicorn" else "soak_async_urls"
        (directory / "soak_settings.py").write_text(
            DJANGO_SETTINGS.format(secret=SECRET, urlconf=urlconf)
        )
        (directory / "soak_async_urls.py").write_text(DJANGO_ASYNC_URLS)
        (directory / "soak_counter").mkdir()
        (directory / "soak_counter" / "__init__.py").write_text("")
        (directory / "soak_counter" / "apps.py").write_text(
            DJANGO_COUNTER_APP.format(
                counter=str(directory / "handled.txt"), seconds=HANDLER_SECONDS
            )
        )
        database = directory / "db.sqlite3"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(directory), str(PROJECT), str(ROOT)]),
            "DJANGO_SETTINGS_MODULE": "soak_settings",  # pytest-django set the tests' own
            "DJANGO_DB_PATH": str(database),
        }
        manage = [sys.executable, str(PROJECT / "manage.py")]
        migrated = server_helpers.manage(env, "migrate", "--no-input", cwd=directory, timeout=180)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        if server == "gunicorn":
            web = gunicorn_command("config.wsgi:application", port)
        else:  # Django has no lifespan: without --lifespan off uvicorn logs that it failed
            web = [*uvicorn_command("config.asgi:application", port), "--lifespan", "off"]
        return Served(
            web=web,
            worker=[*manage, "aerostic_webhooks_worker"],
            env=env,
            url="/webhooks/aerostic/",
            lease=1.0,
            inbox=lambda: DjangoInbox(database),
        )

    return serve


ADAPTERS: dict[str, Callable[[Path, int], Served]] = {
    "flask-gunicorn": example_app("flask_app", "flask", "gunicorn"),
    "fastapi-uvicorn": example_app("fastapi_app", "fastapi", "uvicorn"),
    "starlette-uvicorn": example_app("starlette_app", "starlette", "uvicorn"),
    "django-gunicorn": django_project("gunicorn"),
    "django-uvicorn": django_project("uvicorn"),
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


def stop(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
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
    served: Served
    counter: Path
    port: int
    workers: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = self.directory / f"worker-{len(self.workers)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                self.served.worker,
                env=self.served.env,
                cwd=self.directory,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.workers.append(process)
        return process

    def worker_logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-5000:]}"
            for log in sorted(self.directory.glob("worker-*.log"))
        )

    def wait_for_work(self, worker: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
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
    port = server_helpers.free_port()
    served = ADAPTERS[request.param](tmp_path, port)
    log = tmp_path / "web.log"
    with log.open("wb") as output:
        web = subprocess.Popen(
            served.web, env=served.env, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT
        )
    state = Soak(tmp_path, served, tmp_path / "handled.txt", port)
    try:
        server_helpers.wait_until_serving(
            port, web, served.url, status=405, log=log.read_text, timeout=90
        )
        yield state
    finally:
        for worker in state.workers:
            stop(worker)
        stop(web)


def deliver(port: int, url: str, delivery: Delivery) -> int:
    key = FORGED_SECRET if delivery.forged else SECRET
    headers = {"X-Aerostic-Signature": sign(delivery.body, key), "Content-Type": "application/json"}
    status, _, _ = server_helpers.post(port, url, delivery.body, headers, timeout=60)
    return status


def test_soak_with_duplicates_forgeries_and_a_worker_killed_twice(soak: Soak) -> None:
    started = time.monotonic()
    deliveries = plan(DELIVERIES)
    valid_ids = {d.event_id for d in deliveries if not d.forged}
    forged_ids = {d.event_id for d in deliveries if d.forged}
    assert len(valid_ids) + len(forged_ids) < len(deliveries), "the plan has no duplicates"

    inbox = soak.served.inbox()
    try:
        worker = soak.start_worker()
        answered = 0
        lock = threading.Lock()
        wrong: list[tuple[str, bool, int]] = []

        def run(delivery: Delivery) -> None:
            nonlocal answered
            status = deliver(soak.port, soak.served.url, delivery)
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
                statuses = inbox.statuses()
                done_before_kill.append({e for e, s in statuses.items() if s is Status.DONE})
                assert worker.poll() is None, soak.worker_logs()
                worker.send_signal(signal.SIGKILL)
                worker.wait(30)
                killed.append(worker.pid)
                worker = soak.start_worker()
            for future in futures:
                future.result()
        assert not wrong, wrong[:20]
        delivered = time.monotonic()

        # The last worker runs until nothing is pending or processing (a killed worker's
        # records come back once their lease ends).
        deadline = time.monotonic() + soak.served.lease + 120
        while True:
            counts = inbox.counts()
            if counts[Status.PENDING] == counts[Status.PROCESSING] == 0:
                break
            assert time.monotonic() < deadline, (counts, soak.worker_logs())
            assert worker.poll() is None, soak.worker_logs()
            time.sleep(0.1)
        assert stop(worker) == 0, soak.worker_logs()
        counts = inbox.counts()
        assert counts[Status.FAILED] == 0, counts
        assert counts[Status.DONE] == len(valid_ids), counts

        statuses = inbox.statuses()
        recorded_forged = sorted(forged_ids & statuses.keys())
        assert not recorded_forged, recorded_forged[:10]  # forged deliveries never recorded
        assert statuses.keys() == valid_ids, sorted(statuses.keys() ^ valid_ids)[:10]
        not_done = sorted(e for e, s in statuses.items() if s is not Status.DONE)
        assert not not_done, not_done[:10]
    finally:
        inbox.close()

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
    finished = time.monotonic()
    print(
        f"{len(deliveries)} deliveries ({len(deliveries) - len(valid_ids) - len(forged_ids)} "
        f"duplicates, {sum(d.forged for d in deliveries)} forged), {len(valid_ids)} events, "
        f"{len(handled)} handled, {by_killed} runs by killed workers, {repeats} repeats; "
        f"delivered in {delivered - started:.1f} s, done in {finished - started:.1f} s"
    )
