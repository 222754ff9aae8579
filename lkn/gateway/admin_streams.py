"""The admin API's endless streams (SSE): an engine's output followed, and lkn's events.

Each stream is tracked on the app (``STREAMS``) and cancelled at shutdown, so an operator's
open ``lkn logs -f`` or dashboard does not hold the exit for the whole drain timeout.

Every write has a deadline (``server.stream_idle_timeout_s``, a ``ClientWriter``): a follower
that stops reading is dropped, not held with its connection for ever.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from lkn.errors import BadRequest
from lkn.fleet.records import EngineRecord
from lkn.gateway.keys import STATE, STREAMS, GatewayState
from lkn.gateway.params import NotFound, flag, query_number
from lkn.relay.client_write import ClientWriter, WriteDeadline
from lkn.sse import frame_json, sse_headers

KEEPALIVE_S = 15.0  # a comment this often keeps proxies from closing a quiet stream
KEEPALIVE = b": keep-alive\n\n"


def find_engine(state: GatewayState, name: str) -> EngineRecord:
    """An engine by its id (``model@ctx#n``), its variant (``model@ctx``: the newest engine of
    it) or its model's name (when the model has one variant, or one running)."""
    records = sorted(state.manager.records(), key=lambda r: r.id)
    for r in records:
        if r.slot_id == name:
            return r
    same = [r for r in records if r.key == name]
    if same:
        return same[-1]
    mine = [r for r in records if r.model.public == name]
    running = [r for r in mine if r.running()]
    if len({r.key for r in mine}) == 1 or len(running) == 1:
        return (running or mine)[-1]
    if mine:
        raise BadRequest(f"model {name!r} has several engines; name one of "
                         f"{', '.join(sorted({r.key for r in mine}))}", param="engine")
    known = ", ".join(sorted({r.key for r in records}))
    raise NotFound(f"no engine {name!r}; engines: {known}")


async def logs(request: web.Request) -> web.StreamResponse:
    """The tail of an engine's output (JSON); with ``follow=1`` the tail, then every new line
    (SSE)."""
    record = find_engine(request.app[STATE], request.match_info["engine"])
    lines = int(query_number(request, "lines", 100, low=0, high=10_000) or 0)
    ring = record.process.logs
    tail = ring.tail(lines).splitlines() if lines else []
    if not flag(request, "follow"):
        return web.json_response({"engine": record.slot_id, "key": record.key,
                                  "file": ring.path, "lines": tail})
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)
    missed = 0

    def on_line(line: str) -> None:
        nonlocal missed
        try:
            queue.put_nowait(line)
        except asyncio.QueueFull:  # a reader far behind: say so rather than drop silently
            missed += 1

    # Listening before the headers go out: no line falls between the tail and the follow.
    ring.listeners.add(on_line)
    try:
        out = await _open_stream(request)
        for line in tail:
            await out.write(frame_json({"engine": record.slot_id, "line": line}))
        while True:
            try:
                line = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                await out.write(KEEPALIVE)
                continue
            if missed:
                await out.write(frame_json({"engine": record.slot_id, "dropped": missed}))
                missed = 0
            await out.write(frame_json({"engine": record.slot_id, "line": line}))
    except ConnectionResetError:
        return out.response
    finally:
        ring.listeners.discard(on_line)


async def events(request: web.Request) -> web.StreamResponse:
    """lkn's events (engine states, swaps, requests, reloads) as they happen, after the last
    ``history`` ones."""
    state = request.app[STATE]
    history = int(query_number(request, "history", 0, low=0, high=10_000) or 0)
    out = await _open_stream(request)
    with state.bus.subscribe() as sub:
        try:
            for past in state.bus.recent(limit=history) if history else []:
                await out.write(frame_json(past))
            while True:
                event = await sub.get(KEEPALIVE_S)
                await out.write(KEEPALIVE if event is None else frame_json(event))
        except ConnectionResetError:
            return out.response


async def _open_stream(request: web.Request) -> ClientWriter:
    resp = web.StreamResponse(headers=sse_headers({}))
    await resp.prepare(request)
    task = asyncio.current_task()
    if task is not None:
        streams = request.app[STREAMS]
        streams.add(task)
        task.add_done_callback(streams.discard)
    deadline = WriteDeadline(request.app[STATE].cfg.server.stream_idle_timeout_s,
                             f"{request.method} {request.path}")
    return ClientWriter(resp, request.transport, deadline)


async def close_streams(app: web.Application) -> None:
    """An ``on_shutdown`` hook: end every stream still open."""
    streams = app[STREAMS]
    for task in list(streams):  # a copy: each task leaves the set as it ends
        task.cancel()


def add_routes(app: web.Application) -> None:
    app[STREAMS] = set()
    app.on_shutdown.append(close_streams)
    app.router.add_get("/admin/engines/{engine}/logs", logs)
    app.router.add_get("/admin/events", events)
