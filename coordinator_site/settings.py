"""Settings, all from the environment (twelve-factor). Production mode is ``DEBUG=false``.

REDIS_URL, DATABASE_URL, SECRET_KEY, DEBUG, ALLOWED_HOSTS, CSRF_TRUSTED_ORIGINS and the
COORDINATION_* values below; see README.md for what each does.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("COORDINATION_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true or false)")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_slas(name: str) -> dict[str, float]:
    """``queue=seconds`` pairs, comma-separated: ``billing=120,vip=60``."""
    slas = {}
    for item in env_list(name, ""):
        queue, sep, seconds = (part.strip() for part in item.partition("="))
        try:
            value = float(seconds)
        except ValueError:
            value = 0.0
        if not (sep and queue and value > 0):
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not queue=seconds (for example billing=120,vip=60)"
            )
        slas[queue] = value
    return slas


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None


def _stderr_is_a_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed by a host process
        return False


DEBUG = env_bool("DEBUG", True)


def _secret_key() -> str:
    key = os.environ.get("SECRET_KEY")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is false (production mode)")
    # Development: generate once and keep it in an ignored file, so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        path.write_text(key)
        path.chmod(0o600)
        return key


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
COORDINATION_NAMESPACE = os.environ.get("COORDINATION_NAMESPACE", "coord")
# Run the feed relay in this process (one process across all workers becomes active).
COORDINATION_RELAY = env_bool("COORDINATION_RELAY", True)
# Seconds without a heartbeat before an agent is shown as stale.
COORDINATION_AGENT_STALE_AFTER = env_number("COORDINATION_AGENT_STALE_AFTER", 60)
# Seconds an escalated session may wait before it is highlighted as over its SLA.
COORDINATION_ESCALATION_SLA = env_number("COORDINATION_ESCALATION_SLA", 300)
# The same per escalation queue (an escalation names its queue in data["queue"]).
COORDINATION_ESCALATION_SLAS = env_slas("COORDINATION_ESCALATION_SLAS")
# Seconds an agent's approval request may wait for a decision before it is highlighted.
COORDINATION_APPROVAL_SLA = env_number("COORDINATION_APPROVAL_SLA", 120)
# Seconds a session may wait for an agent (status waiting: a released claim, a hand-back to the
# queue) before the overview's pickup queue highlights and alerts it.
COORDINATION_PICKUP_SLA = env_number("COORDINATION_PICKUP_SLA", 60)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "template_partials",
    "channels",
    "coordination",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "coordination.foundation.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "coordination.foundation.middleware.CoordinationErrorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # request.htmx for the views that answer htmx with a fragment and a full page otherwise
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "coordinator_site.urls"
ASGI_APPLICATION = "coordinator_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "coordination.dashboard.context.limits",
            ],
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # A file, not memory, so the ASGI server that browser tests start can share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}


def redis_services(redis_url: str, namespace: str) -> tuple[dict, dict]:
    """CACHES and CHANNEL_LAYERS for one Redis and key namespace. The cache (login throttle)
    and the channel layer live in the same Redis as the core, so all workers agree."""
    from coordination.core.connection import parse_url

    caches = {
        "default": {
            "BACKEND": "coordination.foundation.cache.CoordinationCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": f"{namespace}:cache",
        }
    }
    target = parse_url(redis_url)
    if target.kind == "sentinel":
        auth = {"username": target.username, "password": target.password}
        host = {
            "sentinels": list(target.nodes),
            "master_name": target.service,
            "sentinel_kwargs": auth,
            "db": target.db,
            **auth,
        }
    elif target.kind == "cluster":
        # Pub/sub messages reach every node of a Cluster, so one node serves the channel layer.
        host = target.url
    else:
        host = redis_url
    channel_layers = {
        "default": {
            # channels_redis' pub/sub layer with every message sealed with a key derived
            # from SECRET_KEY: whoever holds REDIS_URL cannot put anything on a page
            "BACKEND": "coordination.realtime.channel_layer.AuthenticatedPubSubLayer",
            "CONFIG": {"hosts": [host], "prefix": f"{namespace}:asgi"},
        }
    }
    return caches, channel_layers


CACHES, CHANNEL_LAYERS = redis_services(REDIS_URL, COORDINATION_NAMESPACE)
# Lets a Prometheus scraper read /metrics without a login (Authorization: Bearer <token>).
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
LOGIN_THROTTLE_SECONDS = int(env_number("LOGIN_THROTTLE_SECONDS", 900))
# Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated IPs or networks,
# e.g. 127.0.0.1 for an nginx on this host). Empty (the default): nobody's, so the client address
# of the throttle and the audit log is the real peer. ``serve`` and the test servers pass it to
# uvicorn; a hand-started uvicorn needs ``--forwarded-allow-ips`` (see docs/deploy.md).
FORWARDED_ALLOW_IPS = env_list("FORWARDED_ALLOW_IPS", "")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "coordination:overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True  # serve straight from static/ without collectstatic
if DEBUG:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Error pages (DEBUG's technical 500/400 included) show no Redis or database URL, password or
# token: whole connection settings hidden, URL credentials masked everywhere else.
DEFAULT_EXCEPTION_REPORTER_FILTER = "coordination.foundation.error_reports.SecretsFilter"
DEFAULT_EXCEPTION_REPORTER = "coordination.foundation.error_reports.SecretsReporter"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(env_number("SECURE_HSTS_SECONDS", 31_536_000))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    if env_bool("SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# LOG_FORMAT=json: one JSON object per line, for a log pipeline; LOG_FORMAT=text: for reading
# by eye. Unset: text when stderr is a terminal (`make run`), JSON otherwise (a container, a
# service manager, a pipe).
LOG_FORMAT = (
    os.environ.get("LOG_FORMAT") or ("text" if _stderr_is_a_terminal() else "json")
).lower()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "coordination.foundation.json_logs.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    # tokens, Authorization values and cookies are masked whatever logged them
    "filters": {"redact": {"()": "coordination.foundation.json_logs.RedactSecrets"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "text" if LOG_FORMAT == "text" else "json",
            "filters": ["redact"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # Django's default handlers on "django" printed its records a second time, unmasked (in
    # DEBUG); they reach the root's console handler instead (no ADMINS: no mail was sent anyway)
    "loggers": {"django": {"handlers": [], "level": "INFO", "propagate": True}},
}
# Python warnings (Django's among them: "StreamingHttpResponse must consume ...") go through
# the same handler, in the same format, once; Django no longer routes them itself, so under
# `make run` they came out as raw text between the JSON lines.
logging.captureWarnings(True)
