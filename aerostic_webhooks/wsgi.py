"""What the WSGI-style adapters (Flask, Django) share: headers and body read off the environ.

Framework request objects parse more than a delivery needs: Django builds a dict of every
header, Werkzeug wraps the input in two stream layers. Reading the environ directly costs a
dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .response import declared_length

__all__ = ["EnvironHeaders", "wsgi_input"]

_UNPREFIXED = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})


class EnvironHeaders(Mapping[str, str]):
    """The request headers of a WSGI environ (or Django's ``request.META``), looked up by
    name, case-insensitively, when asked for."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        key = name.upper().replace("-", "_")
        value = self._environ[key if key in _UNPREFIXED else "HTTP_" + key]
        if not isinstance(value, str):
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        for key, value in self._environ.items():
            if isinstance(value, str) and (key.startswith("HTTP_") or key in _UNPREFIXED):
                yield key.removeprefix("HTTP_").replace("_", "-").title()

    def __len__(self) -> int:
        return sum(1 for _ in self)


def wsgi_input(environ: Mapping[str, Any]) -> tuple[Callable[[int], bytes], int | None]:
    """How to read a request's raw body, and its declared length.

    ``wsgi.input`` is read up to ``CONTENT_LENGTH``, or to its end where the server ends it
    there (``wsgi.input_terminated``: a chunked body under gunicorn or Werkzeug). A body with
    neither could block the worker on a socket that stays open, so it reads as empty.
    """
    length = declared_length(environ.get("CONTENT_LENGTH"))
    stream = environ.get("wsgi.input")
    if stream is None or (length is None and not environ.get("wsgi.input_terminated")):
        return _nothing, length
    if length is None:
        read: Callable[[int], bytes] = stream.read
        return read, None
    remaining = length

    def read_declared(size: int) -> bytes:
        nonlocal remaining
        if remaining <= 0:
            return b""
        chunk: bytes = stream.read(min(size, remaining))
        remaining -= len(chunk)
        return chunk

    return read_declared, length


def _nothing(size: int) -> bytes:
    return b""
