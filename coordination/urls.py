from django.urls import include, path

from coordination.dashboard import (
    action_views,
    approval_views,
    session_urls,  # noqa: F401  (registers the "sid" converter)
    views,
)

app_name = "coordination"

# Session ids may hold any character but control characters, '/' and '..' included: <sid:>
# (coordination/dashboard/session_urls.py) puts one in a single path segment that no browser rewrites,
# and a distinct prefix per view keeps any id from being mistaken for a sub-page.
urlpatterns = [
    path("", views.overview, name="overview"),
    path("sessions/", views.sessions, name="sessions"),
    path("saved-filters/", views.save_filter, name="save_filter"),
    path("saved-filters/<int:pk>/delete/", views.delete_filter, name="delete_filter"),
    path("sessions/<sid:session_id>/", views.session_detail, name="session"),
    path("timeline/<sid:session_id>/", views.timeline, name="timeline"),
    path("agents/", views.agents, name="agents"),
    path("trends/", views.trends_page, name="trends"),
    # one event's payload or state value, whole: ?session=<id>&event=<id> or &key=<key>
    path("payload/", views.payload, name="payload"),
    path("act-bulk/", action_views.bulk, name="bulk"),
    # before the generic act/<action>/: "decide" is not one of its actions
    path("act/decide/<sid:session_id>/", approval_views.decide_view, name="decide"),
    path("act/<slug:action>/<sid:session_id>/", action_views.act, name="act"),
    path("escalations/claim-next/", action_views.claim_next, name="claim_next"),
    path("team/", include("coordination.dashboard.team")),  # staff: invite, roles, deactivate
]
