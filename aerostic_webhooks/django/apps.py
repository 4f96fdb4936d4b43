"""The app config: builds the receiver from the settings and registers the system checks."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.apps import AppConfig, apps
from django.core import checks
from django.core.signals import request_started, setting_changed
from django.db import close_old_connections

from ..events import Event
from ..receiver import WebhookReceiver, current_event_id
from .conf import SETTING, webhook_settings
from .signals import SIGNALS_BY_TYPE, webhook_failed, webhook_received

__all__ = ["AerosticWebhooksConfig"]


@contextmanager
def request_cycle() -> Iterator[None]:
    """Around each worker step, what Django does around a request for its connections."""
    close_old_connections()
    try:
        yield
    finally:
        close_old_connections()


def _send_signals(event: Event) -> None:
    """Send ``webhook_received`` and the event's own signal; raise if a receiver raised.

    The first error raised reaches ``webhook_failed`` through the receiver's error hook; any
    other receiver's error is sent here, so each failing receiver is reported once.
    """
    kwargs: dict[str, Any] = {"sender": type(event), "event": event, "event_id": current_event_id()}
    errors: list[BaseException] = []
    for signal in (webhook_received, SIGNALS_BY_TYPE.get(event.event)):
        if signal is None:
            continue
        for _, response in signal.send_robust(**kwargs):
            if isinstance(response, BaseException):
                errors.append(response)
    for error in errors[1:]:
        _send_failed(event, error)
    if errors:
        raise errors[0]


def _send_failed(event: Event, error: BaseException) -> None:
    webhook_failed.send_robust(
        sender=type(event), event=event, event_id=current_event_id(), error=error
    )


class AerosticWebhooksConfig(AppConfig):
    name = "aerostic_webhooks.django"
    label = "aerostic_webhooks"
    verbose_name = "Aerostic webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def __init__(self, app_name: str, app_module: Any) -> None:
        super().__init__(app_name, app_module)
        self._receiver: WebhookReceiver | None = None
        # What was registered on a receiver that a change of the settings replaced (tests'
        # override_settings): its handlers and error hooks, for the next one.
        self._carried: WebhookReceiver | None = None
        self._lock = threading.Lock()

    def ready(self) -> None:
        checks.register(check_settings, "aerostic_webhooks")
        # A thread worker starts with the first request this process serves, so retries
        # and records left by a dead process are taken up without waiting for a delivery.
        request_started.connect(self._first_request, dispatch_uid="aerostic_webhooks_start")
        setting_changed.connect(self._setting_changed, dispatch_uid="aerostic_webhooks_settings")

    def _setting_changed(self, *, setting: str, **kwargs: Any) -> None:
        """``override_settings`` (or pytest-django's ``settings``) changed what the receiver
        is built from: stop it, and build the next one from the new settings on first use."""
        if setting not in (SETTING, "DATABASES", "DATABASE_ROUTERS"):
            return
        with self._lock:
            old, self._receiver = self._receiver, None
            if old is not None:
                self._carried = old
        if old is not None:
            old.close()

    def _first_request(self, **kwargs: Any) -> None:
        request_started.disconnect(dispatch_uid="aerostic_webhooks_start")
        with contextlib.suppress(ValueError):  # misconfigured: the checks say so, the view 503s
            self.receiver().start_serving()

    def receiver(self) -> WebhookReceiver:
        """This process's receiver; a misconfiguration raises ``ValueError`` (see the checks)."""
        if self._receiver is None:
            with self._lock:
                if self._receiver is None:
                    receiver = self.build_receiver()
                    if self._carried is not None:
                        _carry_over(self._carried, receiver)
                        self._carried = None
                    self._receiver = receiver
        return self._receiver

    def build_receiver(self) -> WebhookReceiver:
        from .store import DjangoStore

        configured = webhook_settings()
        if configured.problems:
            raise ValueError("; ".join(message for _, message in configured.problems))
        receiver = WebhookReceiver(
            list(configured.secrets),
            store=DjangoStore(using=configured.database),
            process="background" if configured.worker == "thread" else "external",
            max_body_bytes=configured.max_body_bytes,
            retention=configured.retention,
            concurrency=configured.concurrency,
            lease_seconds=configured.lease_seconds,
            worker_context=request_cycle,
        )
        receiver.on("*")(_send_signals)
        receiver.on_error(_send_failed)
        return receiver


def _carry_over(old: WebhookReceiver, new: WebhookReceiver) -> None:
    """The handlers and error hooks registered on ``old`` (``get_receiver().on(...)``), other
    than the app's own, registered on ``new`` too."""
    handlers, hooks = old.registered()
    for pattern, handler in handlers:
        if handler is not _send_signals:
            new.on(pattern)(handler)
    for hook in hooks:
        if hook is not _send_failed:
            new.on_error(hook)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check``: a missing or empty secret, and other bad values, are errors."""
    if app_configs is not None and apps.get_app_config("aerostic_webhooks") not in app_configs:
        return []
    return [
        checks.Error(message, hint=_HINTS.get(code), id=f"aerostic_webhooks.{code}")
        for code, message in webhook_settings().problems
    ]


_SET_THE_SECRET = f"Set {SETTING} = {{'SECRET': env('AEROSTIC_WEBHOOK_SECRET')}} in settings.py."
#: What to do about each problem the settings can have: the key it is about, not the secret's.
_HINTS = {
    "E001": _SET_THE_SECRET,
    "E002": f"Set {SETTING}['MAX_BODY_BYTES'] to a number of bytes, or leave it out (1 MiB).",
    "E003": f"Set {SETTING}['RETENTION'] to a timedelta such as timedelta(days=7), or omit it.",
    "E004": f"Set {SETTING}['WORKER'] to 'thread' or 'external', or leave it out ('thread').",
    "E005": f"Set {SETTING}['CONCURRENCY'] to a number of threads such as 4, or leave it out.",
    "E006": f"Set {SETTING}['LEASE_SECONDS'] to a number of seconds such as 30, or leave it out.",
    "E007": _SET_THE_SECRET,
    "E008": f"Set {SETTING}['DATABASE'] to an alias of DATABASES, or leave it out.",
}
