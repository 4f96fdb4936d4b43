"""What the WSGI-style adapters (Flask, Django) share: headers and body read off the environ.

Framework request objects parse more than a delivery needs: Django builds a dict of every
header, Werkzeug wraps the input in two stream layers. Reading the environ directly costs a
dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .response import declared_length

__all__ = ["EnvironHeaders", "body_length", "wsgi_input"]

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
            if not isinstance(key, str) or not isinstance(value, str):
                continue
            # Some servers copy the two unprefixed ones to HTTP_ keys as well: name them once.
            if key in _UNPREFIXED or (key.startswith("HTTP_") and key[5:] not in _UNPREFIXED):
                yield key.removeprefix("HTTP_").replace("_", "-").title()

    def __len__(self) -> int:
        return sum(1 for _ in self)


def body_length(environ: Mapping[str, Any]) -> int | None:
    """The declared length of the body: ``CONTENT_LENGTH``, unless the body is chunked (then
    ``Transfer-Encoding`` wins, as HTTP says, and a server may have passed both along)."""
    if "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower():
        return None
    return declared_length(environ.get("CONTENT_LENGTH"))


def wsgi_input(environ: Mapping[str, Any]) -> tuple[Callable[[int], bytes], int | None]:
    """How to read a request's raw body, and its declared length.

    ``wsgi.input`` is read to its end where the server says it ends with the body
    (``wsgi.input_terminated``: gunicorn, Werkzeug's server for a chunked body), else up to
    the declared length. A body with neither could leave the worker waiting on a socket that
    stays open, so it reads as empty.
    """
    length = body_length(environ)
    stream = environ.get("wsgi.input")
    if stream is not None and environ.get("wsgi.input_terminated"):
        read: Callable[[int], bytes] = stream.read
        return read, length
    if stream is None or length is None:
        return _nothing, length
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
