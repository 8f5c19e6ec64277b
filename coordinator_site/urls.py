from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from coordination.api import v1 as api
from coordination.dashboard import metrics, views
from coordination.foundation.auth import ThrottledLoginView

urlpatterns = [
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", views.healthz, name="healthz"),
    # browsers ask for /favicon.ico on pages without <link rel=icon> (JSON, the admin's)
    path(
        "favicon.ico",
        login_not_required(RedirectView.as_view(url=static("coordination/favicon.svg"))),
        name="favicon",
    ),
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls()),
    path("", include("coordination.urls")),
    # last: our 404 page for any other URL, DEBUG included ([\s\S]: paths may hold newlines)
    re_path(r"^(?P<path>[\s\S]*)$", views.not_found, name="not-found"),
]
