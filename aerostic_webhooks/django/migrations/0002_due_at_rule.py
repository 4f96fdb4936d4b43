"""Bring rows written before stores.base.due_at() to its rule.

Before it, a done or failed row added with a lease kept that lease as its due time (so it
could be claimed again), and a processing row added without one was never due (stuck).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations
from django.db.models import F


def apply_due_at_rule(apps: Any, schema_editor: Any) -> None:
    """Settled rows are never due; a processing row with no due time is due at once."""
    rows = apps.get_model("aerostic_webhooks", "WebhookEvent").objects
    if schema_editor is not None:
        rows = rows.using(schema_editor.connection.alias)
    rows.filter(status__in=["done", "failed"], due_at__isnull=False).update(due_at=None)
    rows.filter(status="processing", due_at__isnull=True).update(due_at=F("received_at"))


class Migration(migrations.Migration):
    dependencies = [("aerostic_webhooks", "0001_initial")]

    operations = [migrations.RunPython(apply_due_at_rule, migrations.RunPython.noop)]
