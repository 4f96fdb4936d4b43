"""``AerosticWebhookView``: POST only, CSRF- and login-exempt, the response contract exactly."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.views import View

from ..errors import StoreUnavailable
from ..receiver import WebhookReceiver
from ..response import CONTENT_TYPE, render, respond
from ..wsgi import EnvironHeaders, body_length
from . import get_receiver

__all__ = ["AerosticWebhookView", "AsyncAerosticWebhookView"]

logger = logging.getLogger("aerostic_webhooks")


class AerosticWebhookView(View):
    """Receives one delivery; ``get_receiver`` may be overridden to use another receiver."""

    http_method_names = ["post"]

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        view = super().as_view(**initkwargs)
        # The sender has no CSRF token and no session: the signature is the check.
        view.csrf_exempt = True  # type: ignore[attr-defined]
        view.login_required = False  # type: ignore[attr-defined]  # LoginRequiredMiddleware
        return view

    def get_receiver(self) -> WebhookReceiver:
        return get_receiver()

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            receiver = self.get_receiver()
        except ValueError as error:  # reported by `manage.py check`; the sender will retry
            logger.error("aerostic_webhooks is misconfigured: %s", error)
            status, body = render(StoreUnavailable("misconfigured"))
            return HttpResponse(body, status=status, content_type=CONTENT_TYPE)
        headers = EnvironHeaders(request.META)  # request.headers would copy every header
        status, body = respond(receiver, headers, _reader(request), _length(request))
        return HttpResponse(body, status=status, content_type=CONTENT_TYPE)


class AsyncAerosticWebhookView(AerosticWebhookView):
    """The same view for ASGI servers: the request runs on a thread pool, so deliveries are
    received in parallel, while a sync view under ASGI shares Django's one sync thread."""

    async def post(  # type: ignore[override]
        self, request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponse:
        receive = sync_to_async(super().post, thread_sensitive=False)
        response: HttpResponse = await receive(request, *args, **kwargs)
        return response


def _length(request: HttpRequest) -> int | None:
    return body_length(request.META)


def _reader(request: HttpRequest) -> Any:
    """How to read the raw body without Django's DATA_UPLOAD_MAX_MEMORY_SIZE (a 400, not 413).

    A chunked body under a WSGI server has no usable CONTENT_LENGTH, and Django's own stream
    is then empty or cut short: read the server's input, which ends where the body ends
    (``wsgi.input_terminated``).
    """
    meta = request.META
    if _length(request) is None and meta.get("wsgi.input_terminated") and "wsgi.input" in meta:
        return meta["wsgi.input"].read
    return request.read
