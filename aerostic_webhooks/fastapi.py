"""FastAPI adapter: ``app.include_router(webhook_router(webhooks), prefix="/webhooks/...")``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from enum import Enum
from typing import Any, cast

import fastapi.routing
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.routing import APIRoute

from .errors import WebhookError
from .events import Event
from .openapi import operation_extra, responses
from .receiver import Receipt, WebhookReceiver
from .response import declared_length, receive_request_async
from .starlette import receive_request, webhook_lifespan

__all__ = ["verified_event", "verified_receipt", "webhook_router"]

RouteHandler = Callable[[Request], Coroutine[Any, Any, Response]]


class _WebhookRoute(APIRoute):
    """An ``APIRoute`` that calls its endpoint directly: FastAPI's dependency solving costs
    about as much as the whole delivery, for an endpoint that only takes the request. FastAPI's
    handler stays where it has work: dependencies attached by ``include_router`` or the app
    (an API key check, say), or an integration wrapping FastAPI's handlers (Sentry's)."""

    def get_route_handler(self) -> RouteHandler:
        handler = super().get_route_handler()
        # Newer FastAPI keeps an included route's dependant (with its dependencies) here.
        included = getattr(fastapi.routing, "_effective_route_context_var", None)
        context: Any = included.get() if included is not None else None
        ours = getattr(context, "original_route", None) is self
        code = getattr(handler, "__code__", None)  # not FastAPI's own: an integration wraps it
        if getattr(code, "co_filename", None) != fastapi.routing.__file__:
            return handler
        if (context.dependant if ours else self.dependant).dependencies:
            return handler
        return cast(RouteHandler, self.endpoint)


def webhook_router(receiver: WebhookReceiver, *, tags: list[str | Enum] | None = None) -> APIRouter:
    """An ``APIRouter`` whose lifespan runs the receiver's worker, with the endpoint at ``""``
    and ``"/"`` under the prefix it is included with (one documented in OpenAPI)."""
    router = APIRouter(
        lifespan=webhook_lifespan(receiver), tags=["webhooks"] if tags is None else tags
    )

    async def receive_webhook(request: Request) -> Response:
        return await receive_request(receiver, request)

    for path, documented in (("", True), ("/", False)):
        router.add_api_route(
            path,
            receive_webhook,
            methods=["POST"],
            summary="Receive an Aerostic webhook",
            responses=responses(inline=receiver.process == "inline"),
            openapi_extra=operation_extra(),
            include_in_schema=documented,
            route_class_override=_WebhookRoute,
        )
    return router


def verified_receipt(receiver: WebhookReceiver) -> Callable[[Request], Awaitable[Receipt]]:
    """A dependency giving a verified, recorded delivery's receipt, for endpoints of your own:
    ``receipt.duplicate`` is true for the sender's retry of an event already recorded."""

    async def dependency(request: Request) -> Receipt:
        length = declared_length(request.headers.get("content-length"))
        try:
            return await receive_request_async(receiver, request.headers, request.stream(), length)
        except WebhookError as error:
            raise HTTPException(error.status_code, error.public_message) from None

    return dependency


def verified_event(receiver: WebhookReceiver) -> Callable[[Request], Awaitable[Event]]:
    """A dependency giving the verified, recorded event of every delivery, retries included."""
    receipt = verified_receipt(receiver)

    async def dependency(request: Request) -> Event:
        return (await receipt(request)).event

    return dependency
