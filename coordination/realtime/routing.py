"""Websocket routes; each consumer refuses anonymous users itself."""

from django.urls import path

from coordination.dashboard import session_urls  # noqa: F401  (registers "sid": one path segment)
from coordination.realtime import consumers

websocket_urlpatterns = [
    path("ws/sessions/", consumers.SessionsConsumer.as_asgi()),
    path("ws/session/<sid:session_id>/", consumers.SessionConsumer.as_asgi()),
]
