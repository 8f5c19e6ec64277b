"""A strict Content-Security-Policy: scripts and styles only from this site, no inline code."""

import logging

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import render

from coordination.core import CoordinationError, RedisUnavailable, redact_url

log = logging.getLogger(__name__)

DEFAULT_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = getattr(settings, "CONTENT_SECURITY_POLICY", DEFAULT_POLICY)

    def __call__(self, request):
        response = self.get_response(request)
        # The admin ships inline scripts of its own; the policy guards the dashboard pages.
        if not request.path.startswith("/admin/"):
            response.headers.setdefault("Content-Security-Policy", self.policy)
        return response


class CoordinationErrorMiddleware:
    """Errors from the core become clear answers, never a traceback: Redis down is a 503
    page; bad input (a malformed session id, cursor or agent id) is a 400 saying what is wrong."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, CoordinationError) and not isinstance(exception, RedisUnavailable):
            status = 400 if isinstance(exception, ValueError) else 409
            log.info(
                "%s for %s: %s",
                status,
                request.path,
                exception,
                extra={"status": status, "path": request.path, "actor": _username(request)},
            )
            return HttpResponse(
                str(exception), status=status, content_type="text/plain; charset=utf-8"
            )
        if not isinstance(exception, RedisUnavailable):
            return None
        log.warning(
            "503 for %s: %s",
            request.path,
            exception,
            extra={"status": 503, "path": request.path, "actor": _username(request)},
        )
        response = render(
            request, "503.html", {"redis_url": redact_url(settings.REDIS_URL)}, status=503
        )
        response["Retry-After"] = "5"
        return response


def _username(request) -> str | None:
    user = getattr(request, "user", None)
    return user.get_username() if user is not None and user.is_authenticated else None
