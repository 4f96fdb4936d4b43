"""LeaseKeeper: the inline mode's lease renewal, through closes, slow stores and forks."""

from __future__ import annotations

import itertools
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from aerostic_webhooks.leases import LeaseKeeper

from .conftest import wait_until
from .test_durability import _exit_code, _in_child


class Renewals:
    """A store's renew(), the only method a keeper calls; the first call may be slow."""

    def __init__(self, first_takes: float = 0.0) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.leases: list[float] = []
        self._first_takes = first_takes

    def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
        self.calls.append(tuple(event_ids))
        self.leases.append(lease)
        slow, self._first_takes = self._first_takes, 0.0
        time.sleep(slow)


def test_a_hold_is_renewed_every_third_of_a_lease_and_nothing_else_is() -> None:
    store = Renewals()
    keeper = LeaseKeeper(store, "owner", lease_seconds=0.3)  # type: ignore[arg-type]
    try:
        with keeper.holding("slow"):
            time.sleep(0.55)
        assert 3 <= len(store.calls) <= 6
        assert set(store.calls) == {("slow",)}
        assert set(store.leases) == {0.3}  # each renewal is for a whole lease
        store.calls.clear()
        time.sleep(0.3)
        assert store.calls == []  # nothing held: asleep
    finally:
        keeper.close(1)


def test_a_hold_after_a_close_that_timed_out_is_still_renewed() -> None:
    """close() may give up on a thread mid-renewal (a slow store); a hold afterwards gets a
    thread of its own, which the old one, exiting late, must not put to sleep for good."""
    store = Renewals(first_takes=0.5)
    keeper = LeaseKeeper(store, "owner", lease_seconds=0.3)  # type: ignore[arg-type]
    try:
        with keeper.holding("a"):
            time.sleep(0.15)  # the first renewal starts at 0.1 s and takes 0.5 s
        keeper.close(timeout=0.05)
        with keeper.holding("b"):  # a new thread, idle once this ends
            pass
        time.sleep(0.6)  # the old thread finishes its renewal and exits
        store.calls.clear()
        with keeper.holding("c"):
            time.sleep(1.0)
        assert store.calls.count(("c",)) >= 5
    finally:
        keeper.close(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_close_in_a_forked_child_does_not_wait_for_the_parents_lock() -> None:
    keeper = LeaseKeeper(Renewals(), "owner", lease_seconds=3.0)  # type: ignore[arg-type]
    with keeper.holding("a"):
        pass
    with keeper._changed:  # a request thread of the parent, mid-hold at the fork
        code = _in_child(lambda: keeper.close(timeout=1), timeout=5)
    assert code == 0
    keeper.close(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_two_first_holds_in_a_forked_child_share_one_fresh_keeper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two request threads of a new gunicorn worker hold at once: neither may use the
    parent's state while the other is replacing it."""
    store = Renewals()
    keeper = LeaseKeeper(store, "owner", lease_seconds=0.3)  # type: ignore[arg-type]
    with keeper.holding("before the fork"):
        pass

    def child() -> None:
        store.calls.clear()

        def hold(event_id: str) -> None:
            with keeper.holding(event_id):
                time.sleep(0.7)

        threads = [threading.Thread(target=hold, args=(name,)) for name in ("a", "b")]
        real, made = threading.Condition, itertools.count()

        def slow_condition(*args: object) -> threading.Condition:
            if next(made) == 0:  # the first hold's new state: the other hold comes meanwhile
                time.sleep(0.2)
            return real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(threading, "Condition", slow_condition)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        renewed = [event_id for call in store.calls for event_id in call]
        keepers = [t for t in threading.enumerate() if t.name == "aerostic-webhooks-leases"]
        assert 3 <= renewed.count("a") <= 8 and 3 <= renewed.count("b") <= 8, renewed
        assert len(keepers) == 1
        keeper.close(1)

    assert _in_child(child, timeout=10) == 0
    keeper.close(1)


def keeper_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "aerostic-webhooks-leases"}


def test_each_renewal_runs_inside_the_worker_context() -> None:
    """Django's worker_context closes the thread's database connection after each use: a
    renewal made outside it would leave the lease thread's connection open for good."""
    steps: list[str] = []

    @contextmanager
    def context() -> Iterator[None]:
        steps.append("enter")
        try:
            yield
        finally:
            steps.append("exit")

    class Recording(Renewals):
        def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
            steps.append("renew")
            super().renew(owner, event_ids, lease=lease)

    store = Recording()
    keeper = LeaseKeeper(store, "owner", lease_seconds=0.3, context=context)  # type: ignore[arg-type]
    try:
        with keeper.holding("a"):
            assert wait_until(lambda: len(store.calls) >= 2)
    finally:
        keeper.close(5)
    assert len(steps) >= 6 and steps == ["enter", "renew", "exit"] * (len(steps) // 3)


def test_an_event_held_twice_is_renewed_until_both_holds_end() -> None:
    """Two requests of one process can run the same event (the second took it up after the
    first's lease lapsed): the first to finish must not end the other's renewals."""
    store = Renewals()
    keeper = LeaseKeeper(store, "owner", lease_seconds=0.3)  # type: ignore[arg-type]
    try:
        with keeper.holding("a"):
            with keeper.holding("a"):
                pass
            renewed = len(store.calls)  # at most one renewal is on its way
            assert wait_until(lambda: len(store.calls) >= renewed + 2)
        assert set(store.calls) == {("a",)}
    finally:
        keeper.close(5)


class StuckFirst(Renewals):
    """A store whose first renew() hangs until ``gate`` is set (a store that stopped
    answering); the ones after it return at once."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = threading.Event()  # the first renewal is in the store
        self.gate = threading.Event()  # the store answers it
        self.returned = threading.Event()

    def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
        super().renew(owner, event_ids, lease=lease)
        if not self.stuck.is_set():
            self.stuck.set()
            self.gate.wait(10)
            self.returned.set()


def test_close_gives_up_on_a_hung_renewal_and_later_holds_are_still_renewed() -> None:
    """The receiver's close(timeout) must not wait on a store that stopped answering; a
    hold made after it gets a thread of its own, and the one given up on exits once the
    store answers."""
    store = StuckFirst()
    keeper = LeaseKeeper(store, "owner", lease_seconds=0.3)  # type: ignore[arg-type]
    before = keeper_threads()
    try:
        with keeper.holding("a"):
            assert store.stuck.wait(5)
        keeper.close(timeout=0.1)
        assert not store.returned.is_set()  # close() returned with the renewal still hung
        with keeper.holding("b"):
            assert wait_until(lambda: ("b",) in store.calls)
        store.gate.set()
        assert store.returned.wait(5)
        assert wait_until(lambda: len(keeper_threads() - before) == 1)  # the idle new one
    finally:
        store.gate.set()
        keeper.close(5)


def test_a_renewal_the_store_refuses_is_tried_again() -> None:
    """Not only connection errors: SQLite's "database is locked" must not end renewals."""

    class LockedOnce(Renewals):
        def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
            super().renew(owner, event_ids, lease=lease)
            if len(self.calls) == 1:
                raise sqlite3.OperationalError("database is locked")

    store = LockedOnce()
    keeper = LeaseKeeper(store, "owner", lease_seconds=0.3)  # type: ignore[arg-type]
    try:
        with keeper.holding("a"):
            assert wait_until(lambda: len(store.calls) >= 3)
    finally:
        keeper.close(5)


def test_a_process_that_never_closes_its_keeper_still_exits() -> None:
    """A script that receives inline and never closes its receiver must not hang on exit
    waiting for the lease thread."""
    script = (
        "from aerostic_webhooks import MemoryStore\n"
        "from aerostic_webhooks.leases import LeaseKeeper\n"
        "keeper = LeaseKeeper(MemoryStore(), 'owner', lease_seconds=30.0)\n"
        "with keeper.holding('a'):\n"
        "    pass\n"
    )
    command = [sys.executable, "-c", script]
    completed = subprocess.run(command, check=False, timeout=60, capture_output=True)
    assert completed.returncode == 0, completed.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_forked_child_renews_its_own_holds_not_the_parents() -> None:
    """A child forked while its parent ran a handler does not keep that record's lease
    alive: were the parent to die, the record could never be taken up again."""
    store = Renewals()
    keeper = LeaseKeeper(store, "owner", lease_seconds=0.3)  # type: ignore[arg-type]

    def child() -> None:
        store.calls.clear()
        with keeper.holding("child's"):
            assert wait_until(lambda: len(store.calls) >= 2)
        keeper.close(5)
        assert set(store.calls) == {("child's",)}, store.calls

    try:
        with keeper.holding("parent's"):
            assert _in_child(child, timeout=20) == 0
    finally:
        keeper.close(5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_child_forked_inside_a_hold_leaves_it_without_the_parents_lock() -> None:
    """A handler that forks while another request of the parent holds the keeper's lock:
    in the child that lock stays taken for good, so leaving the hold must not wait on it."""
    keeper = LeaseKeeper(Renewals(), "owner", lease_seconds=3.0)  # type: ignore[arg-type]
    locked, unlock = threading.Event(), threading.Event()

    def another_request() -> None:
        with keeper._changed:
            locked.set()
            unlock.wait(10)

    thread = threading.Thread(target=another_request)
    child = -1
    try:
        with keeper.holding("a"):
            thread.start()
            assert locked.wait(5)
            child = os.fork()
            if child != 0:
                unlock.set()
        if child == 0:
            os._exit(0)  # the child left the hold
    finally:
        if child == 0:
            os._exit(1)  # never return into pytest
        unlock.set()
        thread.join(5)
        keeper.close(5)
    assert _exit_code(child, timeout=10) == 0
