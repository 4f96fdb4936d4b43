"""A Starlette app receiving Aerostic webhooks.

Set ``AEROSTIC_WEBHOOK_SECRET``, then ``uvicorn --app-dir examples starlette_app:app``.
``create_app(receiver)`` builds the app around another receiver.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from aerostic_webhooks import ContactCreated, MessageReceived, WebhookReceiver
from aerostic_webhooks.starlette import webhook_lifespan, webhook_route

logger = logging.getLogger("examples.starlette_app")
# So that uvicorn shows what the handlers log; a no-op where the host already
# configured logging. Your own app configures logging its own way.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

# The secret comes from $AEROSTIC_WEBHOOK_SECRET: without it, this fails here, at start-up.
webhooks = WebhookReceiver()


@webhooks.on("message.received")
async def on_message(event: MessageReceived) -> None:
    logger.info("message %s received (%s)", event.data.id, event.data.type)


@webhooks.on("contact.created")
def on_contact(event: ContactCreated) -> None:
    logger.info("contact %s created", event.data.id)


def create_app(receiver: WebhookReceiver = webhooks) -> Starlette:
    """The app: the webhook endpoint at /webhooks/aerostic, its worker run by the lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The worker starts with the app and is drained when it stops; your own start-up
        # and shutdown go around the yield.
        async with webhook_lifespan(receiver)(app):
            yield

    return Starlette(routes=[webhook_route("/webhooks/aerostic", receiver)], lifespan=lifespan)


app = create_app()
