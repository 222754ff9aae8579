"""Load generators for bench/overhead.py: a built-in one (asyncio, keep-alive HTTP/1.1) and wrk.

Both run N connections, each sending the same POST again as soon as its answer is complete, for a
fixed duration (or, built-in only, a fixed count), and report the rate and the latency of whole
answers (a stream counts when its last chunk arrived).

The built-in client speaks HTTP/1.1 on ``asyncio.Protocol`` directly rather than through
aiohttp's ``ClientSession``: on a 2-core box the load generator shares the CPU with what it
measures, and aiohttp's client costs several times more per request than the parse below.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)  # built-in only
    p50_s: float = 0.0
    p99_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def request_bytes(url: str, body: dict, headers: dict[str, str] | None = None) -> bytes:
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}",
            "Content-Type: application/json", f"Content-Length: {len(data)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


class _Budget:
    def __init__(self, count: int | None, duration_s: float | None) -> None:
        self.left = count
        self.deadline = time.perf_counter() + duration_s if duration_s else None

    def take(self) -> bool:
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        if self.left is not None:
            if self.left <= 0:
                return False
            self.left -= 1
        return True


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request in flight at a time."""

    def __init__(self, request: bytes, expect: bytes | None, budget: _Budget,
                 latencies: list[float], done: asyncio.Future[None]) -> None:
        self.request = request
        self.expect = expect
        self.budget = budget
        self.latencies = latencies
        self.done = done
        self.errors = 0
        self.transport: asyncio.Transport | None = None
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.body_at = -1  # where the body starts, once the headers are in
        self.length = -1  # Content-Length, or -1 for chunked
        self.chunk_at = 0  # chunked: where the next chunk-size line starts
        self.status_ok = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if not self.budget.take():
            self.transport.close()  # type: ignore[union-attr]
            if not self.done.done():
                self.done.set_result(None)
            return
        self._reset()
        self.sent = time.perf_counter()
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.body_at < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.status_ok = head[9:12] == b"200"
            m = re.search(rb"\r\ncontent-length: *(\d+)", head)
            self.length = int(m.group(1)) if m else -1
            self.body_at = self.chunk_at = end + 4
        if self.length >= 0:
            if len(self.buf) < self.body_at + self.length:
                return
        elif not self._chunks_complete():
            return
        self.latencies.append(time.perf_counter() - self.sent)
        if not self.status_ok or (self.expect is not None and
                                  self.buf.find(self.expect, self.body_at) < 0):
            self.errors += 1
        self._send()

    def _chunks_complete(self) -> bool:
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", self.chunk_at)
            if eol < 0:
                return False
            size = int(bytes(buf[self.chunk_at:eol]).split(b";")[0], 16)
            end = eol + 2 + size + 2
            if len(buf) < end:
                return False
            self.chunk_at = end
            if size == 0:
                return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.errors += 1  # the server closed a connection we still wanted
            self.done.set_result(None)


async def _builtin(url: str, request: bytes, expect: bytes | None, conns: int,
                   count: int | None, duration_s: float | None) -> Result:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    budget = _Budget(count, duration_s)
    latencies: list[float] = []
    protocols: list[_Connection] = []
    futures = []
    t0 = time.perf_counter()
    for _ in range(conns):
        done: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            lambda d=done: _Connection(request, expect, budget, latencies, d),  # type: ignore[misc]
            parts.hostname, parts.port)
        protocols.append(proto)
        futures.append(done)
    await asyncio.gather(*futures)
    seconds = time.perf_counter() - t0
    return Result(requests=len(latencies), errors=sum(p.errors for p in protocols),
                  seconds=seconds, latencies_s=latencies, p50_s=percentile(latencies, 50),
                  p99_s=percentile(latencies, 99))


def builtin(url: str, body: dict, *, conns: int, count: int | None = None,
            duration_s: float | None = None, expect: bytes | None = None,
            headers: dict[str, str] | None = None) -> Result:
    return asyncio.run(_builtin(url, request_bytes(url, body, headers), expect, conns, count,
                                duration_s))


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
%s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("LKNBENCH %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
           latency:percentile(50), latency:percentile(99),
           e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk(url: str, body: dict, *, conns: int, duration_s: float,
        headers: dict[str, str] | None = None) -> Result:
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % (json.dumps(body), extra))
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{duration_s:g}s",
                              "--timeout", "10s", "-s", f.name, url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"LKNBENCH (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if m is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    reqs, micros, p50, p99, errors = (int(g) for g in m.groups())
    return Result(requests=reqs, errors=errors, seconds=micros / 1e6, p50_s=p50 / 1e6,
                  p99_s=p99 / 1e6)
