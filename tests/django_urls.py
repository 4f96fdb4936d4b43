from django.contrib import admin
from django.urls import include, path

from aerostic_webhooks.django.views import AerosticWebhookView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("webhooks/aerostic/", include("aerostic_webhooks.django.urls")),
    path("hooks/", AerosticWebhookView.as_view()),
]

from aerostic_webhooks.django.views import AsyncAerosticWebhookView

urlpatterns.append(path("async-hooks/", AsyncAerosticWebhookView.as_view()))
