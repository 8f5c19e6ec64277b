"""How a session id travels in a dashboard URL: one path segment that names exactly that id.

Session ids may hold any character but control characters: ``/``, ``..``, ``%2F``, ``?``,
``#``, ``\\``. Put raw in a path, ``zz/../victim`` is normalised by the browser (WHATWG URL
parsing) into ``victim``, so a page's buttons would act on another session. Browsers treat a
segment ``.``, ``..``, ``%2e``, ``.%2e``, ``%2e.`` or ``%2e%2e`` as a dot segment, and ``\\``
as ``/``.

The scheme, in one place (the ``sid`` path converter below, so every ``reverse()`` and
``{% url %}`` uses it and no template can forget it):

- ``to_segment`` (the converter's ``to_url``) escapes ``%`` as ``%25`` and ``/`` as ``%2F``,
  and the two ids that are dot segments on their own, ``.`` and ``..``, as ``%2E`` and
  ``%2E%2E``. Django's ``reverse()`` then percent-encodes that once more (``%`` → ``%25``,
  ``?`` → ``%3F``, ``#`` → ``%23``, ``\\`` → ``%5C``, non-ASCII as UTF-8), so the URL holds
  the id as a single segment with no slash, no backslash and no dot segment in any spelling.
- The server (uvicorn, or Django's test client) percent-decodes the path once, which gives
  back ``to_segment(id)``; the converter's ``to_python`` (``from_segment``) unquotes it into
  the id.

``from_segment(to_segment(x)) == x`` for every string: every ``%`` that ``to_segment``
leaves is one it wrote. The converter also matches a path with raw ``/`` (old links, typed
URLs); it then names the id spelled by that path. URLs built outside ``reverse()`` (the
websocket URL in the session page) use ``quote_segment``.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from django.urls import register_converter

_DOT_IDS = {".": "%2E", "..": "%2E%2E"}


def to_segment(session_id: str) -> str:
    """The id as Django's ``reverse()`` should see it: no ``/``, not a dot segment."""
    if session_id in _DOT_IDS:
        return _DOT_IDS[session_id]
    return session_id.replace("%", "%25").replace("/", "%2F")


def from_segment(segment: str) -> str:
    """The inverse of ``to_segment``, given the path as the server decoded it."""
    return unquote(segment)


def quote_segment(session_id: str) -> str:
    """The id as one percent-encoded path segment, for URLs not built by ``reverse()``."""
    return quote(to_segment(session_id), safe="")


class SessionIdConverter:
    """``<sid:session_id>``: a session id as one path segment (see the module docstring)."""

    regex = r"[\s\S]+"  # [\s\S]: the path may hold anything the server decoded, newlines too

    def to_python(self, value: str) -> str:
        return from_segment(value)

    def to_url(self, value: str) -> str:
        return to_segment(value)


CONVERTER = "sid"
register_converter(SessionIdConverter, CONVERTER)
