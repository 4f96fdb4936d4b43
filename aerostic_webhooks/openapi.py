"""The webhook endpoint in OpenAPI 3 terms, for any framework that publishes a schema."""

from __future__ import annotations

from typing import Any

from .errors import (
    InvalidPayload,
    InvalidSignature,
    PayloadTooLarge,
    ProcessingFailed,
    StoreUnavailable,
    WebhookError,
)
from .events import event_json_schema
from .signature import SIGNATURE_HEADER

__all__ = ["operation_extra", "responses"]

# What the receiver accepts (signature.py): any of the comma-separated values well formed,
# its prefix in any case. ECMA-262 syntax, which has no inline flags.
_SIGNATURE_PATTERN = r"(^|,)\s*[sS][hH][aA]256=[0-9a-fA-F]{64}\s*(,|$)"


def responses(*, inline: bool = False) -> dict[int | str, dict[str, Any]]:
    """The operation's ``responses``: 200 and each refusal of the response contract (with
    the 500 of a failed handler if the receiver runs its handlers ``inline``)."""
    described: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/json": {"example": {"received": True}}}},
    }
    errors: list[type[WebhookError]] = [
        InvalidPayload,
        InvalidSignature,
        PayloadTooLarge,
        StoreUnavailable,
    ]
    if inline:
        errors.append(ProcessingFailed)
    for error in errors:
        described[error.status_code] = {
            "description": error.__doc__,
            "content": {"application/json": {"example": {"error": error.public_message}}},
        }
    return described


def operation_extra() -> dict[str, Any]:
    """The signature header and the request body (the union of the event models)."""
    return {
        "parameters": [
            {
                "name": SIGNATURE_HEADER,
                "in": "header",
                "required": True,
                "description": (
                    "sha256=<hex HMAC-SHA256 of the raw body, keyed by the secret>; while "
                    "secrets rotate, several such values separated by commas"
                ),
                # A search, as JSON Schema's patterns are: one of the comma-separated values.
                "schema": {"type": "string", "pattern": _SIGNATURE_PATTERN},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": event_json_schema()}},
        },
    }
