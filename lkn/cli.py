"""The operator's commands over the admin API: ``lkn ps``, ``load``, ``unload``, ``logs``,
``reload``.

Each talks to a running lkn at ``--address`` (default ``127.0.0.1:8080``) with the admin key from
``LKN_ADMIN_KEY`` (when the server sets ``admin_keys``). When lkn is not running or refuses, the
command prints one clear line on stderr and exits with status 1.
"""
from __future__ import annotations

import argparse
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator

from lkn import fastjson
from lkn.config import parse_listen

DEFAULT_ADDRESS = "127.0.0.1:8080"


class CommandFailed(Exception):
    """One line for stderr; the command exits with status 1."""


def base_url(address: str) -> str:
    host, port = parse_listen(address)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def _request(address: str, method: str, path: str) -> urllib.request.Request:
    try:
        url = base_url(address) + path
    except ValueError as exc:
        raise CommandFailed(f"--address {address}: {exc}") from None
    headers = {"Accept": "application/json"}
    key = os.environ.get("LKN_ADMIN_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return urllib.request.Request(url, method=method, headers=headers,
                                  data=b"" if method == "POST" else None)


# lkn is local or named by --address: never through an http_proxy from the environment (the
# admin key would go to the proxy, and lkn would see the proxy's address, not loopback).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _open(req: urllib.request.Request, address: str, timeout: float | None) -> Any:
    try:
        return _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            message = fastjson.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace").strip()[:300]
        raise CommandFailed(f"lkn refused ({exc.code}): {message}") from None
    except TimeoutError:
        raise CommandFailed(f"lkn on {address} did not answer within {timeout:g}s") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandFailed(f"lkn is not running on {address} ({reason})") from None


def call(address: str, method: str, path: str, timeout: float | None = 30) -> Any:
    """One admin call; ``timeout`` None for calls that wait for engines (load, unload)."""
    with _open(_request(address, method, path), address, timeout) as resp:
        try:
            return fastjson.loads(resp.read())
        except (ValueError, OSError, http.client.HTTPException) as exc:
            raise CommandFailed(f"lkn on {address} sent an unreadable answer ({exc})") from None


def follow(address: str, path: str) -> Iterator[dict[str, Any]]:
    """The data events of an SSE stream, as JSON."""
    with _open(_request(address, "GET", path), address, None) as resp:
        try:
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith("data: "):
                    yield fastjson.loads(line[6:])
        except (ValueError, OSError, http.client.HTTPException) as exc:
            raise CommandFailed(f"the stream from lkn on {address} broke off ({exc})") from None


# ------------------------------------------------------------------ commands

def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def ps_table(status: dict[str, Any]) -> str:
    """Like ``ollama ps``: one row per engine, with its model's traffic."""
    rows = [("ENGINE", "STATE", "CONTEXT", "VRAM", "IN FLIGHT", "IDLE FOR", "REQ/MIN",
             "P95", "NOTES")]
    models = status.get("models", {})
    breakers = {b["backend"]: b["breaker"]["state"] for m in models.values()
                for b in m.get("backends", [])}
    for e in status.get("engines", []):
        traffic = models.get(e["model"], {}).get("traffic", {}).get("300s", {})
        notes = [n for n, on in (("pinned", e.get("pinned")), ("unloading", e.get("unloading")),
                                 ("retired", e.get("retired"))) if on]
        failures = e.get("failures") or {}
        if failures.get("failed") and e["state"] != "ready":
            notes.append("FAILED")
        if e.get("backend"):
            breaker = breakers.get(e["backend"], "closed")
            notes.append(f"backend {e['backend']}" + ("" if breaker == "closed"
                                                      else f", circuit {breaker}"))
        p95 = traffic.get("p95_latency_s")
        rows.append((e["key"], e["state"], str(e.get("ctx_size", "-")),
                     f"~{e['vram_mb']} MiB", str(e["in_flight"]), _ago(e.get("idle_s")),
                     f"{traffic.get('per_minute', 0):g}",
                     f"{p95 * 1000:.0f}ms" if p95 is not None else "-", ",".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    vram = status.get("vram", {})
    lines.append(f"VRAM ~{vram.get('estimated_mb', 0)} of {vram.get('budget_mb', 0)} MiB; "
                 f"{status.get('in_flight', 0)} in flight, {status.get('queued', 0)} queued")
    idle = [c["key"] for c in status.get("unload_candidates", [])]
    if idle:
        lines.append(f"idle, could be unloaded: {', '.join(idle)}")
    return "\n".join(lines)


def _ps(args: argparse.Namespace) -> None:
    print(ps_table(call(args.address, "GET", "/status")))


def _model_path(name: str, action: str) -> str:
    return f"/admin/models/{urllib.parse.quote(name, safe='')}/{action}"


def _load(args: argparse.Namespace) -> None:
    query = f"?ctx={args.ctx}" if args.ctx else ""
    done = call(args.address, "POST", _model_path(args.model, "load") + query, timeout=None)
    print(f"{done['key']}: {done['state']}")


def _unload(args: argparse.Namespace) -> None:
    query = "?force=1" if args.force else ""
    done = call(args.address, "POST", _model_path(args.model, "unload") + query, timeout=None)
    stopped = [e["key"] for e in done["stopped"]]
    print(f"{done['model']}: " + (f"stopped {', '.join(stopped)}" if stopped
                                  else "no engine was running"))


def _logs(args: argparse.Namespace) -> None:
    path = (f"/admin/engines/{urllib.parse.quote(args.engine, safe='')}/logs"
            f"?lines={args.lines}")
    if not args.follow:
        for line in call(args.address, "GET", path)["lines"]:
            print(line)
        return
    for event in follow(args.address, path + "&follow=1"):
        if "line" in event:
            print(event["line"], flush=True)
        else:  # this reader fell behind the engine's output
            print(f"lkn logs: {event.get('dropped')} lines dropped", file=sys.stderr)


def _reload(args: argparse.Namespace) -> None:
    done = call(args.address, "POST", "/admin/reload", timeout=120)
    print(f"reloaded: config generation {done['generation']}, models "
          f"{', '.join(done['models'])}")


def register(sub: Any) -> None:
    """Add the operator commands to lkn's argument parser."""
    def add(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.add_argument("--address", default=DEFAULT_ADDRESS,
                       help=f"where lkn listens (default {DEFAULT_ADDRESS})")
        p.set_defaults(func=lambda args: run(func, args))
        return p

    add("ps", "engines, their state and traffic", _ps)
    p = add("load", "start (or swap in) a model's engine", _load)
    p.add_argument("model")
    p.add_argument("--ctx", type=int, help="the context variant (default: the smallest)")
    p = add("unload", "stop a model's engines once their requests are done", _unload)
    p.add_argument("model")
    p.add_argument("--force", action="store_true", help="stop now, cutting requests in flight")
    p = add("logs", "an engine's output", _logs)
    p.add_argument("engine", help="model@ctx, an engine id, or a model with one variant")
    p.add_argument("-n", "--lines", type=int, default=100)
    p.add_argument("-f", "--follow", action="store_true")
    add("reload", "re-read the config file (like SIGHUP)", _reload)


def run(func: Any, args: argparse.Namespace) -> int:
    try:
        func(args)
    except CommandFailed as exc:
        print(f"lkn {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
