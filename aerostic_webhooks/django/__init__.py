"""The Django app: ``INSTALLED_APPS += ["aerostic_webhooks.django"]``.

Configure it with ``AEROSTIC_WEBHOOKS = {"SECRET": ...}``, route
``path("webhooks/aerostic/", include("aerostic_webhooks.django.urls"))``, and connect to the
signals in ``aerostic_webhooks.django.signals``. ``get_receiver()`` gives the app's
``WebhookReceiver`` for ``@get_receiver().on(...)`` handlers and for ``retry()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..receiver import WebhookReceiver

__all__ = ["get_receiver"]


def get_receiver() -> WebhookReceiver:
    """The receiver of this process, built from the settings on first use."""
    from django.apps import apps

    from .apps import AerosticWebhooksConfig

    config = apps.get_app_config(AerosticWebhooksConfig.label)
    assert isinstance(config, AerosticWebhooksConfig)
    return config.receiver()
