"""Websocket routes; each consumer refuses anonymous users itself."""

from django.urls import path

from . import (
    consumers,
    session_urls,  # noqa: F401  (registers "sid": the id as one path segment)
)

websocket_urlpatterns = [
    path("ws/sessions/", consumers.SessionsConsumer.as_asgi()),
    path("ws/session/<sid:session_id>/", consumers.SessionConsumer.as_asgi()),
]
