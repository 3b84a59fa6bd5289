"""One guard for every URL the workers or the API call on a client's behalf (SSRF).

A client names URLs that a worker then POSTs to: an ``http_judge`` reward's ``url``, a NICE
``assist_endpoint``'s ``base_url`` and webhook destinations (``workers.tasks.webhooks``).
Unguarded, a client could make the worker call what only the worker can reach (cloud metadata
at 169.254.169.254, the database, Redis, an admin port on loopback, other hosts of the private
network) and read part of the answer back through the job's error text. The rules, applied
by ``check_url`` (statically, also at the API) and by ``guarded_client`` (on every request and
at connect time):

* https only; plain http only to an allowlisted destination. No userinfo (``user:pw@``) in URLs.
* Literal IPs must be public: loopback, private, link-local, multicast, unspecified, reserved,
  shared (100.64/10), site-local and non-global addresses are refused, also when embedded in an
  IPv6 form (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible, NAT64, 6to4, Teredo). Numeric hosts
  in a non-canonical form (``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``127.1``) are
  refused: resolvers read them as addresses, so they are a way round a string check.
* Host names of the local machine or network (``localhost``, ``*.localhost``, ``*.local``,
  ``*.internal``, ``*.localdomain``, ``*.home.arpa``, single-label names like ``redis``) are
  refused; every other name is resolved and every address it resolves to must be allowed.
* The check runs at connect time against the address actually dialled: the connection goes to
  the checked IP (TLS SNI and Host stay the URL's name), so DNS rebinding between a check and
  the connection gains nothing. Redirects are never followed; a 3xx is an error. No proxies
  from the environment (``trust_env=False``).
* ``OutboundPolicy`` is the operator's allowlist (``SIFT_OUTBOUND_ALLOW``): networks (CIDR)
  whose addresses are allowed, and exact host names that are trusted for whatever they resolve
  to; both may also be reached over plain http. Deliberate internal judges go there.

Remote bodies never reach a job's text: callers report status codes, not what a server said.
This module needs only the standard library, httpx and httpcore (no torch, nothing of
``workers.engine``), so the API imports it too; the engine turns ``OutboundRefused`` into its
own ``InvalidInput``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_LOCAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".home.arpa")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NUMBER = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")


class OutboundRefused(ValueError):
    """A URL or address that the outbound policy forbids; nothing was sent to it."""


@dataclass(frozen=True)
class OutboundPolicy:
    """The operator's exceptions to the rules: allowed networks and trusted exact host names.

    The default (empty) allows public https destinations only.
    """

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> OutboundPolicy:
        """From ``SIFT_OUTBOUND_ALLOW``'s entries: CIDRs or bare IPs, else exact host names."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if "/" in entry or ":" in entry or _is_numeric(entry):
                try:
                    networks.append(ipaddress.ip_network(entry, strict=True))
                except ValueError as exc:
                    raise ValueError(f"outbound allowlist entry {raw!r}: {exc}") from exc
                continue
            name = entry.removesuffix(".")
            if not _is_dns_name(name):
                raise ValueError(
                    f"outbound allowlist entry {raw!r} is neither a CIDR nor an exact host name "
                    "(no wildcards)"
                )
            hosts.add(name)
        return cls(allow_networks=tuple(networks), allow_hosts=frozenset(hosts))

    def allows_address(self, ip: IPAddress) -> bool:
        """Whether ``ip`` (or the IPv4 address it maps) lies in an allowlisted network."""
        forms: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)
        nets = self.allow_networks
        return any(f in net for f in forms for net in nets if f.version == net.version)


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be called on a client's behalf (e.g. "loopback"); None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            form, v4 = embedded
            reason = forbidden_reason(v4)
            if reason is not None:
                return f"{form} {reason}"
            if form == "IPv4-mapped":
                return None  # the socket dials the public IPv4 address itself
        if ip.is_site_local:
            return "site-local"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared (100.64.0.0/10)"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip.teredo is not None:
        server, client = ip.teredo
        return "Teredo", client if forbidden_reason(client) else server
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in _NAT64):
        return "NAT64", low32
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return "IPv4-compatible", low32
    return None


def address_allowed(ip: IPAddress, policy: OutboundPolicy) -> str | None:
    """None if ``ip`` may be dialled under ``policy``; else why not."""
    if policy.allows_address(ip):
        return None
    return forbidden_reason(ip)


def check_url(url: str | httpx.URL, policy: OutboundPolicy) -> httpx.URL:
    """The parsed URL if its form is allowed; raises OutboundRefused. Resolves nothing.

    Messages name the host, never the whole URL (its path or query may hold tokens).
    """
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise OutboundRefused(f"not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise OutboundRefused(f"scheme {parsed.scheme!r} is not allowed; use https")
    if parsed.userinfo:
        raise OutboundRefused("credentials in the URL (user:password@) are not allowed")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise OutboundRefused(f"port {parsed.port} is out of range")
    host = _host_of(parsed)
    ip = _check_host(host, policy)
    if parsed.scheme == "http" and not _allowlisted(host, ip, policy):
        raise OutboundRefused(
            f"plain http to {host!r} is not allowed; use https (an operator may allow http to "
            "an internal host with SIFT_OUTBOUND_ALLOW)"
        )
    return parsed


def resolve_checked(
    host: str, port: int, policy: OutboundPolicy, timeout: float | None = None
) -> list[str]:
    """The addresses to dial for ``host``, after every one of them passed ``policy``.

    Raises OutboundRefused for a forbidden host or address, httpcore.ConnectError when the name
    does not resolve (a transient failure the caller may retry), httpcore.ConnectTimeout when
    the lookup takes longer than ``timeout`` (None: as long as the resolver does).
    """
    host = host.lower().removesuffix(".")
    ip = _check_host(host, policy)
    if ip is not None:
        return [str(ip)]
    try:
        answers = _getaddrinfo(host, port, timeout)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve host {host!r}: {exc}") from exc
    addresses: list[str] = []
    for family, _, _, _, sockaddr in answers:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        reason = None if host in policy.allow_hosts else address_allowed(address, policy)
        if reason is not None:
            log.warning("outbound call to %r refused: resolves to %s (%s)", host, address, reason)
            raise OutboundRefused(f"host {host!r} resolves to a forbidden address ({reason})")
        if str(address) not in addresses:
            addresses.append(str(address))
    if not addresses:
        raise httpcore.ConnectError(f"host {host!r} has no IPv4 or IPv6 address")
    return addresses


def _getaddrinfo(host: str, port: int, timeout: float | None) -> list[Any]:
    """``socket.getaddrinfo``, given up on after ``timeout`` (it has no timeout of its own; the
    lookup left behind ends in its daemon thread when the resolver gives up)."""
    if timeout is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    result: dict[str, Any] = {}

    def lookup() -> None:
        try:
            result["answers"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # noqa: BLE001 - raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=lookup, name="sift-getaddrinfo", daemon=True)
    thread.start()
    thread.join(max(timeout, 0.0))
    if thread.is_alive():
        raise httpcore.ConnectTimeout(f"resolving host {host!r} took too long")
    if "error" in result:
        raise result["error"]
    return result["answers"]


class _Deadline:
    """A monotonic instant by which every network wait must be over."""

    def __init__(self, at: float) -> None:
        self.at = at

    def cap(self, timeout: float | None, expired: type[Exception]) -> float:
        """``timeout``, cut to the time left; raises ``expired`` once none is left."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise expired("the call's overall deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by the deadline: a server
    that trickles its answer a byte at a time cannot keep the caller past it."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream, self._deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.cap(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.cap(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        timeout = self._deadline.cap(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, timeout), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class GuardedBackend(httpcore.SyncBackend):
    """Resolves and checks at connect time, then dials the checked IP itself (no re-resolving).
    With a ``deadline`` (a ``time.monotonic()`` instant), the lookup, every connect (one per
    address tried), read and write wait at most until then."""

    def __init__(self, policy: OutboundPolicy, deadline: float | None = None) -> None:
        self.policy = policy
        self.deadline = _Deadline(deadline) if deadline is not None else None

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        deadline = self.deadline
        if deadline is None:
            addresses = resolve_checked(host, port, self.policy)
        else:
            lookup = deadline.cap(timeout, httpcore.ConnectTimeout)
            addresses = resolve_checked(host, port, self.policy, lookup)
        last: Exception = httpcore.ConnectError(f"host {host!r} has no address")
        for address in addresses:
            wait = timeout if deadline is None else deadline.cap(timeout, httpcore.ConnectTimeout)
            try:
                stream = super().connect_tcp(address, port, wait, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            return stream if deadline is None else _DeadlineStream(stream, deadline)
        raise last

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise OutboundRefused("unix sockets are not reachable on a client's behalf")


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with the guarded backend, the URL rules on every request, no 3xx."""

    def __init__(self, policy: OutboundPolicy, deadline: float | None = None) -> None:
        super().__init__(trust_env=False)
        self.policy = policy
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's
        # httpx takes no network backend, so its pool is replaced by one with ours (the tests'
        # connect-time cases fail if this stops taking effect)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, deadline),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        check_url(request.url, self.policy)
        response = super().handle_request(request)
        if 300 <= response.status_code < 400:
            response.close()
            raise OutboundRefused(
                f"{_host_of(request.url)!r} answered status {response.status_code}: "
                "redirects are not followed"
            )
        return response


def guarded_client(
    policy: OutboundPolicy,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    total_s: float | None = None,
) -> httpx.Client:
    """An httpx client for client-supplied URLs: every request and connection is checked.

    ``timeout`` is httpx's, per phase (each connect, each read). ``total_s`` also bounds the
    client's whole use from now: the name lookup, each connect, read and write wait at most
    the time left, then fail with httpx's ``ConnectTimeout``/``ReadTimeout``/``WriteTimeout``.
    """
    deadline = None if total_s is None else time.monotonic() + total_s
    return httpx.Client(
        transport=GuardedTransport(policy, deadline),
        timeout=timeout,
        headers=headers,
        trust_env=False,
        follow_redirects=False,
    )


# --- host forms --------------------------------------------------------------------------------


def _host_of(url: httpx.URL) -> str:
    return url.raw_host.decode("ascii").lower().removesuffix(".")


def _allowlisted(host: str, ip: IPAddress | None, policy: OutboundPolicy) -> bool:
    return host in policy.allow_hosts or (ip is not None and policy.allows_address(ip))


def _check_host(host: str, policy: OutboundPolicy) -> IPAddress | None:
    """The literal IP of ``host`` if it is one (and allowed); None for an allowed name."""
    if not host:
        raise OutboundRefused("the URL has no host")
    if ":" in host:  # httpx gives IPv6 literals without brackets
        if "%" in host:
            raise OutboundRefused("IPv6 zone ids are not allowed in URLs")
        try:
            ip: IPAddress = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise OutboundRefused(f"host {host!r} is not a valid IPv6 address") from exc
        return _checked_ip(ip, host, policy)
    if _is_numeric(host):
        value = _inet_aton(host)
        if value is None:
            raise OutboundRefused(f"host {host!r} is not a valid IPv4 address")
        ip = ipaddress.IPv4Address(value)
        if str(ip) != host:
            raise OutboundRefused(
                f"host {host!r} is a non-canonical form of the IPv4 address {ip}; "
                "write addresses as a.b.c.d"
            )
        return _checked_ip(ip, host, policy)
    if host in policy.allow_hosts:
        return None
    if not _is_dns_name(host):
        raise OutboundRefused(f"host {host!r} is not a valid host name")
    if host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES):
        raise OutboundRefused(f"host {host!r} names the local machine or network")
    if "." not in host:
        raise OutboundRefused(
            f"host {host!r} is a single-label (internal) name; use a fully qualified name"
        )
    return None


def _checked_ip(ip: IPAddress, host: str, policy: OutboundPolicy) -> IPAddress:
    reason = address_allowed(ip, policy)
    if reason is not None:
        raise OutboundRefused(f"host {host!r} is a forbidden address ({reason})")
    return ip


def _is_dns_name(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def _is_numeric(host: str) -> bool:
    """Whether resolvers read ``host`` as an IPv4 address: its last label is a number (the
    WHATWG URL rule), e.g. ``127.1``, ``0x7f000001``, ``2130706433``."""
    labels = host.removesuffix(".").split(".")
    return bool(_NUMBER.match(labels[-1].lower()))


def _inet_aton(host: str) -> int | None:
    """``host`` as inet_aton(3) reads it (1 to 4 parts, decimal, 0-octal or 0x-hex; the last
    part fills the remaining bytes), or None if it is not such a number."""
    parts = host.removesuffix(".").split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        part = part.lower()
        if not _NUMBER.match(part):
            return None
        try:
            if part.startswith("0x"):
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part, 8))
            else:
                values.append(int(part, 10))
        except ValueError:  # 08, 09: not octal
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    value = last
    for i, v in enumerate(head):
        value += v << (8 * (3 - i))
    return value
