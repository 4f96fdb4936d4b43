"""The ASGI application: ``uvicorn --app-dir examples/django_project config.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

from aerostic_webhooks.django import get_receiver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_asgi_application()

# Servers do not run Django's system checks: building the receiver now makes a missing or
# empty secret stop the server at start-up, instead of every delivery being answered 503.
get_receiver()
