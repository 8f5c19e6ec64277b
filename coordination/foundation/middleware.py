"""A strict Content-Security-Policy: scripts and styles only from this site, no inline code."""

import logging

from django.conf import settings
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpResponse
from django.http.multipartparser import MultiPartParserError
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
            return self._styled_500(request, exception)
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

    def _styled_500(self, request, exception):
        """With ``DEBUG`` on, our 500 page instead of Django's technical one (its inline styles
        break the CSP, and a supervisor running ``make run`` is not debugging Django); the
        traceback goes to the log, where the developer's terminal shows it. Without ``DEBUG``,
        Django renders the same 500.html itself. The API keeps its own error handling."""
        if not settings.DEBUG or request.path.startswith("/api/"):
            return None
        if isinstance(exception, _NOT_SERVER_ERRORS):  # Django answers these 4xx itself
            return None
        log.error(
            "Internal Server Error: %s",
            request.path,
            exc_info=(type(exception), exception, exception.__traceback__),
            extra={"status": 500, "path": request.path, "actor": _username(request)},
        )
        response = render(request, "500.html", status=500)
        response._has_been_logged = True  # Django's log_response: logged once, with traceback
        return response


# What Django's response_for_exception turns into a 400, 403 or 404 (not a 500).
_NOT_SERVER_ERRORS = (
    Http404,
    PermissionDenied,
    BadRequest,
    SuspiciousOperation,
    MultiPartParserError,
)


def _username(request) -> str | None:
    user = getattr(request, "user", None)
    return user.get_username() if user is not None and user.is_authenticated else None
