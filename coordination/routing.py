"""Websocket routes; each consumer refuses anonymous users itself."""

from django.urls import path

from . import consumers

websocket_urlpatterns = [
    path("ws/sessions/", consumers.SessionsConsumer.as_asgi()),
    path("ws/session/<path:session_id>/", consumers.SessionConsumer.as_asgi()),
]
