"""Flask adapter: ``app.register_blueprint(webhook_blueprint(webhooks), url_prefix=...)``."""

from __future__ import annotations

from flask import Blueprint, Response, request
from flask.blueprints import BlueprintSetupState

from .receiver import WebhookReceiver
from .response import CONTENT_TYPE, respond

__all__ = ["webhook_blueprint"]


def webhook_blueprint(receiver: WebhookReceiver, name: str = "aerostic_webhooks") -> Blueprint:
    """A blueprint answering ``POST`` at its prefix, with or without a trailing slash.

    The raw body is read from the WSGI stream, bounded by the receiver's limit; Flask's JSON
    and form parsing are never touched. Give each blueprint its own ``name`` to mount several
    receivers on one app. The receiver's worker starts when the blueprint is registered.
    """
    blueprint = Blueprint(name, __name__)

    def receive_webhook() -> Response:
        status, body = respond(
            receiver, request.headers, request.stream.read, request.content_length
        )
        return Response(body, status=status, content_type=CONTENT_TYPE)

    for rule in ("", "/"):  # both spellings, so a sender is never redirected
        blueprint.add_url_rule(
            rule,
            endpoint="receive_slash" if rule else "receive",
            view_func=receive_webhook,
            methods=["POST"],
            strict_slashes=True,
            provide_automatic_options=False,
        )

    def start_worker(state: BlueprintSetupState) -> None:
        receiver.start_serving()

    blueprint.record(start_worker)
    return blueprint
