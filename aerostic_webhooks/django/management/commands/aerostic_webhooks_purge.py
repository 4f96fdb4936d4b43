"""``manage.py aerostic_webhooks_purge``: delete done and failed records past retention."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ....stores.base import utcnow
from ...conf import webhook_settings
from ...store import DjangoStore


class Command(BaseCommand):
    help = "Delete done and failed webhook events older than AEROSTIC_WEBHOOKS['RETENTION']."

    def handle(self, *args: Any, **options: Any) -> None:
        configured = webhook_settings()
        store = DjangoStore(using=configured.database)
        purged = store.purge(older_than=utcnow() - configured.retention)
        self.stdout.write(f"purged {purged} webhook event(s) older than {configured.retention}")
