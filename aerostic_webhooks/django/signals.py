"""Django signals sent from the worker (never from the request) for each event.

``webhook_received`` for every event and one signal per type, each with ``sender`` the event
class and ``event`` and ``event_id`` as arguments; ``webhook_failed`` (with ``error`` too)
when a receiver raised. A receiver that raises gets the event retried.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = [
    "SIGNALS_BY_TYPE",
    "contact_created",
    "message_delivered",
    "message_failed",
    "message_read",
    "message_received",
    "message_sent",
    "webhook_failed",
    "webhook_received",
]

webhook_received = Signal()
webhook_failed = Signal()
message_received = Signal()
message_sent = Signal()
message_delivered = Signal()
message_read = Signal()
message_failed = Signal()
contact_created = Signal()

SIGNALS_BY_TYPE: dict[str, Signal] = {
    "message.received": message_received,
    "message.sent": message_sent,
    "message.delivered": message_delivered,
    "message.read": message_read,
    "message.failed": message_failed,
    "contact.created": contact_created,
}
