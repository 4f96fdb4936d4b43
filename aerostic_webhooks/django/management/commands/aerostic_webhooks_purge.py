"""``manage.py aerostic_webhooks_purge``: delete done and failed records past retention."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from ....errors import error_summary
from ....stores.base import utcnow
from ...conf import webhook_settings
from ...store import DjangoStore


class Command(BaseCommand):
    help = "Delete done and failed webhook events older than AEROSTIC_WEBHOOKS['RETENTION']."

    # Purging needs no secret: a cron job or a maintenance host may run it without one. The
    # settings it does use are checked below.
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        configured = webhook_settings()
        problems = [message for code, message in configured.problems if code != "E001"]
        if problems:
            raise CommandError("; ".join(problems))
        store = DjangoStore(using=configured.database)
        try:
            purged = store.purge(older_than=utcnow() - configured.retention)
        except DatabaseError as error:  # down, or not migrated: a line, not a traceback
            raise CommandError(
                f"could not purge the webhook events of database {configured.database!r}: "
                f"{error_summary(error)} (is it up, and has migrate run for it?)"
            ) from None
        if options["verbosity"] >= 1:  # -v 0: a cron job hears of errors only
            self.stdout.write(f"purged {purged} webhook event(s) older than {configured.retention}")
