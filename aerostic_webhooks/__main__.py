"""``python -m aerostic_webhooks``: the ``aerostic-webhooks`` command."""

from .cli import main

raise SystemExit(main())
