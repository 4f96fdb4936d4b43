"""``AerosticWebhookView``: POST only, CSRF- and login-exempt, the response contract exactly."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views import View

from ..errors import StoreUnavailable
from ..receiver import WebhookReceiver
from ..response import CONTENT_TYPE, render, respond, respond_async
from ..wsgi import EnvironHeaders, body_length
from . import get_receiver

__all__ = ["AerosticWebhookView", "AsyncAerosticWebhookView"]

logger = logging.getLogger("aerostic_webhooks")

_CHUNK = 65536


class AerosticWebhookView(View):
    """Receives one delivery; ``get_receiver`` may be overridden to use another receiver."""

    http_method_names = ["post"]

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        view = super().as_view(**initkwargs)
        # The sender has no CSRF token and no session: the signature is the check.
        view.csrf_exempt = True  # type: ignore[attr-defined]
        view.login_required = False  # type: ignore[attr-defined]  # LoginRequiredMiddleware
        # Under ATOMIC_REQUESTS the store still commits each record itself, before the answer:
        # Django refuses an async view wrapped in a transaction, and a record left in the
        # request's transaction is out of the worker's sight until the request ends.
        view._non_atomic_requests = _EveryDatabase()  # type: ignore[attr-defined]
        return view

    def get_receiver(self) -> WebhookReceiver:
        return get_receiver()

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        receiver = self._receiver_or_none()
        if receiver is None:
            return _answer(render(StoreUnavailable("misconfigured")))
        headers = EnvironHeaders(request.META)  # request.headers would copy every header
        read, length = _reader(request), _length(request)
        return _answer(respond(receiver, headers, read, length, _upload_limit()))

    def _receiver_or_none(self) -> WebhookReceiver | None:
        try:
            return self.get_receiver()
        except ValueError as error:  # reported by `manage.py check`; the sender will retry
            logger.error("aerostic_webhooks is misconfigured: %s", error)
            return None


class AsyncAerosticWebhookView(AerosticWebhookView):
    """The same view for ASGI servers, which never blocks the event loop.

    A small delivery is verified and parsed on the loop, and recorded by the receiver's
    intake thread, many deliveries a transaction, as the Starlette adapter does (Django's
    ASGI handler has read the body by then). A large one is received on a thread whole.
    """

    async def post(  # type: ignore[override]
        self, request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponse:
        receiver = self._receiver_or_none()
        if receiver is None:
            return _answer(render(StoreUnavailable("misconfigured")))
        headers = EnvironHeaders(request.META)
        chunks, length = _chunks(_reader(request)), _length(request)
        return _answer(await respond_async(receiver, headers, chunks, length, _upload_limit()))


class _EveryDatabase(set[str]):
    """``_non_atomic_requests`` naming every database alias, those configured later too."""

    def __contains__(self, alias: object) -> bool:
        return True


def _answer(outcome: tuple[int, bytes]) -> HttpResponse:
    status, body = outcome
    return HttpResponse(body, status=status, content_type=CONTENT_TYPE)


async def _chunks(read: Callable[[int], bytes]) -> AsyncIterator[bytes]:
    """The body as ``respond_async`` takes it; under ASGI Django holds it in memory already
    (on disk past FILE_UPLOAD_MAX_MEMORY_SIZE), so a read does not wait for the network."""
    while chunk := read(_CHUNK):
        yield chunk


def _upload_limit() -> int | None:
    """Django's limit on a request body held in memory, which applies here too (a 413)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return limit if isinstance(limit, int) else None


def _length(request: HttpRequest) -> int | None:
    return body_length(request.META)


def _reader(request: HttpRequest) -> Any:
    """How to read the raw body without Django's own DATA_UPLOAD_MAX_MEMORY_SIZE check (a 400):
    the view applies that limit itself, with the contract's 413.

    A chunked body under a WSGI server has no usable CONTENT_LENGTH, and Django's own stream
    is then empty or cut short: read the server's input, which ends where the body ends
    (``wsgi.input_terminated``).
    """
    meta = request.META
    if _length(request) is None and meta.get("wsgi.input_terminated") and "wsgi.input" in meta:
        return meta["wsgi.input"].read
    return request.read
