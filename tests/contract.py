"""The response contract as data: requests every adapter must answer the same way."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from aerostic_webhooks import sign
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body

__all__ = ["Case", "cases", "sample_body", "signed"]

SECRET = "whsec_adapter_secret"
LIMIT = 4096  # the receivers under test use a small max_body_bytes

ACCEPTED = {"received": True}
BAD_SIGNATURE = {"error": "Invalid signature"}
BAD_PAYLOAD = {"error": "Invalid payload"}
TOO_LARGE = {"error": "Payload too large"}
UNAVAILABLE = {"error": "Temporarily unavailable"}
FAILED = {"error": "Processing failed"}


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    json: Mapping[str, object] = field(default_factory=lambda: ACCEPTED)


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Aerostic-Signature": sign(body, secret)}


def _deep(levels: int) -> bytes:
    payload = {"event": "order.shipped", "timestamp": "2026-01-30T15:45:00Z", "data": {"x": 0}}
    text = json.dumps(payload).replace('{"x": 0}', '{"x": ' + "[" * levels + "]" * levels + "}")
    return text.encode()


def _extra_fields() -> bytes:
    payload = json.loads(sample_body("message.received"))
    payload["brand_new"] = {"nested": True}
    payload["data"]["reaction"] = "thumbs-up"
    return json.dumps(payload).encode()


def cases() -> list[Case]:
    """Every row of the response contract and the nasty inputs, as requests."""
    received = sample_body("message.received", id="contract")
    unknown = json.dumps(
        {"event": "order.shipped", "timestamp": "2026-01-30T15:45:00Z", "data": {"id": "o1"}}
    ).encode()
    huge = b'{"event": "message.received", "pad": "' + b"x" * (LIMIT + 10) + b'"}'
    result = [
        Case(f"sample {event_type}", body, signed(body))
        for event_type in SAMPLE_PAYLOADS
        for body in [sample_body(event_type, id=f"contract-{event_type}")]
    ]
    result += [
        Case("unknown event type", unknown, signed(unknown)),
        Case("extra fields", _extra_fields(), signed(_extra_fields())),
        Case("missing signature", received, {}, 401, BAD_SIGNATURE),
        Case("empty signature", received, {"X-Aerostic-Signature": ""}, 401, BAD_SIGNATURE),
        Case("wrong secret", received, signed(received, "guess"), 401, BAD_SIGNATURE),
        Case(
            "wrong prefix",
            received,
            {"X-Aerostic-Signature": "sha1=" + sign(received, SECRET)[7:]},
            401,
            BAD_SIGNATURE,
        ),
        Case(
            "odd hex",
            received,
            {"X-Aerostic-Signature": sign(received, SECRET)[:-1]},
            401,
            BAD_SIGNATURE,
        ),
        Case(
            "non-hex",
            received,
            {"X-Aerostic-Signature": "sha256=" + "zz" * 32},
            401,
            BAD_SIGNATURE,
        ),
        Case(
            "non-ASCII header",
            received,
            {"X-Aerostic-Signature": "sha256=" + "\u00e9" * 64},
            401,
            BAD_SIGNATURE,
        ),
        Case("empty body, signed", b"", signed(b""), 400, BAD_PAYLOAD),
        Case("empty body, unsigned", b"", {}, 401, BAD_SIGNATURE),
        Case("not JSON", b"{nope", signed(b"{nope"), 400, BAD_PAYLOAD),
        Case("invalid UTF-8", b'{"event": "\xff"}', signed(b'{"event": "\xff"}'), 400, BAD_PAYLOAD),
        Case("JSON array", b"[]", signed(b"[]"), 400, BAD_PAYLOAD),
        Case("deep JSON", _deep(1500), signed(_deep(1500)), 400, BAD_PAYLOAD),
        Case(
            "invalid event",
            b'{"event": "message.read"}',
            signed(b'{"event": "message.read"}'),
            400,
            BAD_PAYLOAD,
        ),
        Case("over the limit", huge, signed(huge), 413, TOO_LARGE),
        Case("over the limit, unsigned", huge, {}, 413, TOO_LARGE),
    ]
    return result
