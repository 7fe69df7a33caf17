"""A SOCKS5 connection refused on its destination gets the SOCKS5 reply code that says so (RFC 1928):
0x02 "connection not allowed by ruleset" for a policy's block, 0x01 "general failure" for tor unable to
carry it — never "request granted" followed by a closed connection. The origin counts accepts: none."""

import socket

import pytest

from .harness import curl, free_port, wait_for

pytestmark = pytest.mark.integration


def socks_policy(port, rules, default="allow"):
    return f"app: t\nlisten: {{port: {port}, mode: socks5}}\ndefault: {default}\nrules:\n{rules}"


def socks_connect(port: int, host: str, dport: int) -> bytes:
    """A raw SOCKS5 CONNECT by name; everything the proxy answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        name = host.encode()
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + dport.to_bytes(2, "big"))
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


def test_a_blocked_destination_is_refused_with_0x02(hush, origin, origin2):
    port = free_port()
    h = hush({"t": socks_policy(port, "  - {match: {host: 127.0.0.3}, action: block}\n")})
    res = curl("--socks5-hostname", f"127.0.0.1:{port}", origin2.url("/plain"))
    assert res.returncode == 97 and b"(2)" in res.stderr, res.stderr  # curl: "Can't complete SOCKS5 connection"
    tls = curl("--socks5", f"127.0.0.1:{port}", origin2.url("/tls").replace("http://", "https://"))
    assert tls.returncode == 97 and b"(2)" in tls.stderr, tls.stderr
    # the exact reply: version 5, code 2, bound 0.0.0.0:0, then the connection closes
    assert socks_connect(port, "127.0.0.3", origin2.port) == b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00"
    ok = curl("--socks5-hostname", f"127.0.0.1:{port}", origin.url("/ok"))  # allowed ones are granted
    assert ok.returncode == 0 and ok.stdout == b"origin 127.0.0.1 /ok\n"
    assert origin2.accepts == [] and len(origin.accepts) == 1
    h.stop()
    rows = [r for r in h.audit() if r["host"] == "127.0.0.3"]
    assert [(r["decision"], r["level"], r["ip_exposed"]) for r in rows] == [("block", "connect", 0)] * 3
    assert "mitmproxy refused" not in h.log and "Traceback" not in h.log


def test_a_default_block_refuses_every_destination_it_decides(hush, origin):
    port = free_port()
    h = hush({"t": socks_policy(port, "  - {match: {host: example.org}, action: allow}\n", default="block")})
    assert socks_connect(port, "127.0.0.1", origin.port)[:2] == b"\x05\x02"
    assert origin.accepts == []
    h.stop()
    assert [r["decision"] for r in h.audit()] == ["block"]


def test_a_rule_that_needs_the_request_is_still_granted_and_decided_per_request(hush, origin):
    port = free_port()
    h = hush({"t": socks_policy(port, "  - {match: {host: 127.0.0.1, path: /no/*}, action: block}\n")})
    res = curl("-w", "%{http_code}", "-o", "/dev/null", "--socks5-hostname", f"127.0.0.1:{port}", origin.url("/no/x"))
    assert res.returncode == 0 and res.stdout == b"403"  # granted: only the request can be decided
    assert origin.accepts == []
    h.stop()


def test_tor_not_ready_is_refused_with_0x01(hush, origin):
    port = free_port()
    config = f"tor:\n  mode: attach\n  control: 127.0.0.1:{free_port()}\n"  # no tor there
    h = hush({"t": socks_policy(port, "  - {match: {host: 127.0.0.1}, action: tor}\n")}, config=config)
    res = curl("--socks5-hostname", f"127.0.0.1:{port}", origin.url("/t"))
    assert res.returncode == 97 and b"(1)" in res.stderr, res.stderr
    assert origin.accepts == []
    h.stop()
    wait_for(lambda: h.audit(), message="no audit row")
    assert [(r["decision"], r["ip_exposed"]) for r in h.audit()] == [("tor-unavailable", 0)]
