"""Nox sessions.

``nox -s tests`` runs the whole suite on the newest releases, ``nox -s lint`` the static checks,
``nox -s matrix`` every entry of the version matrix one after the other (``nox -l`` lists them;
``nox -s "matrix(flask-oldest)"`` runs one), and ``nox -s oldest`` the in-process suites on every
lower bound at once, Python's included. ``.ci/run`` runs ``oldest`` and ``matrix(python313)``,
the whole suite on the newest Python. tox.ini has the same environments.
"""

from __future__ import annotations

from dataclasses import dataclass

import nox

nox.options.sessions = ["tests", "lint"]

# The lower bounds that pyproject.toml states, each installed exactly (``flask==2.3`` is 2.3.0).
# tests/test_project.py checks that these, tox.ini's and pyproject.toml's agree.
LOWEST = {
    "pydantic": "2.6",
    "flask": "2.3",
    "django": "4.2",
    "starlette": "0.37.2",
    "fastapi": "0.112.2",
    "redis": "5.0",
    "uvicorn": "0.29",
    "httpx": "0.27",
}


def lowest(*names: str) -> list[str]:
    return [f"{name}=={LOWEST[name]}" for name in names]


# The oldest Python that pyproject.toml's requires-python admits, and every Python it lists.
OLDEST_PYTHON = "3.10"
MATRIX_PYTHONS = {
    "python310": "3.10",
    "python311": "3.11",
    "python312": "3.12",
    "python313": "3.13",
}

# Flask 2.3 asks for Werkzeug>=2.3 and is tested with that oldest Werkzeug.
FLASK_OLDEST = [*lowest("flask"), "werkzeug==2.3"]
OLDEST = [
    *lowest("pydantic", "django", "starlette", "fastapi", "redis", "httpx", "uvicorn"),
    *FLASK_OLDEST,
]

# What each axis runs: the core suites (which the fuzz harness and the testing toolkit take
# through every installed adapter), plus the suites of that framework, real servers included.
CORE = [
    "tests/test_events.py",
    "tests/test_signature.py",
    "tests/test_receiver.py",
    "tests/test_response.py",
    "tests/test_worker.py",
    "tests/test_stores.py",
    "tests/test_logging.py",
    "tests/test_properties.py",
    "tests/test_testing.py",
    "tests/test_fuzz.py",
]
FLASK = [*CORE, "tests/test_flask.py", "tests/test_flask_server.py"]
DJANGO = [
    *CORE,
    "tests/test_django.py",
    "tests/test_django_commands.py",
    "tests/test_django_server.py",
]
STARLETTE = [*CORE, "tests/test_asgi.py", "tests/test_cli.py", "tests/test_project.py"]
FASTAPI = [*CORE, "tests/test_asgi.py", "tests/test_fastapi_server.py"]
EVERYTHING: list[str] = []  # pytest's testpaths: the whole suite
# The suites that run in one process, what ``oldest`` (and so CI) runs: the real-server suites
# pass on each lower bound too, in the entries above, but would double CI's share of the matrix.
IN_PROCESS = [*CORE, "tests/test_flask.py", "tests/test_django.py", "tests/test_asgi.py"]


@dataclass(frozen=True)
class Entry:
    """One environment of the matrix: what it pins on top of ``.[all,test]``, what it runs."""

    pins: list[str]
    tests: list[str]
    python: str | None = None  # None: the interpreter nox runs on


MATRIX = {
    # Each lower bound alone, everything else at the newest release that accepts it.
    "pydantic-oldest": Entry(lowest("pydantic"), EVERYTHING),
    "flask-oldest": Entry(FLASK_OLDEST, FLASK),
    "django42": Entry(lowest("django"), DJANGO),
    "starlette-oldest": Entry(lowest("starlette", "uvicorn", "httpx"), STARLETTE),
    "fastapi-oldest": Entry(lowest("fastapi"), FASTAPI),
    # The Django LTS releases and the newest Django, which needs Python 3.12.
    "django52": Entry(["django==5.2.*"], DJANGO),
    "django6": Entry(["django>=6,<7"], DJANGO, python="3.12"),
    # The newest release of everything, the whole suite (Django 5.2 on Python 3.10 and 3.11),
    # on each supported Python.
    **{name: Entry([], EVERYTHING, python=version) for name, version in MATRIX_PYTHONS.items()},
}


def pytest(session: nox.Session, files: list[str]) -> None:
    session.run("python", "-m", "pytest", *files, *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, as the README's Quickstart and .ci/run run it."""
    session.install("-e", ".[all,test]")
    pytest(session, EVERYTHING)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict, as .ci/run runs them."""
    session.install("-e", ".[all,test]", "ruff==0.17.6", "mypy==2.4.1", "django-stubs==6.1.2")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "aerostic_webhooks", "tests", "examples", "bench")


@nox.session
@nox.parametrize(
    "python,entry",
    [nox.param(entry.python, entry, id=name) for name, entry in MATRIX.items()],
)
def matrix(session: nox.Session, entry: Entry) -> None:
    """One entry of the version matrix (one pip resolution, so the pins hold)."""
    session.install("--upgrade", "-e", ".[all,test]", *entry.pins)
    pytest(session, entry.tests)


@nox.session(python=OLDEST_PYTHON)
def oldest(session: nox.Session) -> None:
    """Every lower bound together, Python's too, the in-process suites: CI's reduced matrix."""
    session.install("-e", ".[all,test]", *OLDEST)
    pytest(session, IN_PROCESS)
