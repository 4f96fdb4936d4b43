"""The ``WebhookEvent`` model: one row per delivery, the Django store's table."""

from __future__ import annotations

import json

from django.db import models
from django.utils.translation import gettext_lazy as _

__all__ = ["WebhookEvent"]


class WebhookEvent(models.Model):
    """A delivery as the store keeps it (see ``aerostic_webhooks.stores.Record``)."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        PROCESSING = "processing", _("processing")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")

    event_id = models.CharField(_("event id"), max_length=512, unique=True)
    event_type = models.CharField(_("event type"), max_length=200, db_index=True)
    body = models.BinaryField(_("raw body"))
    received_at = models.DateTimeField(_("received at"), db_index=True)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True, default="")
    next_attempt_at = models.DateTimeField(_("next attempt at"), null=True, blank=True)
    lease_owner = models.CharField(_("lease owner"), max_length=200, null=True, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), null=True, blank=True)
    # When the row can next be claimed (stores.base.due_at): next_attempt_at if pending,
    # lease_expires_at if processing, NULL once done or failed. One indexed column makes
    # claims one range scan.
    due_at = models.DateTimeField(null=True, blank=True, db_index=True, editable=False)

    class Meta:
        verbose_name = _("webhook event")
        verbose_name_plural = _("webhook events")
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["status", "received_at"], name="aerostic_status_received")]

    def __str__(self) -> str:
        return self.event_id

    def payload(self) -> object:
        """The body as JSON (it was valid JSON when it was accepted)."""
        return json.loads(bytes(self.body))
