"""Upstream URLs at the trust boundary: where a backend added at runtime may point
(``upstream_allowed``, pure), and how an upstream URL is shown (``redact_url``).

A runtime backend (``POST /admin/models/{m}/backends``) makes lkn send requests, and the key of an
``api_key_env``, to a URL an admin API caller chose. Its host must match
``server.runtime_upstreams``: a CIDR (``"10.0.0.0/8"``) for an IP-literal host, a
case-insensitive glob (``"gpu*.lan"``) for a name; the literal host is matched, never what it
resolves to. With no ``runtime_upstreams``, runtime backends are off unless ``admin_keys`` are
set, and then only the hosts the config file's own upstreams already use may be named. Cloud
metadata and link-local addresses are refused whatever the patterns say, and so is a URL with
userinfo (a key goes through ``api_key_env``, never into a URL).

Numeric host spellings the resolver accepts (``2852039166``, ``0xa9.0xfe.0xa9.0xfe``) are read
as the IPv4 address they name, so they cannot pass as names.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Never reachable through a runtime backend: link-local (where cloud metadata lives) and the
# metadata services' own addresses and names.
BLOCKED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "100.100.100.200/32", "fd00:ec2::254/128"))
BLOCKED_NAMES = frozenset({"metadata", "metadata.google.internal", "instance-data",
                           "instance-data.ec2.internal"})

# The id of a backend added at runtime: it becomes part of a model name, a URL path segment and
# a metrics label.
BACKEND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")


def redact_url(text: str) -> str:
    """``text`` (a URL, or a message quoting URLs) with every URL's userinfo masked:
    ``http://user:pass@host/v1`` -> ``http://***@host/v1``."""
    return _USERINFO.sub("***@", text)


def has_userinfo(url: str) -> bool:
    return bool(_USERINFO.search(url))


def host_of(url: str) -> str | None:
    """The URL's host, lower case, without brackets or a trailing dot; None: no host."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.rstrip(".").lower() if host else None


def ip_literal(host: str) -> IPAddress | None:
    """The address an IP-literal host names (any spelling the resolver would take), else None.
    An IPv4-mapped IPv6 address is its IPv4 address."""
    try:
        ip: IPAddress = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def blocked_address(address: str) -> bool:
    """A resolved address no runtime backend may reach (a name that resolves to the metadata
    service, nip.io-style, passes the check on the name as written)."""
    ip = ip_literal(address)
    return ip is not None and _blocked(address, ip)


def _blocked(host: str, ip: IPAddress | None) -> bool:
    if ip is None:
        return host in BLOCKED_NAMES
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return True  # a zone id only makes sense on a link-local address
    return any(ip.version == net.version and ip in net for net in BLOCKED_NETWORKS)


def _matches(host: str, ip: IPAddress | None, pattern: str) -> bool:
    try:
        network = ipaddress.ip_network(pattern.strip(), strict=False)
    except ValueError:
        network = None
    if ip is not None:  # an IP literal: CIDRs only
        return network is not None and ip.version == network.version and ip in network
    return network is None and fnmatch.fnmatchcase(host, pattern.strip().rstrip(".").lower())


def _same_host(host: str, ip: IPAddress | None, other: str) -> bool:
    other_ip = ip_literal(other)
    return other_ip == ip if ip is not None or other_ip is not None else other == host


def upstream_allowed(url: str, allow: Iterable[str], file_hosts: Iterable[str],
                     admin_keys_set: bool) -> str | None:
    """Why a runtime backend may not point at ``url``; None: it may. ``allow``: the
    ``runtime_upstreams`` patterns; ``file_hosts``: the hosts of the config file's upstreams."""
    allow = tuple(allow)
    if not allow and not admin_keys_set:
        return ("runtime backends are off: set server.runtime_upstreams to the hosts they may "
                "use (or server.admin_keys, to allow the hosts the config file already uses)")
    if not url.startswith(("http://", "https://")):
        return "the URL must start with http:// or https://"
    if has_userinfo(url):
        return ("the URL must not carry a user or password: name the key's environment "
                "variable in api_key_env")
    host = host_of(url)
    if host is None:
        return "the URL names no host"
    try:
        urlsplit(url).port
    except ValueError:
        return "the URL's port is not a number from 0 to 65535"
    ip = ip_literal(host)
    shown = redact_url(url)
    if _blocked(host, ip):
        return f"{shown}: link-local and cloud metadata addresses are never allowed"
    if allow:
        if not any(_matches(host, ip, pattern) for pattern in allow):
            return f"{shown}: the host {host} is not in server.runtime_upstreams"
        return None
    if not any(_same_host(host, ip, h) for h in file_hosts):
        return (f"{shown}: with server.runtime_upstreams empty, a runtime backend may only use a "
                f"host the config file's upstreams already use; add the host to "
                f"server.runtime_upstreams")
    return None
