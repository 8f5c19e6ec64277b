"""Template context every dashboard page gets: the input limits, so a form's ``maxlength`` is
the same number the server enforces (``coordination.supervision.limits``)."""

from __future__ import annotations

from django.http import HttpRequest

from coordination.supervision.limits import MAX_TEXT


def limits(request: HttpRequest) -> dict[str, int]:
    return {"MAX_TEXT": MAX_TEXT}
