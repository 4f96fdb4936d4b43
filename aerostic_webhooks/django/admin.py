"""Admin: every delivery with its status, the payload as formatted JSON, and reprocessing.

Built for a table of millions of rows: no filter's choices come from a scan of the table
(no ``SELECT DISTINCT``, no date hierarchy), the changelist counts the page's rows once, not
the whole table as well (unfiltered on PostgreSQL, not even that: the planner's estimate
stands in for ``SELECT COUNT(*)``), the search looks event ids up in the unique index rather
than ``LIKE '%...%'``, and reprocessing is one ``UPDATE`` for the selection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.paginator import Paginator
from django.db import connections, router, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property
from django.utils.html import format_html

from . import get_receiver
from .conf import webhook_settings
from .models import WebhookEvent
from .signals import SIGNALS_BY_TYPE
from .store import DjangoStore

__all__ = [
    "ESTIMATE_MIN",
    "MAX_REPROCESS",
    "EstimatedCountPaginator",
    "EventTypeFilter",
    "WebhookEventAdmin",
]

#: The most events one "Reprocess selected events" queues again (one UPDATE of their ids).
MAX_REPROCESS = 10_000
#: Below this many rows (by the planner's estimate) the changelist counts them: cheap, exact.
ESTIMATE_MIN = 10_000
_OTHER = "__other__"


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]
    """Counts as Django's paginator does, except the whole table on PostgreSQL: there
    ``SELECT COUNT(*)`` reads every row (seconds for millions), so the count of an unfiltered
    queryset is the planner's estimate (``pg_class.reltuples``, kept by ``ANALYZE`` and
    autovacuum), unless that is below ``ESTIMATE_MIN`` or unknown (never analyzed)."""

    @cached_property
    def count(self) -> int:
        estimate = _estimated_rows(self.object_list)
        return super().count if estimate is None else estimate


def _estimated_rows(rows: object) -> int | None:
    """The planner's estimate of the rows of ``rows``' table, if ``rows`` is the whole table
    on PostgreSQL and the estimate is at least ``ESTIMATE_MIN``; else ``None``."""
    if not isinstance(rows, QuerySet):
        return None
    query = rows.query
    if query.where or query.distinct or query.is_sliced or query.combinator:
        return None  # filtered or searched: counted exactly (through an index, mostly)
    connection = connections[rows.db]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
            [connection.ops.quote_name(rows.model._meta.db_table)],
        )
        row = cursor.fetchone()
    estimate = None if row is None or row[0] is None else int(row[0])
    return estimate if estimate is not None and estimate >= ESTIMATE_MIN else None


class EventTypeFilter(admin.SimpleListFilter):
    """By type: the known types (no ``SELECT DISTINCT event_type`` over the table), and
    "other types" for the rest. ``?event_type=<any type>`` filters by that type too."""

    title = "event type"
    parameter_name = "event_type"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> Iterable[tuple[str, str]]:
        return [*((t, t) for t in SIGNALS_BY_TYPE), (_OTHER, "other types")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[WebhookEvent]
    ) -> QuerySet[WebhookEvent]:
        value = self.value()
        if not value:
            return queryset
        rows: QuerySet[WebhookEvent]
        if value == _OTHER:
            rows = queryset.exclude(event_type__in=list(SIGNALS_BY_TYPE))
        else:
            rows = queryset.filter(event_type=value)
        return rows


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["event_id", "event_type", "status", "attempts", "received_at"]
    list_filter = [EventTypeFilter, "status", ("received_at", admin.DateFieldListFilter)]
    search_fields = ["event_id"]
    search_help_text = (
        "An event's id, or the data id of an event of a known type: the whole id, exactly."
    )
    show_full_result_count = False
    paginator = EstimatedCountPaginator
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

    def _database(self) -> str | None:
        database = webhook_settings().database
        return database if database in settings.DATABASES else None

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookEvent]:
        """The rows of the database the store writes to (``AEROSTIC_WEBHOOKS['DATABASE']``)."""
        rows: QuerySet[WebhookEvent] = super().get_queryset(request)
        database = self._database()
        return rows if database is None else rows.using(database)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[WebhookEvent], search_term: str
    ) -> tuple[QuerySet[WebhookEvent], bool]:
        """The event whose id is the term, or whose data id is (``"{type}:{term}"`` for each
        known type): lookups in the unique index, where ``icontains`` scans the table."""
        term = search_term.strip()
        if not term:
            return queryset, False
        ids = [term, *(f"{event_type}:{term}" for event_type in SIGNALS_BY_TYPE)]
        return queryset.filter(event_id__in=ids), False

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
        """Queue the selection again in one UPDATE (at most ``MAX_REPROCESS`` events), then
        wake the worker once that is committed."""
        receiver = get_receiver()
        selected = list(queryset.values_list("pk", flat=True)[: MAX_REPROCESS + 1])
        if len(selected) > MAX_REPROCESS:
            self.message_user(
                request,
                f"More than {MAX_REPROCESS} events selected; none queued. Select fewer "
                "(filter by type, status or date), or use the store's requeue_failed().",
                messages.ERROR,
            )
            return
        database = self._database() or router.db_for_write(WebhookEvent)
        store = DjangoStore(using=database)
        queued = store.requeue_rows(WebhookEvent.objects.using(database).filter(pk__in=selected))
        skipped = len(selected) - queued
        if queued:
            # Under ATOMIC_REQUESTS the rows are queued only once the request commits: a
            # worker woken before finds nothing due, and waits for its next look.
            transaction.on_commit(receiver.wake, using=database)
        if queued:
            self.message_user(request, f"{queued} event(s) queued to be processed again.")
        if skipped:
            self.message_user(
                request,
                f"{skipped} event(s) are being processed now; not queued.",
                messages.WARNING,
            )
