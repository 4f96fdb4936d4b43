"""``path("webhooks/aerostic/", include("aerostic_webhooks.django.urls"))``."""

from django.urls import path

from .views import AerosticWebhookView

app_name = "aerostic_webhooks"
urlpatterns = [path("", AerosticWebhookView.as_view(), name="receive")]
