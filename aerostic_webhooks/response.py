"""The response contract: from a request's body and headers to an HTTP status and JSON body.

``render`` is the one table every adapter answers from; ``respond`` is the whole request for
a synchronous adapter, which only has to say how to read its body and write the result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from .errors import PayloadTooLarge, WebhookError
from .receiver import Headers, Receipt, WebhookReceiver

__all__ = ["CONTENT_TYPE", "read_limited", "render", "respond"]

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


def too_large(declared_length: int | None, limit: int) -> PayloadTooLarge | None:
    """The refusal for a declared ``Content-Length`` over ``limit``, before anything is read."""
    if declared_length is not None and declared_length > limit:
        logger.warning("rejected a delivery: declared length %d is over %d", declared_length, limit)
        return PayloadTooLarge(f"declared length {declared_length} is over the limit of {limit}")
    return None


def read_limited(read: Callable[[int], bytes], limit: int) -> bytes:
    """Read a body to its end, but never more than ``limit + 1`` bytes (chunked bodies too)."""
    chunks: list[bytes] = []
    total = 0
    while chunk := read(min(_CHUNK, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            logger.warning("rejected a delivery: body is over the limit of %d bytes", limit)
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    return b"".join(chunks)


def respond(
    receiver: WebhookReceiver,
    headers: Headers,
    read: Callable[[int], bytes],
    declared_length: int | None,
) -> tuple[int, bytes]:
    """Read (bounded), receive and render one request: all a synchronous adapter needs."""
    outcome: Receipt | WebhookError | None = too_large(declared_length, receiver.max_body_bytes)
    if outcome is None:
        try:
            outcome = receiver.receive(read_limited(read, receiver.max_body_bytes), headers)
        except WebhookError as error:
            outcome = error
    return render(outcome)
