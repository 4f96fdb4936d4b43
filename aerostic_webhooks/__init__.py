"""Receive Aerostic webhooks: verified, typed, recorded, deduplicated, handled in the background."""

from .errors import (
    InvalidPayload,
    InvalidSignature,
    PayloadTooLarge,
    ProcessingFailed,
    StoreUnavailable,
    WebhookError,
)
from .events import (
    ContactCreated,
    Event,
    MessageDelivered,
    MessageFailed,
    MessageRead,
    MessageReceived,
    MessageSent,
    UnknownEvent,
    parse_event,
)
from .receiver import Receipt, WebhookReceiver
from .signature import sign, verify_signature
from .stores import MemoryStore, SQLiteStore

__all__ = [
    "ContactCreated",
    "Event",
    "InvalidPayload",
    "InvalidSignature",
    "MemoryStore",
    "MessageDelivered",
    "MessageFailed",
    "MessageRead",
    "MessageReceived",
    "MessageSent",
    "PayloadTooLarge",
    "ProcessingFailed",
    "Receipt",
    "SQLiteStore",
    "StoreUnavailable",
    "UnknownEvent",
    "WebhookError",
    "WebhookReceiver",
    "parse_event",
    "sign",
    "verify_signature",
]
__version__ = "0.1.0"
