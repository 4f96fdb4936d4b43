"""Headers and body read straight off a WSGI environ, as the Flask and Django adapters do."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from aerostic_webhooks import MemoryStore, WebhookReceiver, sign
from aerostic_webhooks.receiver import _header
from aerostic_webhooks.response import respond
from aerostic_webhooks.signature import SIGNATURE_HEADER
from aerostic_webhooks.testing import sample_body
from aerostic_webhooks.wsgi import EnvironHeaders, body_length, wsgi_input

SECRET = "whsec_wsgi_test"


class Untouchable(io.RawIOBase):
    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the input must not be read")


class Trickling(io.RawIOBase):
    """An input that hands over at most 100 bytes a read, as a raw socket may."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.data.read(100 if size < 0 else min(size, 100))


def environ(**extra: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": "application/json",
        "HTTP_HOST": "example.test",
        "HTTP_X_AEROSTIC_SIGNATURE": "sha256=abc",
        "wsgi.errors": io.StringIO(),  # not a header, and not a string
        **extra,
    }


def test_headers_are_found_by_name_in_any_case() -> None:
    headers = EnvironHeaders(environ())
    assert headers["X-Aerostic-Signature"] == "sha256=abc"
    assert headers.get("x-aerostic-signature") == "sha256=abc"
    assert headers["content-type"] == "application/json"
    assert headers.get("Content-Length") is None
    assert headers.get("X-Missing") is None
    assert "Host" in headers
    assert _header(headers, SIGNATURE_HEADER) == "sha256=abc"


def test_headers_iterate_as_the_request_had_them() -> None:
    # HTTP_CONTENT_TYPE: a server that copied the unprefixed CONTENT_TYPE, as some do
    env: dict[Any, Any] = environ(SERVER_NAME="x", HTTP_CONTENT_TYPE="application/json")
    env.update({"HTTP_X_ODD": b"bytes are no header", 7: "a key that is no string"})
    headers = EnvironHeaders(env)
    assert sorted(headers) == ["Content-Type", "Host", "X-Aerostic-Signature"]
    assert len(headers) == 3
    assert headers.get("X-Odd") is None
    assert dict(headers)["Host"] == "example.test"


def test_content_length_is_a_header_too() -> None:
    headers = EnvironHeaders(environ(CONTENT_LENGTH="5"))
    assert headers["content-length"] == "5"
    assert "Content-Length" in list(headers)


def test_a_declared_body_is_read_up_to_its_length_and_no_further() -> None:
    stream = io.BytesIO(b"0123456789" + b"NEXT REQUEST")
    read, length = wsgi_input(environ(CONTENT_LENGTH="10", **{"wsgi.input": stream}))
    assert length == 10
    assert read(4) == b"0123"
    assert read(65536) == b"456789"
    assert read(65536) == b""
    assert stream.read() == b"NEXT REQUEST"  # left for the server


def test_a_terminated_body_is_read_to_its_end() -> None:
    stream = io.BytesIO(b"chunked body")
    read, length = wsgi_input(environ(**{"wsgi.input": stream, "wsgi.input_terminated": True}))
    assert length is None
    assert read(65536) == b"chunked body"
    assert read(65536) == b""


def test_a_terminated_body_is_read_to_its_end_whatever_its_declared_length() -> None:
    stream = io.BytesIO(b"a chunked body, with a Content-Length the server passed along")
    env = environ(
        CONTENT_LENGTH="10",
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input": stream, "wsgi.input_terminated": True},
    )
    read, length = wsgi_input(env)
    assert length is None  # chunked: Transfer-Encoding wins over Content-Length
    assert read(65536) == stream.getvalue()
    assert body_length(environ(CONTENT_LENGTH="10", HTTP_TRANSFER_ENCODING="gzip, Chunked")) is None
    assert body_length(environ(CONTENT_LENGTH="10", HTTP_TRANSFER_ENCODING="identity")) == 10


@pytest.mark.parametrize(
    "extra",
    [
        {"wsgi.input": Untouchable()},
        {},
        {"wsgi.input": Untouchable(), "HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": "5"},
    ],
)
def test_a_body_without_length_or_end_reads_as_empty(extra: dict[str, Any]) -> None:
    read, length = wsgi_input(environ(**extra))
    assert length is None
    assert read(65536) == b""


@pytest.mark.parametrize("stream_of", [io.BytesIO, Trickling], ids=["whole reads", "short reads"])
def test_a_delivery_read_off_the_environ_is_received(
    stream_of: Callable[[bytes], io.BufferedIOBase | io.RawIOBase],
) -> None:
    """Read to its Content-Length, whether the server hands the body over in one read or in
    short ones, and not a byte past it."""
    body = sample_body("message.read")
    assert len(body) > 100
    stream = stream_of(body + b"trailing")
    env = environ(
        CONTENT_LENGTH=str(len(body)),
        HTTP_X_AEROSTIC_SIGNATURE=sign(body, SECRET),
        **{"wsgi.input": stream},
    )
    with WebhookReceiver(SECRET, store=MemoryStore(), process="external") as receiver:
        assert respond(receiver, EnvironHeaders(env), *wsgi_input(env)) == (
            200,
            b'{"received": true}',
        )
        assert receiver.store.get("message.read:msg_def456") is not None
    assert stream.read() == b"trailing"
