"""How much lkn reads of one answer from an engine or an upstream: a broken or hostile one cannot
make lkn buffer without end. (A stream's events have their limit in ``lkn.sse``.)

``UpstreamTooLarge`` is an ``aiohttp.ClientPayloadError``: every caller that handles an answer
broken off on the wire handles this one too (a 502 for a client, a failed check or probe)."""
from __future__ import annotations

import aiohttp

# The most lkn holds in memory for one whole answer (JSON) while it reads it: each request in
# flight may hold this much. Large enough for an OpenAI-sized embeddings batch (2048 inputs of
# 4096 dimensions as JSON floats, ~92 MB).
MAX_UPSTREAM_BODY = 256 * 1024 * 1024


class UpstreamTooLarge(aiohttp.ClientPayloadError):
    """An answer larger than lkn reads; its connection is closed."""


async def read_limited(resp: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
    """The whole body of ``resp``, like ``resp.read()``, but never more than ``limit`` bytes
    (``MAX_UPSTREAM_BODY`` as it is at the call): beyond, the connection is closed and
    ``UpstreamTooLarge`` raised."""
    if limit is None:
        limit = MAX_UPSTREAM_BODY
    length = resp.content_length
    if length is not None and length > limit:
        resp.close()
        raise UpstreamTooLarge(f"the answer is {length} bytes, over lkn's limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            resp.close()
            raise UpstreamTooLarge(f"the answer is over lkn's limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
