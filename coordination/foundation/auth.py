"""Sign-in with a brute-force throttle, shared by ``/login/`` and ``/admin/login/``.

Failures are counted in the shared cache (Redis), so every worker process sees the same counts,
under three keys: the username from one address, the address alone, and the username from any
address (so rotating addresses, or a botnet, gets a bounded number of guesses at one account).
The username is counted as Django looks it up (NFKC, which the login form applies) and
casefolded on top, so look-alikes (``ｓｕｐ``, ``𝐬𝐮𝐩``, ``SUP``) share one count. The address is
``REMOTE_ADDR``: the real peer, or the client a configured proxy names (``FORWARDED_ALLOW_IPS``);
IPv6 peers are counted per /64, the block one subscriber usually holds.

A throttled attempt is refused before the password is checked, with one message and status
for every username, existing or not, so the lockout reveals nothing about accounts.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import unicodedata
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.signals import user_logged_in
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

log = logging.getLogger(__name__)

FAILURES_PER_USER = 5  # one username from one address
FAILURES_PER_ADDRESS = 50  # any usernames from one address
FAILURES_PER_USERNAME = 20  # one username from all addresses together
USERNAME_LIMIT = 150  # Django's username length; longer input is cut before hashing


def normalize_username(raw: str) -> str:
    """The identity a sign-in attempt aims at: what Django's login form looks up (NFKC,
    stripped), casefolded so case variants count together too."""
    text = unicodedata.normalize("NFKC", raw or "").strip()
    return unicodedata.normalize("NFKC", text.casefold())[:USERNAME_LIMIT]


def client_bucket(address: str | None) -> str:
    """The address a failure is counted against: IPv4 as is, IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return (address or "unknown")[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 peer a.b.c.d
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip), 64), strict=False))
    return str(ip)


def _keys(request: HttpRequest) -> tuple[str, str, str]:
    """(username from this address, this address, username anywhere). Usernames are hashed:
    any text fits in a key, and Redis never holds the names people typed."""
    address = client_bucket(request.META.get("REMOTE_ADDR"))
    username = normalize_username(request.POST.get("username", ""))
    digest = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return (
        f"login-fail:ua:{address}:{digest}",
        f"login-fail:a:{address}",
        f"login-fail:u:{digest}",
    )


LIMITS = (FAILURES_PER_USER, FAILURES_PER_ADDRESS, FAILURES_PER_USERNAME)


def _window() -> int:
    return int(getattr(settings, "LOGIN_THROTTLE_SECONDS", 900))


def is_throttled(keys: tuple[str, str, str]) -> bool:
    # one GET per key: the keys hash to different Cluster slots, where one MGET would fail
    return any((cache.get(key) or 0) >= limit for key, limit in zip(keys, LIMITS, strict=True))


KINDS = ("username and address", "address", "username from any address")


def _count_failure(request: HttpRequest, keys: tuple[str, str, str]) -> None:
    window = _window()
    for key, limit, kind in zip(keys, LIMITS, KINDS, strict=True):
        cache.add(key, 0, window)  # the window starts at the first failure
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, count := 1, window)
        if count == limit:  # once per lock, so an attacker cannot flood the log
            _log_lock(request, kind, key, limit, window)


def _log_lock(request: HttpRequest, kind: str, key: str, limit: int, window: int) -> None:
    """One warning when a count reaches its limit: the address and the username's hash (the
    key's), never the typed username (people type passwords there) or the password."""
    log.warning(
        "sign-in paused for %d s: %d failures per %s (key %s)",
        window,
        limit,
        kind,
        key,
        extra={
            "action": "sign-in-throttled",
            "path": request.path,
            "client_address": request.META.get("REMOTE_ADDR"),
        },
    )


def throttled_response(request: HttpRequest) -> HttpResponse:
    context = {"minutes": max(1, _window() // 60)}
    response = render(request, "registration/throttled.html", context, status=429)
    response["Retry-After"] = str(_window())
    return response


@receiver(user_logged_in, dispatch_uid="coordination.foundation.auth.mark_signed_in")
def _mark_signed_in(sender, request, user, **kwargs) -> None:
    """Success is a login that happened in this request, not a user already signed in (a
    signed-in viewer posting guesses for another account must still be counted)."""
    if request is not None:
        request._coordination_signed_in = True


def throttle_login(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap a login view (ours or the admin site's) in the throttle."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method != "POST":
            return view(request, *args, **kwargs)
        keys = _keys(request)
        if is_throttled(keys):
            return throttled_response(request)
        response = view(request, *args, **kwargs)
        if getattr(request, "_coordination_signed_in", False):
            cache.delete(keys[0])  # this address's count for the account; never the others
        else:
            _count_failure(request, keys)
        return response

    return wrapped


class ThrottledLoginView(auth_views.LoginView):
    def post(self, request, *args, **kwargs):
        return throttle_login(super().post)(request, *args, **kwargs)
