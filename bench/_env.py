"""What every benchmark prints about the run, so results can be compared and reproduced."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys


def version_of(name: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def print_run() -> None:
    """When, with which command, on which Python."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"date:        {now}")
    python = os.path.relpath(sys.executable)
    if python.startswith(".."):
        python = os.path.basename(sys.executable)
    print(f"command:     {' '.join([python, *sys.argv])}")
    print(f"python:      {platform.python_implementation()} {sys.version.split()[0]}")


def print_machine() -> None:
    """How many CPUs the run had, and on what."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(f"cpus:        {os.cpu_count()} (usable by this process: {affinity})")
    print(f"platform:    {platform.platform()}")
