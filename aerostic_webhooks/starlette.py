"""Starlette adapter: ``Starlette(routes=[webhook_route("/webhooks/aerostic", webhooks)])``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from .receiver import SEPARATE_LINES, WebhookReceiver
from .response import CONTENT_TYPE, declared_length, respond_async

__all__ = ["receive_request", "webhook_lifespan", "webhook_route"]

SEPARATE_LINES.add(Headers)  # a repeated header reads as under WSGI: its lines joined


async def receive_request(receiver: WebhookReceiver, request: Request) -> Response:
    """The whole delivery: the body streamed (bounded), received off the loop, answered."""
    length = declared_length(request.headers.get("content-length"))
    status, body = await respond_async(receiver, request.headers, request.stream(), length)
    return Response(body, status_code=status, media_type=CONTENT_TYPE)


class _BothSlashes(Route):
    """A route that also matches its path with a trailing slash, so nothing redirects."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path: str = scope.get("path", "")
        # The part a route matches is the path below its Mount (or the app's root path): at a
        # mount's root that part is "/", which is the spelling itself, not one to strip.
        root: str = scope.get("root_path", "")
        below = path[len(root) :] if root and path.startswith(root + "/") else path
        if len(below) > 1 and below.endswith("/"):
            scope = {**scope, "path": path[:-1]}
        return super().matches(scope)


def webhook_route(
    path: str, receiver: WebhookReceiver, *, name: str = "aerostic_webhooks"
) -> Route:
    """A ``Route`` answering ``POST`` at ``path`` and ``path + "/"``; other methods get 405.

    Inside a ``Mount``, give it a path of its own (``Mount("/webhooks", routes=[webhook_route(
    "/aerostic", ...)])``): at the mount's root (``"/"``) it answers "/webhooks/", but Starlette
    redirects "/webhooks" itself, and a sender does not follow a redirect with its body.
    """

    async def endpoint(request: Request) -> Response:
        return await receive_request(receiver, request)

    return _BothSlashes(path.rstrip("/") or "/", endpoint, methods=["POST"], name=name)


def webhook_lifespan(
    receiver: WebhookReceiver, *, drain_timeout: float = 10.0
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan that starts the worker at startup and drains and stops it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        receiver.start_serving()
        try:
            yield
        finally:
            await run_in_threadpool(receiver.stop_serving, drain_timeout)

    return lifespan
