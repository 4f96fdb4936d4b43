"""The webhook endpoint at /webhooks/aerostic/ (with its slash, as Django does) and the admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("webhooks/aerostic/", include("aerostic_webhooks.django.urls")),
]
