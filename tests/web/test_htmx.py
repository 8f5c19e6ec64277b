"""htmx requests through django-htmx: every view that answers htmx with something other than
what it answers a plain request sends ``Vary: HX-Request`` on both, so a cache never serves
the fragment as the page (or the page into a fragment's slot)."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.utils.cache import cc_delim_re

from coordination import AgentCoordinator

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def sup_client(client, supervisor):
    client.force_login(supervisor)
    return client


@pytest.fixture
def coord(redis_url, namespace):
    return lambda sid: AgentCoordinator(sid, redis_url, namespace=namespace)


def varies_on_htmx(response) -> bool:
    return "hx-request" in {h.lower() for h in cc_delim_re.split(response.get("Vary", ""))}


def test_timeline_both_variants_vary_on_hx_request(sup_client, coord):
    async_to_sync(coord("t-1").publish)("message", {"n": 1})
    fragment = sup_client.get("/timeline/t-1/", **HTMX)
    page = sup_client.get("/timeline/t-1/")
    assert fragment.status_code == page.status_code == 200
    assert 'hx-swap-oob="beforeend:#timeline"' in fragment.content.decode()
    assert "<h1>Older events</h1>" in page.content.decode()
    assert varies_on_htmx(fragment) and varies_on_htmx(page)


def test_agents_both_variants_vary_on_hx_request(sup_client):
    fragment = sup_client.get("/agents/", **HTMX)
    page = sup_client.get("/agents/")
    assert "<html" not in fragment.content.decode() and "<html" in page.content.decode()
    assert varies_on_htmx(fragment) and varies_on_htmx(page)


def test_a_header_other_than_true_is_not_htmx(sup_client):
    """django-htmx reads only ``HX-Request: true``, as the hand-written checks did."""
    assert "<html" in sup_client.get("/agents/", HTTP_HX_REQUEST="false").content.decode()


def test_claim_next_redirects_htmx_on_the_client_and_others_with_a_302(sup_client, coord):
    for sid in ("c-1", "c-2"):
        async_to_sync(coord(sid).escalate)("help")
    htmx = sup_client.post("/escalations/claim-next/", **HTMX)
    assert htmx.status_code == 200 and htmx["HX-Redirect"] == "/sessions/c-1/"
    plain = sup_client.post("/escalations/claim-next/")
    assert plain.status_code == 302 and plain["Location"] == "/sessions/c-2/"
    assert "HX-Redirect" not in plain
    assert varies_on_htmx(htmx) and varies_on_htmx(plain)


def test_act_bulk_and_decide_vary_on_hx_request(sup_client, coord):
    for sid in ("a-1", "a-2"):
        async_to_sync(coord(sid).escalate)("help")
    act_htmx = sup_client.post("/act/take-over/a-1/", **HTMX)
    act_plain = sup_client.post("/act/release/a-1/")
    assert act_htmx.status_code == 200 and act_plain.status_code == 302
    bulk = {"action": "close", "session_ids": ["a-2"]}
    bulk_htmx = sup_client.post("/act-bulk/", bulk, **HTMX)
    bulk_plain = sup_client.post("/act-bulk/", bulk)
    assert "<html" not in bulk_htmx.content.decode() and "<html" in bulk_plain.content.decode()
    # an incomplete decision: the form's errors, as a fragment or as the whole page
    decide_htmx = sup_client.post("/act/decide/a-1/", {"decision": "approve"}, **HTMX)
    decide_plain = sup_client.post("/act/decide/a-1/", {"decision": "approve"})
    assert decide_htmx.status_code == 200 and decide_plain.status_code == 400
    for response in (act_htmx, act_plain, bulk_htmx, bulk_plain, decide_htmx, decide_plain):
        assert varies_on_htmx(response), response
