"""Saved filters: a user's named sessions-list queries."""

from __future__ import annotations

from typing import Any

from coordination.dashboard.fragments import SessionFilters
from coordination.models import SavedFilter


class FilterNotSaved(ValueError):
    """Why a filter could not be saved, in words for the page."""


async def user_filters(user) -> list[SavedFilter]:
    return [f async for f in SavedFilter.objects.filter(user=user)]


async def save_filter(user, name: str, query: Any, *, replace: bool = False) -> SavedFilter:
    """Save the filters in ``query`` under ``name``. A name already taken is refused unless
    ``replace`` says so: a saved filter is never overwritten by accident."""
    name = (name or "").strip()
    if not name:
        raise FilterNotSaved("Give the filter a name.")
    if len(name) > 60:
        raise FilterNotSaved(f"The name is {len(name)} characters; the limit is 60.")
    canonical = SessionFilters.from_query(query).query_string(cursor=None)
    if not canonical:
        raise FilterNotSaved("Set a status, an owner or an id prefix before saving.")
    existing = SavedFilter.objects.filter(user=user)
    taken = await existing.filter(name=name).aexists()
    if taken and not replace:
        raise FilterNotSaved(
            f'You already have a filter named {name!r}: tick "replace it" to overwrite it, '
            "or choose another name."
        )
    if not taken and await existing.acount() >= SavedFilter.MAX_PER_USER:
        raise FilterNotSaved(
            f"You have {SavedFilter.MAX_PER_USER} saved filters; delete one to save another."
        )
    saved, _ = await SavedFilter.objects.aupdate_or_create(
        user=user, name=name, defaults={"query": canonical}
    )
    return saved


async def delete_filter(user, pk: int) -> bool:
    deleted, _ = await SavedFilter.objects.filter(user=user, pk=pk).adelete()
    return bool(deleted)
