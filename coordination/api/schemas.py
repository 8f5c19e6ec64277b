"""API schemas derived from the core's dataclasses, so a field added to the core appears in
the API (and its OpenAPI schema) without anyone re-typing it here.

``schema_from_dataclass`` reads the dataclass's fields and resolved type hints and builds a
django-ninja ``Schema`` with the same fields, every one required in the output (the API always
sends each one, null or not). What the API leaves out, or shows with another type, is said
explicitly at the call site, where a reader (and ``tests/web/test_api_schemas.py``) sees it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from ninja import Field, Schema
from pydantic import create_model


def schema_from_dataclass(
    source: type,
    name: str,
    *,
    exclude: frozenset[str] = frozenset(),
    types: dict[str, Any] | None = None,
    descriptions: dict[str, str] | None = None,
    doc: str | None = None,
) -> type[Schema]:
    """A ``Schema`` named ``name`` with ``source``'s fields minus ``exclude``; ``types``
    overrides a field's type, ``descriptions`` documents fields. Naming a field the dataclass
    does not have is an error at import, not a silently ignored override."""
    types, descriptions = types or {}, descriptions or {}
    names = [f.name for f in dataclasses.fields(source)]
    unknown = (set(exclude) | set(types) | set(descriptions)) - set(names)
    if unknown:
        raise TypeError(f"{source.__name__} has no field(s) {sorted(unknown)}")
    hints = typing.get_type_hints(source)
    fields: dict[str, Any] = {
        field: (types.get(field, hints[field]), Field(..., description=descriptions.get(field)))
        for field in names
        if field not in exclude
    }
    return create_model(
        name, __base__=Schema, __module__=__name__, __doc__=doc or source.__doc__, **fields
    )
