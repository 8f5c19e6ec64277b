"""The wrappers the websocket consumers put around pushed rows come from named partials
(templates/coordination/_live_push.html) and carry exactly the markup the pages' htmx
out-of-band swaps expect, byte for byte."""

from __future__ import annotations

from django.template.loader import render_to_string

from coordination.realtime.consumers import PUSH

ROW = '<li class="event" id="ev-1-0">a &lt;b&gt;</li>'


def test_row_removed_deletes_the_row_by_id():
    html = render_to_string(PUSH + "row-removed", {"row_id": "session-0123abcd"})
    assert html == '<tr id="session-0123abcd" hx-swap-oob="delete"></tr>'


def test_a_row_id_is_escaped_all_the_same():
    html = render_to_string(PUSH + "row-removed", {"row_id": '"><script>'})
    assert "<script>" not in html and "&quot;&gt;&lt;script&gt;" in html


def test_rows_on_top_go_first_in_the_sessions_table():
    html = render_to_string(PUSH + "rows-on-top", {"rows": "<tr>a</tr><tr>b</tr>"})
    assert html == '<tbody hx-swap-oob="afterbegin:#session-rows"><tr>a</tr><tr>b</tr></tbody>'


def test_timeline_frames_prepend_rows_and_leave_the_empty_note_to_css():
    # "No events yet" stays in the page (app.css hides it below a row): deleting it out of
    # band would miss its target on every frame after the first
    html = render_to_string(PUSH + "timeline-frame", {"rows": ROW})
    assert html == f'<ol hx-swap-oob="afterbegin:#timeline">{ROW}</ol>'


def test_the_replay_gap_links_to_older_events_escaped():
    html = render_to_string(PUSH + "replay-gap", {"url": "/timeline/a%22b/?before=1-0&x=<"})
    assert html == (
        '<ol hx-swap-oob="afterbegin:#timeline"><li class="muted replay-gap" role="note">'
        "More events were missed while this page was away than a live update carries. "
        '<a href="/timeline/a%22b/?before=1-0&amp;x=&lt;">Show the older ones</a> or reload the'
        " page.</li></ol>"
    )
