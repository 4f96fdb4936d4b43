"""Nox sessions: ``nox -s tests`` runs the whole suite, ``nox -s lint`` the static checks."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, as the README's Quickstart and .ci/run run it."""
    session.install("-e", ".[all,test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict, as .ci/run runs them."""
    session.install("-e", ".[all,test]", "ruff==0.17.6", "mypy==2.4.1", "django-stubs==6.1.2")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "aerostic_webhooks")


# The lower bounds pyproject.toml states, checked by the in-process suites (the real-server
# tests need the newest servers). Run with: nox -s oldest
OLDEST = [
    "pydantic==2.6.*",
    "flask==2.3.*",
    "werkzeug==2.3.*",
    "django==4.2.*",
    "starlette==0.37.*",
    "fastapi==0.112.*",
    "httpx==0.27.*",
]


@nox.session
def oldest(session: nox.Session) -> None:
    """The oldest supported pydantic, Flask, Django, Starlette and FastAPI."""
    session.install("-e", ".[all,test]", *OLDEST)
    session.run(
        "python",
        "-m",
        "pytest",
        "-W",
        "ignore::DeprecationWarning",  # old anyio and Starlette warn about each other
        "-W",
        "ignore::pytest.PytestUnraisableExceptionWarning",
        "tests/test_events.py",
        "tests/test_signature.py",
        "tests/test_receiver.py",
        "tests/test_worker.py",
        "tests/test_stores.py",
        "tests/test_flask.py",
        "tests/test_django.py",
        "tests/test_asgi.py",
        *session.posargs,
    )
