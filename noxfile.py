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
