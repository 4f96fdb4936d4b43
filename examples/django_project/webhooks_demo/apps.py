from django.apps import AppConfig


class WebhooksDemoConfig(AppConfig):
    name = "webhooks_demo"
    verbose_name = "Aerostic webhooks demo"

    def ready(self) -> None:
        # Importing the module connects its @receiver functions, once the app registry is ready.
        from . import receivers  # noqa: F401, PLC0415
