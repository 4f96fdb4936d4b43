"""The WSGI application: ``gunicorn --chdir examples/django_project config.wsgi:application``."""

import os

from django.core.wsgi import get_wsgi_application

from aerostic_webhooks.django import get_receiver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()

# Servers do not run Django's system checks: building the receiver now makes a missing or
# empty secret stop the server at start-up, instead of every delivery being answered 503.
get_receiver()
