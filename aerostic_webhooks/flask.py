"""Flask adapter: ``app.register_blueprint(webhook_blueprint(webhooks), url_prefix=...)``."""

from __future__ import annotations

import io
from typing import Any, cast

from flask import Blueprint, Request, Response, current_app, request
from flask.blueprints import BlueprintSetupState

from .receiver import WebhookReceiver
from .response import CONTENT_TYPE, respond
from .wsgi import wsgi_input

__all__ = ["webhook_blueprint"]


def webhook_blueprint(receiver: WebhookReceiver, name: str = "aerostic_webhooks") -> Blueprint:
    """A blueprint answering ``POST`` at its prefix, with or without a trailing slash.

    The raw body is read from ``wsgi.input``, bounded by the receiver's limit (the route's
    only limit: Flask's ``MAX_CONTENT_LENGTH``, JSON and form parsing are never touched), or
    taken from Werkzeug if a ``before_request`` hook of the app read it first. Give each
    blueprint its own ``name`` to mount several receivers on one app. The receiver's worker
    starts with the first request the app serves, to any route.
    """
    blueprint = Blueprint(name, __name__)

    def receive_webhook() -> Response:
        # The request itself: each attribute read through the proxy is a context lookup.
        current: Request = cast(Any, request)._get_current_object()
        if "stream" in current.__dict__:  # a hook of the app read the body: Werkzeug has it
            data = current.get_data(cache=True)
            status, body = respond(receiver, current.headers, io.BytesIO(data).read, len(data))
        else:
            status, body = respond(receiver, current.headers, *wsgi_input(current.environ))
        return Response(body, status=status, content_type=CONTENT_TYPE)

    def strip_prefix_slash(state: BlueprintSetupState) -> None:
        # Runs before the rules are added. Flask would join a prefix ending in "/" with each
        # rule into the slashed spelling, and redirect the other.
        if not state.url_prefix:
            raise ValueError(f"register the {name!r} blueprint with a url_prefix (a path)")
        state.url_prefix = state.url_prefix.rstrip("/") or "/"

    blueprint.record(strip_prefix_slash)
    for rule in ("", "/"):  # both spellings, so a sender is never redirected
        blueprint.add_url_rule(
            rule,
            endpoint="receive_slash" if rule else "receive",
            view_func=receive_webhook,
            methods=["POST"],
            strict_slashes=True,
            provide_automatic_options=False,
        )

    # Flask has no "serving starts" hook: its first request is the closest. Registration is
    # too early: every `flask` command (routes, shell, db upgrade) loads the app without
    # serving, and so does the reloader's parent of `flask run --debug`, whose code never
    # reloads; a worker there would run handlers, stale ones, and strand records at exit.
    def start_worker() -> None:
        receiver.start_serving()
        # Then out of the app's way: its other requests need not pay for this hook. A new
        # list, not a removal: Flask may be iterating over the old one right now.
        hooks = cast(Any, current_app)._get_current_object().before_request_funcs
        hooks[None] = [hook for hook in hooks.get(None, ()) if hook is not start_worker]

    blueprint.before_app_request(start_worker)
    return blueprint
