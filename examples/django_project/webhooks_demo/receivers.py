"""What the example does with Aerostic events: Django signal receivers.

They run on the webhook worker (a background thread of the web process, or
``manage.py aerostic_webhooks_worker``), after Aerostic got its 200, never in the request.
Delivery is at least once: a receiver that raises gets the event retried with backoff, and a
retry sends every signal of the event again, so make receivers idempotent (key your work on
``event_id``). Log ids, never phone numbers or message text.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import receiver

from aerostic_webhooks import ContactCreated, Event, MessageFailed, MessageReceived
from aerostic_webhooks.django.signals import (
    contact_created,
    message_failed,
    message_received,
    webhook_failed,
    webhook_received,
)

logger = logging.getLogger("webhooks_demo")


@receiver(webhook_received)
def on_any_event(sender: type[Event], event: Event, event_id: str, **kwargs: Any) -> None:
    logger.info("event %s (%s)", event_id, event.event)


@receiver(message_received)
def on_message(sender: type[Event], event: MessageReceived, event_id: str, **kwargs: Any) -> None:
    logger.info("message %s received (%s)", event.data.id, event.data.type)


@receiver(message_failed)
def on_failure(sender: type[Event], event: MessageFailed, event_id: str, **kwargs: Any) -> None:
    logger.warning("message %s failed: %s", event.data.id, event.data.error.code)


@receiver(contact_created)
def on_contact(sender: type[Event], event: ContactCreated, event_id: str, **kwargs: Any) -> None:
    logger.info("contact %s created with %d tag(s)", event.data.id, len(event.data.tags))


@receiver(webhook_failed)
def on_receiver_error(
    sender: type[Event], event: Event, event_id: str, error: BaseException, **kwargs: Any
) -> None:
    logger.error("a receiver failed for %s: %s", event_id, type(error).__name__)
