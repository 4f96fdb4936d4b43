"""FastAPI adapter: ``app.include_router(webhook_router(webhooks), prefix="/webhooks/...")``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response

from .errors import (
    InvalidPayload,
    InvalidSignature,
    PayloadTooLarge,
    StoreUnavailable,
    WebhookError,
)
from .events import Event, event_json_schema
from .receiver import WebhookReceiver
from .response import declared_length, receive_request_async
from .signature import SIGNATURE_HEADER
from .starlette import receive_request, webhook_lifespan

__all__ = ["verified_event", "webhook_router"]

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": {"received": True}}}},
}
for _error in (InvalidPayload, InvalidSignature, PayloadTooLarge, StoreUnavailable):
    _RESPONSES[_error.status_code] = {
        "description": _error.__doc__,
        "content": {"application/json": {"example": {"error": _error.public_message}}},
    }
_OPENAPI = {
    "parameters": [
        {
            "name": SIGNATURE_HEADER,
            "in": "header",
            "required": True,
            "description": "sha256=<hex HMAC-SHA256 of the raw body, keyed by the secret>",
            "schema": {"type": "string", "pattern": "^sha256=[0-9a-fA-F]{64}$"},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": event_json_schema()}},
    },
}


def webhook_router(receiver: WebhookReceiver, *, tags: list[str | Enum] | None = None) -> APIRouter:
    """An ``APIRouter`` whose lifespan runs the receiver's worker, with the endpoint at ``""``
    and ``"/"`` under the prefix it is included with (one documented in OpenAPI)."""
    router = APIRouter(lifespan=webhook_lifespan(receiver), tags=tags or ["webhooks"])

    async def receive_webhook(request: Request) -> Response:
        return await receive_request(receiver, request)

    for path, documented in (("", True), ("/", False)):
        router.add_api_route(
            path,
            receive_webhook,
            methods=["POST"],
            summary="Receive an Aerostic webhook",
            responses=_RESPONSES,
            openapi_extra=_OPENAPI,
            include_in_schema=documented,
        )
    return router


def verified_event(receiver: WebhookReceiver) -> Callable[[Request], Awaitable[Event]]:
    """A dependency giving the verified, recorded event, for endpoints of your own."""

    async def dependency(request: Request) -> Event:
        length = declared_length(request.headers.get("content-length"))
        try:
            receipt = await receive_request_async(
                receiver, request.headers, request.stream(), length
            )
        except WebhookError as error:
            raise HTTPException(error.status_code, error.public_message) from None
        return receipt.event

    return dependency
