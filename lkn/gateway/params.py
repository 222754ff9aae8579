"""What the admin and status routes read from a request's query, and the 404 they answer for
an engine, backend or request that is not there."""
from __future__ import annotations

from aiohttp import web

from lkn.errors import BadRequest, ModelNotFound


class NotFound(ModelNotFound):
    code = "not_found"


def query_number(request: web.Request, name: str, default: float | None, *,
                 low: float, high: float) -> float | None:
    """The query parameter ``name`` as a number in [low, high]; ``default`` when absent."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # nan fails too
        raise BadRequest(f"query parameter {name} must be a number in [{low:g}, {high:g}], "
                         f"got {raw!r}", param=name)
    return value


def flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")
