"""Helpers for tests: the sender's sample payloads, signed as the sender signs them, and
one call to deliver them through each framework's test client. The pytest fixtures are in
``aerostic_webhooks.pytest_plugin``, loaded by pytest automatically."""

from __future__ import annotations

import copy
import json
from typing import Any

from .events import parse_event
from .signature import SIGNATURE_HEADER, sign

__all__ = [
    "SAMPLE_PAYLOADS",
    "deliver_asgi",
    "deliver_django",
    "deliver_flask",
    "sample_body",
    "sample_payload",
    "signed_request",
]

#: The six sample events from Aerostic's webhook documentation, exactly as published.
SAMPLE_PAYLOADS: dict[str, dict[str, Any]] = {
    "message.received": {
        "event": "message.received",
        "timestamp": "2026-01-30T15:45:00Z",
        "data": {
            "id": "msg_abc123",
            "from": "+919876543210",
            "type": "text",
            "text": "Hi, I need help with my order",
            "wamid": "wamid.ABGGFlC...",
        },
    },
    "message.sent": {
        "event": "message.sent",
        "timestamp": "2026-01-30T15:45:05Z",
        "data": {
            "id": "msg_def456",
            "to": "+919876543210",
            "status": "sent",
            "wamid": "wamid.ABGGFlC...",
        },
    },
    "message.delivered": {
        "event": "message.delivered",
        "timestamp": "2026-01-30T15:45:10Z",
        "data": {
            "id": "msg_def456",
            "to": "+919876543210",
            "status": "delivered",
            "deliveredAt": "2026-01-30T15:45:10Z",
        },
    },
    "message.read": {
        "event": "message.read",
        "timestamp": "2026-01-30T15:46:00Z",
        "data": {
            "id": "msg_def456",
            "to": "+919876543210",
            "status": "read",
            "readAt": "2026-01-30T15:46:00Z",
        },
    },
    "message.failed": {
        "event": "message.failed",
        "timestamp": "2026-01-30T15:45:05Z",
        "data": {
            "id": "msg_ghi789",
            "to": "+919876543210",
            "status": "failed",
            "error": {"code": "INVALID_RECIPIENT", "message": "Phone number is not on WhatsApp"},
        },
    },
    "contact.created": {
        "event": "contact.created",
        "timestamp": "2026-01-30T15:45:00Z",
        "data": {
            "id": "contact_xyz",
            "phone": "+919876543210",
            "name": "John Doe",
            "tags": ["new", "website"],
        },
    },
}


def sample_payload(event_type: str, **data_overrides: Any) -> dict[str, Any]:
    """A deep copy of the documented sample for ``event_type``, with ``data`` fields overridden.

    Fields are named as in Python (``from_``, ``delivered_at``) or as on the wire; any other
    name adds a field, as the sender may.
    """
    try:
        payload = copy.deepcopy(SAMPLE_PAYLOADS[event_type])
    except KeyError:
        known = ", ".join(SAMPLE_PAYLOADS)
        raise ValueError(f"no sample for {event_type!r}; samples exist for {known}") from None
    # The typed model the sample parses into names its fields and their wire aliases.
    fields = type(parse_event(json.dumps(payload)).data).model_fields
    for name, value in data_overrides.items():
        field = fields.get(name)
        payload["data"][field.alias if field is not None and field.alias else name] = value
    return payload


def sample_body(event_type: str, **data_overrides: Any) -> bytes:
    """``sample_payload`` as UTF-8 JSON bytes (``json.dumps`` layout, non-ASCII kept as is)."""
    return _encode(sample_payload(event_type, **data_overrides))


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def signed_request(
    payload: dict[str, Any] | bytes, secret: str | bytes
) -> tuple[bytes, dict[str, str]]:
    """``(body, headers)`` for a delivery signed with ``secret``, ready for ``receive``."""
    body = payload if isinstance(payload, bytes) else _encode(payload)
    return body, {SIGNATURE_HEADER: sign(body, secret), "Content-Type": "application/json"}


Payload = dict[str, Any] | bytes | str


def request_for(payload: Payload, secret: str | bytes) -> tuple[bytes, dict[str, str]]:
    """A payload given as a dict, raw bytes, or a documented event type (its sample)."""
    if isinstance(payload, str):
        payload = sample_payload(payload)
    return signed_request(payload, secret)


def deliver_flask(
    client: Any, payload: Payload, secret: str | bytes, url: str = "/webhooks/aerostic"
) -> Any:
    """POST a signed delivery through a Flask test client (``app.test_client()``)."""
    body, headers = request_for(payload, secret)
    return client.post(url, data=body, headers=headers)


def deliver_django(
    client: Any, payload: Payload, secret: str | bytes, url: str = "/webhooks/aerostic/"
) -> Any:
    """POST a signed delivery through Django's test ``Client``."""
    body, headers = request_for(payload, secret)
    return client.post(url, data=body, content_type="application/json", headers=headers)


def deliver_asgi(
    client: Any, payload: Payload, secret: str | bytes, url: str = "/webhooks/aerostic"
) -> Any:
    """POST a signed delivery through Starlette's or FastAPI's ``TestClient`` (or httpx)."""
    body, headers = request_for(payload, secret)
    return client.post(url, content=body, headers=headers)
