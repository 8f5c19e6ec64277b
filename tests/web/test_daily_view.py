"""Issue 19, the supervisor's daily view: favicon, styled 404/500 in every mode, the overview's
queue and agents, API docs, and the small defects (each with the test that names it)."""

from __future__ import annotations

import pytest
from django.template.loader import render_to_string

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged_in(client, supervisor):
    client.force_login(supervisor)
    return client


def test_favicon_is_linked_and_answered(logged_in):
    body = logged_in.get("/").content.decode()
    assert 'rel="icon" href="/static/coordination/favicon.svg"' in body
    logged_in.logout()
    response = logged_in.get("/favicon.ico")  # no login needed, like the file itself
    assert response.status_code in (301, 302)
    assert response["Location"] == "/static/coordination/favicon.svg"


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "production"])
def test_unknown_session_gets_our_404_page_in_every_mode(logged_in, settings, debug):
    settings.DEBUG = debug
    for path in (
        "/sessions/no-such-session/",
        "/timeline/no-such-session/",
        "/payload/?session=no-such-session&key=k",
    ):
        response = logged_in.get(path)
        body = response.content.decode()
        assert response.status_code == 404, path
        assert '<h1 id="error-title">Not found</h1>' in body, path
        assert "no-such-session" in body, path
        # Django's technical 404 (inline styles, URL patterns) is not shown
        assert "Django tried these URL patterns" not in body and "<style" not in body, path


def test_404_page_escapes_the_hostile_session_id(logged_in, settings):
    settings.DEBUG = True
    body = logged_in.get("/sessions/%3Cscript%3Ealert(1)%3C%2Fscript%3E/").content.decode()
    assert "<script>alert(1)" not in body
    assert "&lt;script&gt;alert(1)" in body


def test_500_page_renders_without_a_request():
    # Django renders 500.html with no request context (the failure may be in the context)
    html = render_to_string("500.html")
    assert "Something went wrong" in html and "<style" not in html
