"""The response contract: from a request's body and headers to an HTTP status and JSON body.

``render`` is the one table every adapter answers from; ``respond`` is the whole request for
a synchronous adapter, which only has to say how to read its body and write the result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from .errors import InvalidPayload, PayloadTooLarge, WebhookError
from .receiver import Headers, Receipt, WebhookReceiver

__all__ = [
    "CONTENT_TYPE",
    "declared_length",
    "read_limited",
    "read_limited_async",
    "receive_request",
    "receive_request_async",
    "render",
    "respond",
    "respond_async",
    "too_large",
]

logger = logging.getLogger("aerostic_webhooks")

CONTENT_TYPE = "application/json"
_ACCEPTED = (200, json.dumps({"received": True}).encode())
_ERROR_BODIES: dict[str, bytes] = {}
_CHUNK = 65536


def render(outcome: Receipt | WebhookError) -> tuple[int, bytes]:
    """``(status, JSON body)`` for a receipt (200, new or duplicate) or a refusal."""
    if isinstance(outcome, Receipt):
        return _ACCEPTED
    message = outcome.public_message
    body = _ERROR_BODIES.get(message)
    if body is None:
        body = _ERROR_BODIES[message] = json.dumps({"error": message}).encode()
    return outcome.status_code, body


def declared_length(value: str | int | None) -> int | None:
    """A ``Content-Length`` as an int, or ``None`` when absent or not a number."""
    if isinstance(value, int):
        return value
    text = (value or "").strip()
    return int(text) if text.isascii() and text.isdigit() else None


def too_large(declared_length: int | None, limit: int) -> PayloadTooLarge | None:
    """The refusal for a declared ``Content-Length`` over ``limit``, before anything is read."""
    if declared_length is not None and declared_length > limit:
        logger.warning("rejected a delivery: declared length %d is over %d", declared_length, limit)
        return PayloadTooLarge(f"declared length {declared_length} is over the limit of {limit}")
    return None


def read_limited(read: Callable[[int], bytes], limit: int) -> bytes:
    """Read a body to its end, but never more than ``limit + 1`` bytes (chunked bodies too).

    A body the server cannot deliver (bad chunked framing, a client gone mid-body) is a 400.
    """
    chunks: list[bytes] = []
    total = 0
    try:
        while chunk := read(min(_CHUNK, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _over(limit)
    except (WebhookError, MemoryError):
        raise
    except Exception as error:
        raise _unreadable(error) from None
    return b"".join(chunks)


async def read_limited_async(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """``read_limited`` for an ASGI body stream: stops at the first chunk past ``limit``."""
    body = bytearray()
    try:
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                raise _over(limit)
    except (WebhookError, MemoryError):
        raise
    except Exception as error:  # e.g. Starlette's ClientDisconnect
        raise _unreadable(error) from None
    return bytes(body)


def _over(limit: int) -> PayloadTooLarge:
    logger.warning("rejected a delivery: body is over the limit of %d bytes", limit)
    return PayloadTooLarge(f"body is over the limit of {limit} bytes")


def _unreadable(error: Exception) -> InvalidPayload:
    logger.warning("rejected a delivery: its body could not be read (%s)", type(error).__name__)
    return InvalidPayload(f"body could not be read: {type(error).__name__}")


def receive_request(
    receiver: WebhookReceiver,
    headers: Headers,
    read: Callable[[int], bytes],
    length: int | None,
    limit: int | None = None,
) -> Receipt:
    """Refuse a declared length over the limit, read the body (bounded) and receive it.

    ``limit`` lowers the receiver's own, for a host with a body limit of its own (Django's
    ``DATA_UPLOAD_MAX_MEMORY_SIZE``)."""
    limit = _limit(receiver, limit)
    refused = too_large(length, limit)
    if refused is not None:
        raise refused
    return receiver.receive(read_limited(read, limit), headers)


async def receive_request_async(
    receiver: WebhookReceiver,
    headers: Headers,
    chunks: AsyncIterator[bytes],
    length: int | None,
    limit: int | None = None,
) -> Receipt:
    """``receive_request`` for an asyncio server: nothing that blocks runs on the event loop."""
    limit = _limit(receiver, limit)
    refused = too_large(length, limit)
    if refused is not None:
        raise refused
    body = await read_limited_async(chunks, limit)
    return await receiver.receive_async(body, headers)


def _limit(receiver: WebhookReceiver, limit: int | None) -> int:
    return receiver.max_body_bytes if limit is None else min(limit, receiver.max_body_bytes)


def respond(
    receiver: WebhookReceiver,
    headers: Headers,
    read: Callable[[int], bytes],
    length: int | None,
    limit: int | None = None,
) -> tuple[int, bytes]:
    """A synchronous adapter's whole request: ``receive_request``, then the contract's answer."""
    try:
        return render(receive_request(receiver, headers, read, length, limit))
    except WebhookError as error:
        return render(error)


async def respond_async(
    receiver: WebhookReceiver,
    headers: Headers,
    chunks: AsyncIterator[bytes],
    length: int | None,
    limit: int | None = None,
) -> tuple[int, bytes]:
    """An asyncio adapter's whole request: ``receive_request_async``, then the answer."""
    try:
        return render(await receive_request_async(receiver, headers, chunks, length, limit))
    except WebhookError as error:
        return render(error)
