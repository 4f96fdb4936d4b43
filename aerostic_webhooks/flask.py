"""Flask adapter: ``app.register_blueprint(webhook_blueprint(webhooks), url_prefix=...)``."""

from __future__ import annotations

from flask import Blueprint, Response, request
from flask.blueprints import BlueprintSetupState

from .receiver import WebhookReceiver
from .response import CONTENT_TYPE, respond
from .wsgi import wsgi_input

__all__ = ["webhook_blueprint"]


def webhook_blueprint(receiver: WebhookReceiver, name: str = "aerostic_webhooks") -> Blueprint:
    """A blueprint answering ``POST`` at its prefix, with or without a trailing slash.

    The raw body is read from ``wsgi.input``, bounded by the receiver's limit (which is the
    route's limit: Flask's ``MAX_CONTENT_LENGTH``, its JSON and form parsing are never
    touched). Give each blueprint its own ``name`` to mount several receivers on one app.
    The receiver's worker starts when the blueprint is registered.
    """
    blueprint = Blueprint(name, __name__)

    def receive_webhook() -> Response:
        read, length = wsgi_input(request.environ)
        status, body = respond(receiver, request.headers, read, length)
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
