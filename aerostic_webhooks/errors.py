"""Errors raised by ``WebhookReceiver.receive``, each with its HTTP status and public message;
and what the library's logs say of any error."""

from __future__ import annotations

import logging
from typing import ClassVar

__all__ = [
    "InvalidPayload",
    "InvalidSignature",
    "PayloadTooLarge",
    "ProcessingFailed",
    "StoreUnavailable",
    "WebhookError",
]


_MAX_SUMMARY = 200
_MAX_ERROR_TEXT = 4000


def error_text(error: BaseException) -> str:
    """``"ValueError: CRM is down"``: an error as a record keeps it, text every store takes.

    A message may hold what no store can write (a lone surrogate from ``surrogateescape``
    text, a NUL for PostgreSQL), or its ``__str__`` may raise; then the outcome of the record
    could never be recorded.
    """
    # Cut before escaping too: a message may be megabytes long.
    text = f"{type(error).__name__}: {_message(error)}"[:_MAX_ERROR_TEXT]
    return _storable(text)[:_MAX_ERROR_TEXT]


def error_summary(error: BaseException) -> str:
    """``"IntegrityError: new row ... violates check constraint ..."``: all that a log or a
    ``StoreUnavailable`` reason says of an error a store or its database raised.

    That is its type and the first line of its message, at most 200 characters. A database
    error's further lines may quote the row it refused (PostgreSQL's ``DETAIL:  Failing row
    contains (...)``), payload and all: phone numbers and message texts never reach a log.
    """
    lines = _message(error).strip().splitlines()
    first = lines[0].strip() if lines else ""
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    if len(text) > _MAX_SUMMARY:
        text = text[: _MAX_SUMMARY - 3] + "..."
    return _storable(text)


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # its __str__ raised
        return "<its message could not be read>"


def _storable(text: str) -> str:
    """``text`` with what no store (or log) can take escaped: lone surrogates, NUL."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def log_failure(
    logger: logging.Logger, level: int, message: str, *args: object, error: BaseException
) -> None:
    """Log ``message`` at ``level`` with the error's summary as its last argument, and the
    whole error, traceback and all, at DEBUG only: its text may quote a database row, payload
    and all (see ``error_summary``)."""
    logger.log(level, message, *args, error_summary(error), stacklevel=2)
    logger.debug("the error above, in full", exc_info=error, stacklevel=2)


class WebhookError(Exception):
    """Base class: a delivery that is not acknowledged with a 2xx.

    ``public_message`` is all a response may say; ``reason`` (the exception's text) is for
    the log and never contains secrets, signatures or message content.
    """

    status_code: ClassVar[int] = 400
    public_message: ClassVar[str] = "Bad request"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason or self.public_message
        super().__init__(self.reason)


class InvalidSignature(WebhookError):
    """The ``X-Aerostic-Signature`` header is missing, malformed, or matches no secret."""

    status_code = 401
    public_message = "Invalid signature"


class InvalidPayload(WebhookError):
    """The body is not valid JSON or not a valid Aerostic event."""

    status_code = 400
    public_message = "Invalid payload"


class PayloadTooLarge(WebhookError):
    """The body is longer than the receiver's ``max_body_bytes``."""

    status_code = 413
    public_message = "Payload too large"


class StoreUnavailable(WebhookError):
    """The store could not record the delivery; nothing was acknowledged, the sender retries."""

    status_code = 503
    public_message = "Temporarily unavailable"


class ProcessingFailed(WebhookError):
    """Inline mode only: a handler raised, so the delivery is not acknowledged."""

    status_code = 500
    public_message = "Processing failed"
