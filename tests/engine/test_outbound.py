"""The outbound guard (SSRF): every forbidden destination is refused before a packet is sent.

Only loopback listeners are used. A listener that must stay untouched is a bare listening
socket: after the call a non-blocking ``accept`` finds no connection in its queue. Name
resolution is faked by patching ``socket.getaddrinfo`` (numeric hosts go to the real one).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from workers.engine import http
from workers.engine.assist import ChatEndpoint, fetch_responses
from workers.engine.errors import EngineError, InvalidInput
from workers.engine.nice import ProbePrompt
from workers.outbound import (
    GuardedBackend,
    OutboundPolicy,
    OutboundRefused,
    check_url,
    forbidden_reason,
    guarded_client,
    resolve_checked,
)

DEFAULT = OutboundPolicy()
LOOPBACK = OutboundPolicy.from_entries(["127.0.0.1/32"])
SECRET = b"SECRET-INTERNAL-TOKEN aws_secret_access_key=abc123"
PUBLIC_IP = "93.184.215.14"


# --- helpers -----------------------------------------------------------------------------------


@contextmanager
def listener() -> Iterator[socket.socket]:
    """A listening socket on 127.0.0.1 that nobody accepts on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock
    finally:
        sock.close()


def assert_untouched(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        conn, peer = sock.accept()
    except BlockingIOError:
        return
    conn.close()
    pytest.fail(f"the listener received a connection from {peer}")


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


Reply = tuple[int, dict[str, str], bytes]


@contextmanager
def server(reply: Callable[[str], Reply]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """A loopback HTTP server: ``reply(path)`` -> (status, headers, body); records requests."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("content-length", "0")))
            seen.append({"path": self.path, "host": self.headers["host"]})
            status, headers, body = reply(self.path)
            self.send_response(status)
            for k, v in {"content-length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(srv.server_address[1]), seen
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """``names[host]``: the answers of successive lookups (the last one repeats)."""
    names: dict[str, list[list[str]]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        key = host.decode() if isinstance(host, bytes) else str(host)
        if key not in names:
            try:
                ipaddress.ip_address(key)
            except ValueError:
                raise socket.gaierror(socket.EAI_NONAME, "unknown in this test") from None
            return real(host, port, *args, **kwargs)
        answers = names[key][0] if len(names[key]) == 1 else names[key].pop(0)
        out = []
        for a in answers:
            family = socket.AF_INET6 if ":" in a else socket.AF_INET
            sockaddr = (a, int(port), 0, 0) if ":" in a else (a, int(port))
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def post(policy: OutboundPolicy, url: str, **kwargs: Any) -> httpx.Response:
    with guarded_client(policy, timeout=2.0) as client:
        return client.post(url, json={"x": 1}, **kwargs)


# --- static rules ------------------------------------------------------------------------------

FORBIDDEN_HOSTS = [
    # IPv4 classes
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    # non-canonical numeric forms (all read as 127.0.0.1 or 169.254.169.254 by inet_aton)
    "0x7f000001",
    "2130706433",
    "017700000001",
    "127.1",
    "127.0.1",
    "0x7f.0.0.1",
    "0xa9fea9fe",
    "1.2.3.4.5",
    "1.08",
    # IPv6 classes and embeddings
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fe80::1%25eth0]",
    "[fc00::1]",
    "[fd12:3456::1]",
    "[fec0::1]",
    "[ff02::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:10.0.0.1]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[64:ff9b::a9fe:a9fe]",
    "[2002:7f00:1::]",
    "[2002:a9fe:a9fe::1]",
    "[2001:0:808:808:0:0:80ff:fffe]",  # Teredo, client 127.0.0.1
    "[2001:db8::1]",
    # names of the local machine or network
    "localhost",
    "LOCALHOST.",
    "a.localhost",
    "localhost.localdomain",
    "ip6-localhost",
    "printer.local",
    "metadata.google.internal",
    "redis",
    "postgres",
]


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
def test_check_url_refuses_every_forbidden_host(host: str) -> None:
    with pytest.raises(OutboundRefused):
        check_url(f"https://{host}:8443/judge", DEFAULT)
    with pytest.raises(OutboundRefused):  # an allowlist for another network does not help
        check_url(f"https://{host}/judge", OutboundPolicy.from_entries(["203.0.113.0/24"]))


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/judge",  # plain http to a destination not allowlisted
        "ftp://example.com/judge",
        "file:///etc/passwd",
        "https://user:pw@example.com/judge",
        "https://example.com@127.0.0.1/judge",
        "https:///judge",
        "https://exa mple.com/",
        "https://%31%32%37.0.0.1/",
        "https://example.com:0/",
    ],
)
def test_check_url_refuses_bad_forms(url: str) -> None:
    with pytest.raises(OutboundRefused):
        check_url(url, DEFAULT)


def test_refusals_name_the_reason() -> None:
    with pytest.raises(OutboundRefused, match="non-canonical form of the IPv4 address 127.0.0.1"):
        check_url("https://0x7f000001/", DEFAULT)
    with pytest.raises(OutboundRefused, match=r"IPv4-mapped link-local"):
        check_url("https://[::ffff:169.254.169.254]/", DEFAULT)
    with pytest.raises(OutboundRefused, match="plain http"):
        check_url("http://example.com/", DEFAULT)
    with pytest.raises(OutboundRefused) as info:
        check_url("https://localhost/judge?token=s3cr3t", DEFAULT)
    assert "s3cr3t" not in str(info.value)  # the URL's query is never quoted


@pytest.mark.parametrize(
    "url",
    ["https://example.com/judge", "https://8.8.8.8/", "https://[2606:4700::1]:8443/x"],
)
def test_public_https_passes_the_static_check(url: str) -> None:
    assert check_url(url, DEFAULT).scheme == "https"


def test_forbidden_reason_classifies() -> None:
    def reason(a: str) -> str | None:
        return forbidden_reason(ipaddress.ip_address(a))

    assert reason("8.8.8.8") is None and reason("2606:4700::1") is None
    assert reason("::ffff:8.8.8.8") is None  # dials 8.8.8.8 itself
    assert reason("127.0.0.1") == "loopback" and reason("::1") == "loopback"
    assert reason("169.254.169.254") == "link-local"
    assert reason("100.64.0.1") == "shared (100.64.0.0/10)"
    assert reason("fec0::1") == "site-local"
    assert reason("::ffff:127.0.0.1") == "IPv4-mapped loopback"
    assert reason("2002:7f00:1::") == "6to4 loopback"
    assert reason("64:ff9b::a00:1") == "NAT64 private"


def test_the_allowlist_opens_networks_and_exact_names_also_over_http() -> None:
    policy = OutboundPolicy.from_entries(["10.0.0.0/8", " Judge.Corp.Example. ", "fd00::/8", ""])
    assert policy.allow_hosts == frozenset({"judge.corp.example"})
    check_url("http://10.1.2.3:8080/judge", policy)
    check_url("http://[::ffff:10.1.2.3]/judge", policy)
    check_url("http://[fd00::5]/judge", policy)
    check_url("http://judge.corp.example/judge", policy)
    check_url("https://judge.corp.example/judge", policy)
    for url in ("http://11.0.0.1/", "https://127.0.0.1/", "http://other.corp.example/"):
        with pytest.raises(OutboundRefused):
            check_url(url, policy)


@pytest.mark.parametrize("entry", ["*.corp.example", "10.0.0.1/8", "judge:8080", "1.2.3", "a b"])
def test_bad_allowlist_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="outbound allowlist entry"):
        OutboundPolicy.from_entries([entry])


def test_settings_read_the_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from service.config import Settings

    monkeypatch.setenv("SIFT_OUTBOUND_ALLOW", "127.0.0.1/32, judge.corp.example")
    policy = Settings().outbound_policy()
    assert policy.allow_networks == (ipaddress.ip_network("127.0.0.1/32"),)
    assert policy.allow_hosts == frozenset({"judge.corp.example"})
    monkeypatch.setenv("SIFT_OUTBOUND_ALLOW", "*.corp.example")
    with pytest.raises(ValidationError, match="outbound allowlist entry"):
        Settings()
    monkeypatch.delenv("SIFT_OUTBOUND_ALLOW")
    assert Settings().outbound_policy() == OutboundPolicy()


# --- no packet to a forbidden address ----------------------------------------------------------

LOOPBACK_FORMS = [
    "127.0.0.1",
    "0x7f000001",
    "2130706433",
    "017700000001",
    "127.1",
    "0.0.0.0",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "localhost",
    "a.localhost",
]


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_guarded_client_sends_nothing_to_loopback_forms(host: str, scheme: str) -> None:
    with listener() as sock:
        with pytest.raises(OutboundRefused):
            post(DEFAULT, f"{scheme}://{host}:{port_of(sock)}/judge")
        assert_untouched(sock)


@pytest.mark.parametrize("host", ["127.0.0.1", "0x7f000001", "::ffff:127.0.0.1", "localhost"])
def test_the_connect_time_check_alone_refuses(host: str) -> None:
    """The backend checks what it dials even when no URL check ran before it."""
    with listener() as sock:
        with pytest.raises(OutboundRefused):
            GuardedBackend(DEFAULT).connect_tcp(host, port_of(sock), timeout=2.0)
        assert_untouched(sock)


def test_a_name_that_resolves_to_loopback_is_refused(fake_dns: dict[str, Any]) -> None:
    fake_dns["judge.example.com"] = [["127.0.0.1"]]
    fake_dns["mixed.example.com"] = [[PUBLIC_IP, "127.0.0.1"]]  # every answer must pass
    fake_dns["v6.example.com"] = [["::ffff:127.0.0.1"]]
    with listener() as sock:
        for name in fake_dns:
            with pytest.raises(OutboundRefused, match="resolves to a forbidden address"):
                post(DEFAULT, f"https://{name}:{port_of(sock)}/judge")
        assert_untouched(sock)


def test_dns_rebinding_is_refused_at_connect_time(fake_dns: dict[str, Any]) -> None:
    """A name that answers a public address to a first check and loopback afterwards."""
    fake_dns["rebind.example.com"] = [[PUBLIC_IP], ["127.0.0.1"]]
    with listener() as sock:
        port = port_of(sock)
        assert resolve_checked("rebind.example.com", port, DEFAULT) == [PUBLIC_IP]
        check_url(f"https://rebind.example.com:{port}/judge", DEFAULT)
        with pytest.raises(OutboundRefused, match="resolves to a forbidden address"):
            post(DEFAULT, f"https://rebind.example.com:{port}/judge")
        assert_untouched(sock)


def test_the_connection_goes_to_the_checked_address_keeping_the_host_name(
    fake_dns: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []
    patched = socket.getaddrinfo

    def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(str(host))
        return patched(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    with server(lambda path: (200, {}, b'{"reward": 1}')) as (port, seen):
        fake_dns["judge.corp.example"] = [["127.0.0.1"], ["10.9.9.9"]]  # 2nd answer unused
        policy = OutboundPolicy.from_entries(["judge.corp.example"])
        reply = post(policy, f"http://judge.corp.example:{port}/judge")
    assert reply.status_code == 200 and reply.json() == {"reward": 1}
    assert seen == [{"path": "/judge", "host": f"judge.corp.example:{port}"}]
    assert lookups.count("judge.corp.example") == 1  # resolved once, then dialled by address


def test_allowlisted_loopback_works_over_plain_http() -> None:
    with server(lambda path: (200, {}, b'{"ok": true}')) as (port, seen):
        assert post(LOOPBACK, f"http://127.0.0.1:{port}/x").json() == {"ok": True}
    assert len(seen) == 1


def test_environment_proxies_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    with listener() as proxy, server(lambda path: (200, {}, b"{}")) as (port, seen):
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(var, f"http://127.0.0.1:{port_of(proxy)}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert post(LOOPBACK, f"http://127.0.0.1:{port}/x").status_code == 200
        assert_untouched(proxy)
    assert len(seen) == 1


@pytest.mark.parametrize("follow", [False, True])
def test_redirects_are_not_followed(fake_dns: dict[str, Any], follow: bool) -> None:
    fake_dns["judge.corp.example"] = [["127.0.0.1"]]
    policy = OutboundPolicy.from_entries(["judge.corp.example"])
    with listener() as forbidden:
        target = f"http://127.0.0.1:{port_of(forbidden)}/latest/meta-data"
        with server(lambda path: (302, {"location": target}, b"")) as (port, seen):
            with pytest.raises(OutboundRefused, match="redirects are not followed"):
                post(policy, f"http://judge.corp.example:{port}/judge", follow_redirects=follow)
            with guarded_client(policy, timeout=2.0) as client:
                with pytest.raises(InvalidInput, match="302: redirects are not followed"):
                    http.post_json(
                        client,
                        f"http://judge.corp.example:{port}/judge",
                        {},
                        retries=2,
                        what="http judge",
                    )
        assert_untouched(forbidden)
    assert len(seen) == 2  # one request each, none retried or followed


# --- remote bodies never reach the error text --------------------------------------------------


@pytest.mark.parametrize("status", [400, 403, 404, 500, 503])
def test_post_json_never_quotes_the_body(status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "BACKOFF_S", 0.01)
    with server(lambda path: (status, {"content-type": "text/plain"}, SECRET)) as (port, _):
        with guarded_client(LOOPBACK, timeout=2.0) as client:
            with pytest.raises(EngineError, match=f"status {status}") as info:
                http.post_json(client, f"http://127.0.0.1:{port}/", {}, retries=1, what="judge")
    assert "SECRET" not in str(info.value) and "abc123" not in str(info.value)


def test_a_reply_that_is_not_http_is_not_quoted() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)

        def garbage() -> None:
            for _ in range(2):
                conn, _ = sock.accept()
                conn.recv(65536)
                conn.sendall(b"-ERR " + SECRET + b"\r\n\r\n")
                conn.close()

        thread = threading.Thread(target=garbage, daemon=True)
        thread.start()
        with guarded_client(LOOPBACK, timeout=2.0) as client:
            with pytest.raises(EngineError, match="not valid HTTP") as info:
                url = f"http://127.0.0.1:{port_of(sock)}/"
                http.post_json(client, url, {}, retries=1, what="judge")
        thread.join(timeout=5)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, SECRET, "no chat completion"),
        (200, json.dumps({"choices": [{"message": {"content": 7}}], "x": SECRET.decode()}), "no "),
        (401, SECRET, "status 401"),
        (500, SECRET, "status 500"),
    ],
)
def test_assist_errors_never_quote_the_endpoint(
    status: int, body: bytes | str, expected: str
) -> None:
    data = body.encode() if isinstance(body, str) else body
    probe = ProbePrompt("q1", ({"role": "user", "content": "hi"},))
    with server(lambda path: (status, {"content-type": "application/json"}, data)) as (port, _):
        endpoint = ChatEndpoint(f"http://127.0.0.1:{port}/v1", "m", n=1, retries=0)
        with pytest.raises(EngineError, match=expected) as info:
            fetch_responses(endpoint, [probe], outbound=LOOPBACK)
    assert "SECRET" not in str(info.value)


def test_assist_endpoint_is_guarded_by_default() -> None:
    probe = ProbePrompt("q1", ({"role": "user", "content": "hi"},))
    with listener() as sock:
        for host in ("127.0.0.1", "0x7f000001", "[::ffff:127.0.0.1]"):
            endpoint = ChatEndpoint(f"https://{host}:{port_of(sock)}/v1", "m", n=1, retries=3)
            with pytest.raises(InvalidInput, match="assist endpoint .* refused: host"):
                fetch_responses(endpoint, [probe])
        assert_untouched(sock)
