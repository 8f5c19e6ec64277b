"""Error reports that show no secret, DEBUG included.

``make run`` runs with ``DEBUG=true``: a 500 (or a 400 for a request Django finds suspicious)
is then Django's technical page, listing the settings, the request's META and every frame's
local variables. Django's own filter hides settings named like ``*KEY*`` or ``*PASS*``, but not
``REDIS_URL``, the cache ``LOCATION`` or the channel layer's ``hosts``, which carry the Redis
password (``redis://:pw@host``), nor a local variable holding such a URL.

``SecretsFilter`` (``DEFAULT_EXCEPTION_REPORTER_FILTER``) hides whole settings that are
connection strings (Redis, databases, caches, channel layers) and masks the credentials of any
URL (``scheme://user:pw@`` → ``scheme://***@``, ``?password=pw`` → ``?password=***``) in every
setting, META value and local variable it shows; a local variable whose name looks secret
(``redis_url``, ``password``, ``token``) is hidden whole. ``SecretsReporter``
(``DEFAULT_EXCEPTION_REPORTER``) masks the same patterns in the rendered page and its text
version, which covers exception messages and chained causes that no filter sees.
"""

from __future__ import annotations

import re
from pprint import pformat
from typing import Any

from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

MASK = "***"
# A URL's userinfo: everything between "scheme://" and the last "@" before the host. Greedy, so
# a password holding a raw "@" is masked whole. The scheme's length is bounded so that a long
# run of letters costs linear time, whatever a page holds.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]{0,30}://)[^\s/'\"<>]*@")
# Credentials passed as query parameters (redis://host/0?password=pw).
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:password|passwd|pwd|pass|secret|token|api_key|apikey|auth)=)[^&;\s'\"<>]+"
)


def mask_secrets(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{MASK}", text)


class _Masked:
    """A frame variable as the debug page prints it (``pformat``), credentials masked."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        try:
            text = pformat(self.value)
        except Exception as exc:  # any repr may raise; the error page must not
            text = f"<unprintable {type(self.value).__name__}: {type(exc).__name__}>"
        return mask_secrets(text)


class SecretsFilter(SafeExceptionReporterFilter):
    """Django's filter, plus connection strings and URL credentials anywhere."""

    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|CREDENTIAL|DSN"
        "|REDIS|DATABASE|CACHES|CHANNEL_LAYERS|LOCATION|SENTINEL",
        flags=re.IGNORECASE,
    )
    # Local variables hidden whole by name (narrower than the settings: "key" is everywhere).
    hidden_variables = re.compile(
        "PASS|SECRET|TOKEN|CREDENTIAL|DSN|API_KEY|AUTH|REDIS_URL|DATABASE_URL",
        flags=re.IGNORECASE,
    )

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        # Django recurses through dicts, lists and tuples via this method: every string at
        # any depth comes through here.
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):
            return mask_secrets(cleansed)
        return cleansed

    def get_traceback_frame_variables(self, request, tb_frame) -> list[tuple[str, Any]]:
        shown = []
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            if (isinstance(value, str) and value == self.cleansed_substitute) or (
                isinstance(name, str) and self.hidden_variables.search(name)
            ):
                shown.append((name, self.cleansed_substitute))
            else:
                shown.append((name, _Masked(self._cleanse_value(value))))
        return shown

    def _cleanse_value(self, value: Any) -> Any:
        """Secret-looking keys of plain containers hidden (``{"password": ...}``)."""
        if isinstance(value, dict | list | tuple):
            try:
                return self.cleanse_setting("", value)
            except Exception:  # a container with odd keys or contents: shown masked as text
                return value
        return value


class SecretsReporter(ExceptionReporter):
    """Django's reporter, with URL credentials masked in everything it renders."""

    def get_traceback_html(self) -> str:
        return mask_secrets(super().get_traceback_html())

    def get_traceback_text(self) -> str:
        return mask_secrets(super().get_traceback_text())
