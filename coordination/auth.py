"""Sign-in with a brute-force throttle: failures are counted in the shared cache (Redis), per
address and username and per address alone, so every worker process sees the same counts."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.shortcuts import render

FAILURES_PER_USER = 5
FAILURES_PER_ADDRESS = 50


def _keys(request) -> tuple[str, str]:
    address = request.META.get("REMOTE_ADDR", "unknown")
    username = (request.POST.get("username") or "").strip().lower()[:150]
    return f"login-fail:{address}:{username}", f"login-fail:{address}"


class ThrottledLoginView(auth_views.LoginView):
    def post(self, request, *args, **kwargs):
        per_user, per_address = _keys(request)
        window = int(getattr(settings, "LOGIN_THROTTLE_SECONDS", 900))
        if (cache.get(per_user) or 0) >= FAILURES_PER_USER or (
            cache.get(per_address) or 0
        ) >= FAILURES_PER_ADDRESS:
            context = {"minutes": max(1, window // 60)}
            return render(request, "registration/throttled.html", context, status=429)
        response = super().post(request, *args, **kwargs)
        if request.user.is_authenticated:
            cache.delete(per_user)
        else:
            for key in (per_user, per_address):
                cache.add(key, 0, window)
                cache.incr(key)
        return response
