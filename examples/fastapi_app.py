"""A FastAPI app receiving Aerostic webhooks.

Set ``AEROSTIC_WEBHOOK_SECRET``, then ``uvicorn --app-dir examples fastapi_app:app``; several
workers (``--workers 4``) share the SQLite inbox at ``$AEROSTIC_WEBHOOKS_DB``. The endpoint is
documented at /docs. ``create_app(receiver)`` builds the app around another receiver.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI

from aerostic_webhooks import Event, MessageFailed, MessageReceived, WebhookReceiver
from aerostic_webhooks.fastapi import verified_event, webhook_router

logger = logging.getLogger("examples.fastapi_app")
# So that uvicorn shows what the handlers log; a no-op where the host already
# configured logging. Your own app configures logging its own way.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

# The secret comes from $AEROSTIC_WEBHOOK_SECRET: without it, this fails here, at start-up.
webhooks = WebhookReceiver()


@webhooks.on("message.received")
async def on_message(event: MessageReceived) -> None:
    # Runs after Aerostic got its 200, on the receiver's worker. Idempotent: a retry runs it
    # again. Log ids, never phone numbers or message text.
    logger.info("message %s received (%s)", event.data.id, event.data.type)


@webhooks.on("message.failed")
def on_failure(event: MessageFailed) -> None:
    logger.warning("message %s failed: %s", event.data.id, event.data.error.code)


def create_app(receiver: WebhookReceiver = webhooks) -> FastAPI:
    """The app: the webhook router (its lifespan runs the worker) beside the app's own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("starting")  # your own start-up and shutdown go here
        yield

    app = FastAPI(title="Aerostic webhooks example", lifespan=lifespan)
    app.include_router(webhook_router(receiver), prefix="/webhooks/aerostic")

    @app.post("/custom-webhook")
    async def custom(event: Annotated[Event, Depends(verified_event(receiver))]) -> dict[str, str]:
        """An endpoint of your own, with the same verification, as a dependency."""
        return {"received": event.event}

    return app


app = create_app()
