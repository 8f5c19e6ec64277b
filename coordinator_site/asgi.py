"""ASGI entry point: HTTP through Django, websockets through Channels (login and same origin checked)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coordinator_site.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from coordination.foundation.origin import SameOriginValidator  # noqa: E402
from coordination.realtime import gc_policy, gc_report  # noqa: E402
from coordination.realtime.routing import websocket_urlpatterns  # noqa: E402
from coordinator_site.lifespan import LifespanRelay  # noqa: E402

gc_report.install_from_env()  # a diagnostic, off unless COORDINATION_GC_REPORT is set

# the collector's settings once started: full collections were the longest pauses of the
# event loop with many pages open (coordination/realtime/gc_policy.py)
application = gc_policy.TuneAfterStartup(
    LifespanRelay(
        ProtocolTypeRouter(
            {
                "http": django_asgi_app,
                # the page's origin must match scheme, host and port (not only the host)
                "websocket": SameOriginValidator(
                    AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
                ),
            }
        )
    )
)
