"""Who is on the other end of a connection, as far as lkn can know: pure rules, no I/O.

Loopback is trusted as "the operator" only when nothing stands between: a request that came
through a proxy (``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP`` or ``Via``) may carry
anybody's request, and a same-host reverse proxy connects from 127.0.0.1. A proxy listed in
``server.trusted_proxies`` names the client in ``X-Forwarded-For`` (or ``Forwarded: for=``,
or ``X-Real-IP``): that address is the client's for fair shares and logs, but a client that
came through a proxy is never the operator, and neither is a request from a trusted proxy's
address that names no client (a plain ``proxy_pass``). Without keys a browser on the
box must not be a way in either: a page of another site can send a simple POST (no preflight)
to 127.0.0.1, and DNS rebinding makes a foreign name resolve to it, so the ``Host`` must be a
name of this box and any ``Origin``/``Sec-Fetch-Site`` must say "this site".
"""
from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "Via")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The longest text whose parse is cached: an address with a port or zone fits; a client's
# long header value is parsed each time, never pinned in memory.
MAX_CACHED_ADDRESS = 64


@dataclass(frozen=True)
class Client:
    address: str         # the client's address: the peer, or what a trusted proxy says
    direct: bool = True  # nothing stood between: no proxy header, no trusted proxy as peer

    @property
    def local(self) -> bool:
        """The operator's seat (without admin keys): a direct loopback peer. A client a proxy
        names is never local — what a proxy passes on, its client may have written."""
        return self.direct and is_loopback(self.address)


def ip_of(text: str | None) -> IPAddress | None:
    """An address from a peer or header value (``[::1]:80``, ``1.2.3.4:5``, ``fe80::1%eth0``);
    an IPv4-mapped IPv6 address as its IPv4 one; None when it is not an address."""
    if text is not None and len(text) <= MAX_CACHED_ADDRESS:
        return _cached_ip_of(text)  # peers and proxies repeat: each parsed once
    return _ip_of(text)


def _ip_of(text: str | None) -> IPAddress | None:
    text = (text or "").strip().strip('"')
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_cached_ip_of = lru_cache(maxsize=4096)(_ip_of)


def is_loopback(text: str | None) -> bool:
    address = ip_of(text)
    return address is not None and address.is_loopback


def in_networks(address: IPAddress | None, networks: tuple[str, ...]) -> bool:
    return address is not None and any(address in n for n in _networks(networks))


@lru_cache(maxsize=64)
def _networks(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                                  ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def _all(headers: Mapping[str, str], name: str) -> str:
    """Every line of a header, joined as one list (a proxy may append a line of its own
    after the client's)."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return ",".join(getall(name, ()))
    return headers.get(name, "")


def _forwarded_chain(headers: Mapping[str, str]) -> list[str]:
    """The addresses a request passed, the client first: X-Forwarded-For, else the ``for=``
    of Forwarded (RFC 7239), else X-Real-IP."""
    xff = _all(headers, "X-Forwarded-For")
    if xff:
        return [part.strip() for part in xff.split(",")]
    forwarded = _all(headers, "Forwarded")
    if forwarded:
        return [pair.split("=", 1)[1] for element in forwarded.split(",")
                for pair in (p.strip() for p in element.split(";"))
                if pair.lower().startswith("for=")]
    real = headers.get("X-Real-IP")
    return [real.strip()] if real else []


def client_of(peer: str | None, headers: Mapping[str, str],
              trusted_proxies: tuple[str, ...]) -> Client:
    """Who sent a request that arrived from ``peer`` with these headers. Only a peer in
    ``trusted_proxies`` is believed about its client (the rightmost hop it and its fellow
    proxies did not add); a trusted proxy that names nobody (a plain ``proxy_pass``) stands
    for an unknown client, never for itself."""
    peer = peer or "unknown"
    proxied = any(h in headers for h in PROXY_HEADERS)
    trusted = bool(trusted_proxies) and in_networks(ip_of(peer), trusted_proxies)
    if not proxied or not trusted:
        return Client(peer, direct=not proxied and not trusted)
    address = None
    for hop in reversed(_forwarded_chain(headers)):
        address = ip_of(hop)
        if address is None or not in_networks(address, trusted_proxies):
            break
    return Client(str(address) if address is not None else peer, direct=False)


@lru_cache(maxsize=8)
def box_names(listen: tuple[str, ...], cors_origins: tuple[str, ...],
              allowed_hosts: tuple[str, ...] = ()) -> frozenset[str]:
    """The names a request may use for this box: localhost, its host name (and its mDNS
    ``.local`` name), ``allowed_hosts`` (lowercase; ``*.lan``-style patterns allowed), the names
    lkn listens on, and the hosts of the allowed CORS origins (addresses are always fine: DNS
    rebinding needs a name)."""
    hostname = socket.gethostname().lower()
    names = {"localhost", hostname, hostname + ".local", *allowed_hosts}
    names.update(a.rsplit(":", 1)[0].strip("[]").lower() for a in listen)
    names.update(o.split("://", 1)[-1].rsplit(":", 1)[0].lower() for o in cors_origins)
    return frozenset(names)


def host_name(host: str) -> str:
    """``Host`` without its port and brackets, lowercase."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str, names: frozenset[str], *, loopback_only: bool = False) -> bool:
    """The request's ``Host`` is this box (``loopback_only``: a loopback address or
    ``localhost``, for the admin API)."""
    name = host_name(host)
    if loopback_only:
        return name == "localhost" or name.endswith(".localhost") or is_loopback(name)
    return ip_of(name) is not None or name in names or name.endswith(".localhost") or any(
        "*" in pattern and fnmatch.fnmatchcase(name, pattern) for pattern in names)


def same_site(host: str, origin: str | None, fetch_site: str | None,
              cors_origins: tuple[str, ...]) -> bool:
    """A browser would not have sent this from a page of another site (one of
    ``cors_origins`` is welcome): Origin, when sent, is this host or an allowed origin, and
    Sec-Fetch-Site, when sent, says same-origin or none (the user typed it)."""
    allowed = origin is not None and ("*" in cors_origins or origin in cors_origins)
    if origin is not None and not allowed and origin.split("://", 1)[-1].lower() != host.lower():
        return False
    return fetch_site is None or fetch_site in ("same-origin", "none") or allowed


def is_json(content_type: str) -> bool:
    """``application/json`` or any ``+json`` type (parameters ignored)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")
