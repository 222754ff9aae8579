"""lkn's command line: ``serve``, ``check-config``, ``status`` and the operator's commands
(``ps``, ``load``, ``unload``, ``logs``, ``reload``, ``usage``, ``activity``: see cli.py)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from lkn import cli, fastjson
from lkn.config import Config, load_config, missing_model_files, parse_listen, summary
from lkn.errors import ConfigError
from lkn.ops.inflight import REQUEST_ID
from lkn.gateway.loop import run


def _serve(args: argparse.Namespace) -> int:
    from lkn.gateway.server import serve

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"lkn: {exc}", file=sys.stderr)
        return 1
    listen = args.listen or None
    if listen:
        for address in listen:
            try:
                parse_listen(address)
            except ValueError as exc:
                print(f"lkn: --listen {address}: {exc}", file=sys.stderr)
                return 1
    logging.getLogger("lkn").info("starting with %s", cfg.path)
    run(serve(cfg, listen=listen))
    return 0


def _check(args: argparse.Namespace) -> int:
    """Every error of the file at once; with ``--strict`` missing model files fail too (one
    ``missing: model@ctx: path`` line each, for scripts)."""
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"{args.file}: {len(exc.errors)} error{'s' if len(exc.errors) > 1 else ''}",
              file=sys.stderr)
        return 1
    print(summary(cfg))
    missing = missing_model_files(cfg)
    for line in missing:
        print(f"missing: {line}", file=sys.stderr)
    if missing and args.strict:
        print(f"{args.file}: {len(missing)} model files missing", file=sys.stderr)
        return 1
    print(f"systemd TimeoutStopSec >= {stop_timeout_s(cfg):.0f} (drain + longest stop grace "
          f"+ {KILL_MARGIN_S:.0f} s to kill and reap)")
    print("config OK" + (f" ({len(missing)} model files missing)" if missing else ""))
    return 0


KILL_MARGIN_S = 15.0  # SIGKILL of what outlived its grace, the reap, the state file, exit


def stop_timeout_s(cfg: Config) -> float:
    """How long a SIGTERM'd lkn may take: it drains, then stops every engine at once, each
    with its stop grace."""
    from lkn.fleet.processes import default_client_factory
    graces = [default_client_factory(m, m.variants[0]).stop_grace_s(cfg.server.stop_grace_s)
              for p in cfg.models for m in p.engine_models if m.variants]
    return cfg.server.shutdown_drain_s + max(graces, default=0.0) + KILL_MARGIN_S


def health_url(address: str) -> str:
    return cli.base_url(address) + "/health"


def wait_until_up(address: str, timeout_s: float,
                  still_starting: Callable[[], bool] = lambda: True) -> dict[str, Any] | None:
    """Poll a starting lkn's /health until it answers (its JSON), ``timeout_s`` passes or
    ``still_starting()`` says the process is gone (None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(health_url(address), timeout=5) as resp:
                data: dict[str, Any] = fastjson.loads(resp.read())
                return data
        except (urllib.error.URLError, OSError, ValueError):
            if time.monotonic() >= deadline or not still_starting():
                return None
            time.sleep(0.1)


def _status(args: argparse.Namespace) -> int:
    if wait_until_up(args.address, args.wait) is None:
        print(f"lkn is not answering on {health_url(args.address)}", file=sys.stderr)
        return 1
    try:
        data = cli.call(args.address, "GET", "/status", timeout=30)
    except cli.CommandFailed as exc:
        print(f"lkn status: {exc}", file=sys.stderr)
        return 1
    config = data.get("config", {})
    print(f"lkn on {args.address}: up {data['uptime_s']}s, {data['in_flight']} in flight, "
          f"{data['queued']} queued, config generation {config.get('generation', '?')}")
    if config.get("last_reload_error"):
        print(f"  last reload failed: {config['last_reload_error']}")
    for e in data["engines"]:
        f = e.get("failures") or {}
        state = "FAILED" if f.get("failed") and e["state"] != "ready" else e["state"]
        notes = []
        if e.get("retired"):
            notes.append("retired: stops once idle")
        if f.get("consecutive"):
            notes.append(f"{f['consecutive']} failures in a row"
                         + (f", next try in {f['retry_in_s']}s" if f.get("retry_in_s") else ""))
        if e.get("crashes"):
            notes.append(f"{e['crashes']} crashes")
        print(f"  {e['key']:<30} {state:<9} pid={e['pid']} port={e['port']} "
              f"ctx={e['ctx_size']} vram~{e['vram_mb']}MiB in_flight={e['in_flight']}"
              + (f"  ({'; '.join(notes)})" if notes else ""))
        if f.get("last_error") and e["state"] != "ready":
            print("      " + f["last_error"].splitlines()[0][:160])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lkn", description="homeostatic inference gateway")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", required=True, help="the Lua config file")
    p.add_argument("--listen", action="append", metavar="HOST:PORT",
                   help="listen here instead of server.listen (repeatable)")
    p.set_defaults(func=_serve)
    p = sub.add_parser("check-config", help="validate a config file and print a summary")
    p.add_argument("file")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when a model file is missing")
    p.set_defaults(func=_check)
    p = sub.add_parser("status", help="show a running lkn's engines")
    p.add_argument("address", nargs="?", default="127.0.0.1:8080")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for lkn to answer (e.g. right after a start)")
    p.set_defaults(func=_status)
    cli.register(sub)
    from lkn.calibrate import register as register_calibrate
    register_calibrate(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s%(request_id)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_with_request_id)
    logging.getLogger("aiohttp.server").addFilter(_not_an_h2_probe)
    return int(args.func(args))


def _not_an_h2_probe(record: logging.LogRecord) -> bool:
    """sgl-router opens each worker connection with an HTTP/2 preface first (then falls back
    to HTTP/1.1): aiohttp answers it 400 and would log a traceback every time."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and "PRI/Upgrade" in str(exc))


def _with_request_id(record: logging.LogRecord) -> bool:
    """Log lines written while a request is served carry its id:
    ``lkn.request.handler [req-…]: …``."""
    rid = REQUEST_ID.get()
    record.request_id = f" [{rid}]" if rid else ""
    return True


if __name__ == "__main__":
    sys.exit(main())
