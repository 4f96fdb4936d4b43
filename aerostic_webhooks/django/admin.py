"""Admin: every delivery with its status, the payload as formatted JSON, and reprocessing."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from . import get_receiver
from .conf import webhook_settings
from .models import WebhookEvent

__all__ = ["WebhookEventAdmin"]


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["event_id", "event_type", "status", "attempts", "received_at"]
    list_filter = ["event_type", "status"]
    search_fields = ["event_id"]
    date_hierarchy = "received_at"
    actions = ["reprocess"]
    fields = readonly_fields = (
        "event_id",
        "event_type",
        "status",
        "attempts",
        "last_error",
        "received_at",
        "next_attempt_at",
        "lease_owner",
        "lease_expires_at",
        "updated_at",
        "formatted_payload",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookEvent]:
        """The rows of the database the store writes to (``AEROSTIC_WEBHOOKS['DATABASE']``)."""
        rows: QuerySet[WebhookEvent] = super().get_queryset(request)
        database = webhook_settings().database
        return rows.using(database) if database in settings.DATABASES else rows

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from Aerostic only

    def has_change_permission(self, request: HttpRequest, obj: WebhookEvent | None = None) -> bool:
        return False  # read-only: reprocess with the action instead

    @admin.display(description="payload")
    def formatted_payload(self, obj: WebhookEvent) -> str:
        try:
            text = json.dumps(obj.payload(), indent=2, ensure_ascii=False)
        except ValueError:
            text = bytes(obj.body).decode("utf-8", "replace")
        return format_html("<pre>{}</pre>", text)

    def has_reprocess_permission(self, request: HttpRequest) -> bool:
        """Reprocessing runs the receivers again: it takes the model's change permission."""
        codename = get_permission_codename("change", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    @admin.action(description="Reprocess selected events", permissions=["reprocess"])
    def reprocess(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        receiver = get_receiver()
        queued = skipped = 0
        for event_id in queryset.values_list("event_id", flat=True):
            if receiver.retry(event_id):
                queued += 1
            else:
                skipped += 1
        if queued:
            self.message_user(request, f"{queued} event(s) queued to be processed again.")
        if skipped:
            self.message_user(
                request,
                f"{skipped} event(s) are being processed now; not queued.",
                messages.WARNING,
            )
