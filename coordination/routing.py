"""Websocket routes; every consumer refuses anonymous users itself as well."""

websocket_urlpatterns: list = []
