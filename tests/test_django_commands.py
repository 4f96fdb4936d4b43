"""The Django app's management commands, run as a user runs them: ``manage.py`` subprocesses.

Each test works on its own copy of one migrated SQLite file of the example project, with
``AEROSTIC_WEBHOOKS_WORKER=external``: deliveries are only recorded, and the worker command
processes them. The tests read the table directly with sqlite3, as an operator would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from aerostic_webhooks.testing import SAMPLE_PAYLOADS

from .servers import DJANGO_PROJECT, manage

ROOT = Path(__file__).resolve().parent.parent
PROJECT = DJANGO_PROJECT
SECRET = "whsec_django_commands_test"
TABLE = "aerostic_webhooks_webhookevent"
PHONE = SAMPLE_PAYLOADS["message.received"]["data"]["from"]

# Posts signed samples to the example's webhook URL with Django's test client, in a
# `manage.py shell` process: the view and the store run as under a server.
RECORD = """
from django.test import Client

from aerostic_webhooks import sign
from aerostic_webhooks.testing import sample_body

client = Client(HTTP_HOST="localhost")
for event_type, data_id in {events!r}:
    body = sample_body(event_type, id=data_id)
    response = client.post(
        "/webhooks/aerostic/",
        body,
        content_type="application/json",
        headers={{"X-Aerostic-Signature": sign(body, {secret!r})}},
    )
    print("answer", response.status_code, response.content.decode())
"""


def environment(db: Path, **changes: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "config.settings",  # pytest-django set the tests' own
        "DJANGO_DB_PATH": str(db),
        "AEROSTIC_WEBHOOK_SECRET": SECRET,
        "AEROSTIC_WEBHOOKS_WORKER": "external",
    }
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def query(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as connection, connection:
        return connection.execute(sql, params).fetchall()


def statuses(db: Path) -> dict[str, str]:
    return {
        str(event_id): str(status)
        for event_id, status in query(db, f"SELECT event_id, status FROM {TABLE}")
    }


def record(env: dict[str, str], events: list[tuple[str, str]]) -> None:
    result = manage(env, "shell", "-c", RECORD.format(events=events, secret=SECRET))
    assert result.returncode == 0, result.stdout + result.stderr
    # Django 5.2's shell also prints what it imported: keep the lines the script printed.
    answers = [line for line in result.stdout.splitlines() if line.startswith("answer ")]
    assert answers == ['answer 200 {"received": true}'] * len(events), result


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A database migrated once by ``manage.py migrate``, and what the command printed."""
    db = tmp_path_factory.mktemp("migrated") / "db.sqlite3"
    result = manage(environment(db), "migrate", "--no-input")
    assert result.returncode == 0, result.stdout + result.stderr
    return db, result.stdout


@pytest.fixture
def db(migrated: tuple[Path, str], tmp_path: Path) -> Path:
    """This test's own copy of the migrated database."""
    copy = tmp_path / "db.sqlite3"
    shutil.copy(migrated[0], copy)
    return copy


def test_migrate_creates_the_webhook_event_table(migrated: tuple[Path, str]) -> None:
    db, output = migrated
    assert "Applying aerostic_webhooks.0001_initial... OK" in output
    columns = {row[1] for row in query(db, f"PRAGMA table_info({TABLE})")}
    assert {"event_id", "event_type", "body", "status", "received_at", "due_at"} <= columns


@pytest.mark.parametrize("secret", ["", None], ids=["empty", "unset"])
def test_check_fails_with_e001_without_a_secret(tmp_path: Path, secret: str | None) -> None:
    result = manage(environment(tmp_path / "db.sqlite3", AEROSTIC_WEBHOOK_SECRET=secret), "check")
    assert result.returncode != 0
    assert "aerostic_webhooks.E001" in result.stdout + result.stderr


def test_check_passes_with_a_secret(tmp_path: Path) -> None:
    result = manage(environment(tmp_path / "db.sqlite3"), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "aerostic_webhooks.E" not in result.stdout + result.stderr


class WorkerRun(NamedTuple):
    returncode: int
    seconds_to_stop: float
    output: str
    log: str


def run_worker_until(
    env: dict[str, str], tmp_path: Path, ready: Callable[[str], bool], signum: int
) -> WorkerRun:
    """Run ``aerostic_webhooks_worker`` until ``ready(its output so far)``, then send it
    ``signum`` and wait for it to exit."""
    stdout, stderr = tmp_path / "worker.out", tmp_path / "worker.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        worker = subprocess.Popen(
            [sys.executable, str(PROJECT / "manage.py"), "aerostic_webhooks_worker"],
            env=env,
            cwd=PROJECT,
            stdout=out,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while not ready(stdout.read_text()) and time.monotonic() < deadline:
            assert worker.poll() is None, stdout.read_text() + stderr.read_text()
            time.sleep(0.1)
        assert ready(stdout.read_text()), stdout.read_text() + stderr.read_text()
        stopping = time.monotonic()
        worker.send_signal(signum)
        returncode = worker.wait(15)
        seconds = time.monotonic() - stopping
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    return WorkerRun(returncode, seconds, stdout.read_text(), stderr.read_text())


def test_worker_processes_recorded_events_and_stops_on_sigterm(db: Path, tmp_path: Path) -> None:
    env = environment(db)
    events = [(event_type, f"worker-{n}") for n, event_type in enumerate(SAMPLE_PAYLOADS)]
    record(env, events)
    expected = {f"{event_type}:{data_id}" for event_type, data_id in events}
    assert statuses(db) == dict.fromkeys(expected, "pending")  # external: only recorded

    def all_done(output: str) -> bool:
        return statuses(db) == dict.fromkeys(expected, "done")

    run = run_worker_until(env, tmp_path, all_done, signal.SIGTERM)
    assert run.returncode == 0, run.output + run.log
    assert run.seconds_to_stop < 5, f"the worker took {run.seconds_to_stop:.1f}s to stop"
    assert "aerostic_webhooks worker started" in run.output
    assert "aerostic_webhooks worker stopped" in run.output
    # The example's receivers ran (they log event ids), and logged no phone number.
    for event_id in expected:
        assert f"event {event_id} " in run.log, run.log
    assert PHONE not in run.log


def test_worker_stops_cleanly_on_ctrl_c(db: Path, tmp_path: Path) -> None:
    def started(output: str) -> bool:
        return "worker started" in output

    run = run_worker_until(environment(db), tmp_path, started, signal.SIGINT)
    assert run.returncode == 0, run.output + run.log
    assert "aerostic_webhooks worker stopped" in run.output, run.output + run.log
    assert "Traceback" not in run.log, run.log


def test_purge_deletes_done_and_failed_events_past_retention(db: Path) -> None:
    env = environment(db)
    names = ["old-done", "old-failed", "old-pending", "new-done"]
    record(env, [("message.sent", name) for name in names])
    # What the worker would have left behind; then age three rows past the 7-day retention.
    for name, status in zip(names, ["done", "failed", "pending", "done"], strict=True):
        query(
            db, f"UPDATE {TABLE} SET status = ? WHERE event_id = ?", status, f"message.sent:{name}"
        )
    query(
        db,
        f"UPDATE {TABLE} SET received_at = '2000-01-01 00:00:00' WHERE event_id LIKE ?",
        "message.sent:old-%",
    )

    result = manage(env, "aerostic_webhooks_purge")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "purged 2 webhook event(s) older than 7 days, 0:00:00"
    assert statuses(db) == {
        "message.sent:old-pending": "pending",
        "message.sent:new-done": "done",
    }


def test_purge_needs_no_secret_but_refuses_settings_it_uses_wrongly(db: Path) -> None:
    without_secret = environment(db, AEROSTIC_WEBHOOK_SECRET="")
    result = manage(without_secret, "aerostic_webhooks_purge")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().startswith("purged 0 webhook event(s)")
    wrong = manage(
        without_secret,
        "shell",
        "-c",
        "from django.conf import settings; from django.core.management import call_command;"
        "settings.AEROSTIC_WEBHOOKS['RETENTION'] = -1; call_command('aerostic_webhooks_purge')",
    )
    assert wrong.returncode != 0
    assert "RETENTION'] must be a positive timedelta" in wrong.stderr


@pytest.mark.parametrize("command", ["aerostic_webhooks_purge", "aerostic_webhooks_worker"])
@pytest.mark.parametrize("problem", ["no table", "no database"])
def test_a_database_out_of_reach_is_one_line_and_exit_status_1(
    tmp_path: Path, command: str, problem: str
) -> None:
    """Not a traceback: a cron job's mail or a supervisor's log says what is wrong in a line."""
    if problem == "no table":  # migrate never ran
        db = tmp_path / "empty.sqlite3"
        sqlite3.connect(db).close()
    else:  # SQLite cannot open it: a server that is down, for the file database
        db = tmp_path / "no such directory" / "db.sqlite3"
    result = manage(environment(db), command)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("CommandError: "), line
    assert "OperationalError" in line, line
    assert "aerostic_webhooks worker started" not in result.stdout
