"""The response contract: one table from outcome to HTTP status and JSON body, for every adapter."""

from __future__ import annotations

import json

from .errors import WebhookError
from .receiver import Receipt

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "application/json"
_ACCEPTED = (200, json.dumps({"received": True}).encode())
_ERROR_BODIES: dict[str, bytes] = {}


def render(outcome: Receipt | WebhookError) -> tuple[int, bytes]:
    """``(status, JSON body)`` for a receipt (200, new or duplicate) or a refusal."""
    if isinstance(outcome, Receipt):
        return _ACCEPTED
    message = outcome.public_message
    body = _ERROR_BODIES.get(message)
    if body is None:
        body = _ERROR_BODIES[message] = json.dumps({"error": message}).encode()
    return outcome.status_code, body
