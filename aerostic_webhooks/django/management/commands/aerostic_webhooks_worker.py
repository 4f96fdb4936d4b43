"""``manage.py aerostic_webhooks_worker``: process recorded events in this process."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections

from ....errors import error_summary
from ... import get_receiver
from ...conf import webhook_settings
from ...models import WebhookEvent


class Command(BaseCommand):
    help = (
        "Run the Aerostic webhooks worker: process recorded events until SIGTERM or Ctrl-C. "
        "Use it with AEROSTIC_WEBHOOKS['WORKER'] = 'external'."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            receiver = get_receiver()
        except ValueError as error:
            raise CommandError(f"aerostic_webhooks is misconfigured: {error}") from None
        database = webhook_settings().database
        try:  # its threads would only log the failure and try again, for ever
            WebhookEvent.objects.using(database).exists()
        except DatabaseError as error:
            raise CommandError(
                f"cannot read the webhook events of database {database!r}: "
                f"{error_summary(error)} (is it up, and has migrate run for it?)"
            ) from None
        finally:
            connections[database].close()  # this thread only waits from here on
        stop = threading.Event()

        def request_stop(signum: int, frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        receiver.start()
        self.stdout.write("aerostic_webhooks worker started", ending="\n")
        self.stdout.flush()
        stop.wait()
        self.stdout.write("stopping: waiting for running handlers", ending="\n")
        receiver.close(timeout=30)
        self.stdout.write("aerostic_webhooks worker stopped", ending="\n")
