"""Instructions per request through each adapter and its bare route, counted by callgrind.

Run from the repository root (see ``bench/README.md``)::

    python bench/instructions.py                      # every framework, ~10 minutes
    python bench/instructions.py --frameworks flask --kinds bare,adapter

``adapters.py`` measures the target's own unit, requests per second, but on a shared
2-CPU machine a rate moves by a third between runs, and the ratios with it. This script
runs the same rows (the same apps, receivers, requests and harnesses: it imports
``adapters.py``) under valgrind's callgrind, which counts the instructions the process
executes: the same count, run after run, whatever else the machine is doing.

For each row a child process runs twice under callgrind, once with ``--small`` requests and
once with ``--large``; instructions per request are the difference over the difference in
requests, so start-up, imports and the app's warm-up cancel out. Both runs build the same
number of signed deliveries and prepared requests, so building them cancels too. Every
thread is counted: in the ``adapter`` row, the worker's claims and handler calls for the
batch (drained before the count ends). The counted runs check only what costs a few
instructions a request (every answer, the number handled or recorded); each row is first run
once without valgrind through ``adapters.run_row``, which checks every answer and record.

An instruction count is not a rate: cache misses, system calls and waits for the GIL cost
time but few instructions, so these ratios need not be the rates' ratios. What they settle
is how much work each row does, without the noise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import adapters
from _env import print_machine, print_run, version_of

SMALL, LARGE = 200, 1200
CHECKED = 20
_COLLECTED = re.compile(rb"Collected : (\d+)")


def count_row(framework: str, kind: adapters.Kind, number: int, built: int) -> None:
    """One counted run: ``number`` requests of a row, ``built`` deliveries prepared in all."""
    fw = adapters.FRAMEWORKS[framework]()
    harness = adapters.HARNESSES[fw.protocol]()
    workload = adapters.build_workload(built)
    recorder = adapters.Recorder()
    app, path, receiver = adapters.row_app(fw, kind, recorder)
    served = harness.serve(app)
    served.batch(path, [workload.warmup]).run()
    if receiver is not None and kind == "adapter":
        receiver.drain(adapters.DRAIN_TIMEOUT)
    batch = served.batch(path, workload.deliveries[:number])
    # Built and kept, never run: both runs build, hold and collect the same requests.
    _unrun = served.batch(path, workload.deliveries[number:])
    gc.collect()
    batch.run()
    if receiver is not None and kind == "adapter":
        receiver.drain(adapters.DRAIN_TIMEOUT)
    served.close()
    if receiver is not None:
        receiver.close()
    harness.close()
    # Checks that cost a few instructions a request (C loops); run_row checks the rest.
    ok = batch.statuses.count(200) == number and batch.bodies.count(adapters.ACCEPTED) == number
    if receiver is not None:
        ok = ok and len(receiver.store) == number + 1  # type: ignore[arg-type]
    if kind == "adapter":
        ok = ok and len(recorder.ids) == number + 1
    if not ok:
        print(
            f"{framework} {kind}: a request was not answered, recorded or handled right",
            file=sys.stderr,
        )
    sys.stderr.flush()
    os._exit(0 if ok else 1)  # no teardown: it would be counted


def check_row(framework: str, kind: adapters.Kind, number: int) -> None:
    """One uncounted run through ``adapters.run_row``: every answer and record checked."""
    fw = adapters.FRAMEWORKS[framework]()
    harness = adapters.HARNESSES[fw.protocol]()
    try:
        adapters.run_row(adapters.Row(fw, harness, kind), adapters.build_workload(number))
    finally:
        harness.close()


@dataclass(frozen=True)
class Count:
    framework: str
    kind: adapters.Kind
    small: int
    large: int
    requests: int

    @property
    def per_request(self) -> float:
        return (self.large - self.small) / self.requests


def child_command(*args: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--child", *args]


def counted(framework: str, kind: str, number: int, built: int) -> int:
    """Run one counted child under callgrind; the instructions it executed."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        *child_command(framework, kind, str(number), str(built)),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every run
    done = subprocess.run(command, capture_output=True, env=env, check=False)
    found = _COLLECTED.findall(done.stderr)
    if done.returncode != 0 or not found:
        # The child's own lines, not valgrind's ("==pid== ..."), which end every run.
        lines = done.stderr.decode(errors="replace").splitlines()
        tail = [line for line in lines if line.strip() and not line.startswith("==")][-5:]
        raise adapters.CheckFailed(f"{framework} {kind}: counted run failed: {tail}")
    return int(found[-1])


def checked(framework: str, kind: str) -> None:
    done = subprocess.run(
        [*child_command(framework, kind, str(CHECKED)), "--check"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise adapters.CheckFailed(f"{framework} {kind}: checked run failed: {tail}")


def measure(framework: str, kind: adapters.Kind, small: int, large: int) -> Count:
    checked(framework, kind)
    return Count(
        framework,
        kind,
        counted(framework, kind, small, large),
        counted(framework, kind, large, large),
        large - small,
    )


def print_table(counts: Sequence[Count]) -> list[tuple[str, float]]:
    print()
    print("== instructions per request, every thread, counted by callgrind ==")
    print(f"{'framework row':<20} {'instructions':>12} {'over bare':>10} {'x bare':>7}")
    bare = {c.framework: c.per_request for c in counts if c.kind == "bare"}
    ratios: list[tuple[str, float]] = []
    for c in counts:
        base = bare.get(c.framework)
        label = f"{c.framework} {c.kind}"
        if base is None:
            print(f"{label:<20} {c.per_request:12,.0f}")
            continue
        ratio = base / c.per_request
        ratios.append((label, ratio))
        print(f"{label:<20} {c.per_request:12,.0f} {c.per_request - base:10,.0f} {ratio:7.3f}")
    print("(x bare: the bare row's instructions per request over this row's: the share of the")
    print(" bare route's rate the row would keep were every instruction to take the same time)")
    return ratios


def parse_kinds(text: str) -> list[adapters.Kind]:
    kinds = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in adapters.KINDS]
    if unknown or not kinds:
        known = ",".join(adapters.KINDS)
        raise argparse.ArgumentTypeError(f"unknown row(s) {unknown}: use {known}")
    return [k for k in adapters.KINDS if k in kinds]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--frameworks",
        type=adapters.parse_frameworks,
        default=list(adapters.FRAMEWORKS),
        help=f"comma-separated, from {','.join(adapters.FRAMEWORKS)} (default: all)",
    )
    parser.add_argument(
        "--kinds",
        type=parse_kinds,
        default=list(adapters.KINDS),
        help=f"rows, comma-separated, from {','.join(adapters.KINDS)} (default: all)",
    )
    parser.add_argument("--small", type=int, default=SMALL, help=f"requests, first run ({SMALL})")
    parser.add_argument("--large", type=int, default=LARGE, help=f"requests, second run ({LARGE})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        framework, kind, number, *built = args.child
        if args.check:
            check_row(framework, kind, int(number))
        else:
            count_row(framework, kind, int(number), int(built[0]))
        return 0
    if not 0 < args.small < args.large or args.jobs < 1:
        parser.error("need 0 < --small < --large and --jobs >= 1")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2

    print_run()
    names = ("flask", "werkzeug", "django", "starlette", "fastapi", "pydantic")
    print(f"versions:    {', '.join(f'{n} {version_of(n)}' for n in names)}")
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)
    print(f"valgrind:    {version.stdout.strip()}")
    print_machine()
    print(f"settings:    small={args.small} large={args.large} PYTHONHASHSEED=0")
    skipped: list[str] = []
    jobs: list[tuple[str, adapters.Kind]] = []
    for name in args.frameworks:
        try:
            adapters.FRAMEWORKS[name]()
        except adapters.Skip as reason:
            skipped.append(f"{name}: {reason}")
            continue
        jobs.extend((name, kind) for kind in args.kinds)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(measure, n, k, args.small, args.large) for n, k in jobs]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()  # the first failure, as soon as it happens
        except adapters.CheckFailed as failure:
            pool.shutdown(cancel_futures=True)  # the runs under way finish; no others start
            print(f"benchmark self-check failed: {failure}", file=sys.stderr)
            return 1
    print_table([future.result() for future in futures])
    for message in skipped:
        print(f"skipped: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
