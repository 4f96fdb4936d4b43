"""A Flask app receiving Aerostic webhooks.

Set ``AEROSTIC_WEBHOOK_SECRET``, then run ``flask --app examples/flask_app run`` (Flask finds
``create_app``), or in production ``gunicorn --chdir examples -w 4 'flask_app:create_app()'``.
Deliveries are recorded in the SQLite inbox at ``$AEROSTIC_WEBHOOKS_DB`` (default
``./aerostic_webhooks.sqlite3``), which all gunicorn workers of this host share.
"""

from __future__ import annotations

import logging

from flask import Flask

from aerostic_webhooks import (
    ContactCreated,
    Event,
    MessageFailed,
    MessageReceived,
    WebhookReceiver,
)
from aerostic_webhooks.flask import webhook_blueprint

logger = logging.getLogger("examples.flask_app")
# So that `flask run` or gunicorn shows what the handlers log; a no-op where the host already
# configured logging. Your own app configures logging its own way.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

# The secret comes from $AEROSTIC_WEBHOOK_SECRET: without it, this fails here, at start-up.
webhooks = WebhookReceiver()


@webhooks.on("message.received")
def on_message(event: MessageReceived) -> None:
    # Runs on the receiver's worker, after Aerostic got its 200. Make it idempotent: a retry
    # runs it again. Log ids, not phone numbers or message text.
    logger.info("message %s received (%s)", event.data.id, event.data.type)


@webhooks.on("message.failed")
def on_failure(event: MessageFailed) -> None:
    logger.warning("message %s failed: %s", event.data.id, event.data.error.code)


@webhooks.on("contact.created")
def on_contact(event: ContactCreated) -> None:
    logger.info("contact %s created with tags %s", event.data.id, event.data.tags)


@webhooks.on_error
def on_handler_error(event: Event, error: BaseException) -> None:
    logger.error("a handler failed for %s: %s", event.event, type(error).__name__)


def create_app(receiver: WebhookReceiver = webhooks) -> Flask:
    """The application: the webhook endpoint at /webhooks/aerostic (with or without slash)."""
    app = Flask(__name__)
    app.register_blueprint(webhook_blueprint(receiver), url_prefix="/webhooks/aerostic")

    @app.get("/")
    def index() -> str:
        return "POST Aerostic webhooks to /webhooks/aerostic\n"

    return app
