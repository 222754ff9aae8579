"""Who used the box, and how much (README "Sharing the box"): the durable activity log and each
client key's quotas, for operators, ``lkn usage`` / ``lkn activity`` and the dashboard.

Routes (admin keys, like the rest of ``/admin/``)::

    GET /admin/activity?key=&model=&since=&until=&status=&limit=&before=
                               one row per finished request, newest first (``status``: a
                               code, or ``error`` for all >= 400; times in epoch seconds)
    GET /admin/usage?group_by=key|model|day|api&since=&until=&key=&model=
                               sums: requests, errors, prompt/completion/reasoning tokens
    GET /admin/keys            each client key: its limits, what is used and left now, its
                               requests in flight and waiting

Also the start-up side: ``open_activity`` opens the log (``<state_dir>/activity.sqlite3``) and
gives every key back the quota it had used before a restart.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from aiohttp import web

from lkn.config import Config
from lkn.errors import BadRequest
from lkn.gateway.keys import STATE
from lkn.ops.activity import ActivityLog, ActivityUnavailable
from lkn.ops.quota import DAY_S, WINDOW_S, Ledger, utc_day
from lkn.request.tenancy import limits_of

log = logging.getLogger("lkn.gateway.admin_usage")
GROUPS = ("key", "model", "day", "api")


def open_activity(cfg: Config, state_dir: str) -> ActivityLog | None:
    """The activity log the config asks for (None: off)."""
    settings = cfg.server.activity
    if not settings.enabled:
        return None
    return ActivityLog(os.path.join(state_dir, "activity.sqlite3"),
                       retention_days=settings.retention_days or None)  # 0: keep all


async def restore_quotas(activity: ActivityLog, ledger: Ledger, cfg: Config) -> None:
    """Each key's tokens of today (UTC) and of the last minute, from the log: a restart gives
    no key its quota back."""
    now = time.time()
    try:
        day = await activity.tokens_since(utc_day(now) * DAY_S)
        minute = await activity.tokens_since(now - WINDOW_S)
        requests = await activity.requests_since(now - WINDOW_S)
    except ActivityUnavailable as exc:
        log.warning("quotas start empty: the activity log cannot be read (%s)", exc.message)
        return
    for key in cfg.server.keys:
        if key.id in day or key.id in requests:
            ledger.restore(key.id, day.get(key.id, 0), minute.get(key.id, 0), now,
                           minute_requests=requests.get(key.id, 0))


def _log(request: web.Request) -> ActivityLog:
    activity = request.app[STATE].activity
    if activity is None:
        raise ActivityUnavailable("the activity log is off (server.activity.enabled = false)")
    return activity


def _number(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be a number (epoch seconds), got "
                         f"{raw[:40]!r}", param=name) from None


def _integer(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"query parameter {name} must be a whole number, got {raw[:40]!r}",
                         param=name)
    return int(raw)


async def activity(request: web.Request) -> web.Response:
    q = request.query
    status: int | str | None = q.get("status") or None
    if status is not None and status != "error":
        status = _integer(request, "status", None)
    rows = await _log(request).activity(
        key=q.get("key") or None, model=q.get("model") or None,
        since=_number(request, "since"), until=_number(request, "until"), status=status,
        limit=_integer(request, "limit", 100) or 100, before_id=_integer(request, "before", None))
    return web.json_response({"object": "list", "data": rows})


async def usage(request: web.Request) -> web.Response:
    group_by = request.query.get("group_by", "key")
    if group_by not in GROUPS:
        raise BadRequest(f"group_by must be one of {', '.join(GROUPS)}, got {group_by[:40]!r}",
                         param="group_by")
    rows = await _log(request).usage(
        group_by=group_by,  # type: ignore[arg-type]  # checked against GROUPS above
        since=_number(request, "since"), until=_number(request, "until"),
        key=request.query.get("key") or None, model=request.query.get("model") or None)
    return web.json_response({"object": "list", "group_by": group_by, "data": rows})


def keys_payload(request: web.Request) -> list[dict[str, Any]]:
    state = request.app[STATE]
    now = time.time()
    return [{"id": key.id, "models": list(key.models) or None,
             "max_concurrent": key.max_concurrent, "priority": key.priority or "interactive",
             "in_flight": state.key_gate.in_flight(key.id),
             "waiting": state.key_gate.waiting(key.id),
             "quota": state.ledger.snapshot(key.id, limits_of(key), now)}
            for key in state.cfg.server.keys]


async def keys(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": keys_payload(request)})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/activity", activity)
    r.add_get("/admin/usage", usage)
    r.add_get("/admin/keys", keys)
