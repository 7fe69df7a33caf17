"""Issue 11, class 5: a tunnel hush decided to inspect that stops being HTTP.

A rule that needs the request (here a ``path`` rule) makes hush intercept
every tunnel of the app.  Whatever arrives in such a tunnel that mitmproxy
cannot read as HTTP or TLS — a leading CRLF or blank, a request split before
its third byte, unknown bytes, a banner, an HTTP/2 preface — would make
mitmproxy fall back to relaying raw TCP, unchecked, to the target.  Servers
skip a leading CRLF and serve the request.  hush closes such a tunnel, sends
nothing, and audits it.
"""

import socket
import ssl
import time

import pytest

from .harness import free_port
from .rawserver import RawOrigin

pytestmark = pytest.mark.integration

INTERCEPT = "  - {match: {path: /never}, action: block}"  # a request-level rule: every tunnel is inspected


def policy(port, mode="http", rules=INTERCEPT, default="allow"):
    return f"""\
        app: testapp
        listen: {{port: {port}, mode: {mode}}}
        default: {default}
        rules:
        {rules}
    """


def request(path: str, host: str = "127.0.0.1") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


NOT_HTTP = {
    "leading-crlf": [b"\r\n" + request("/crlf")],
    "leading-lf": [b"\n\n" + request("/lf")],
    "leading-space": [b" " + request("/space")],
    "leading-tab": [b"\t" + request("/tab")],
    "nul-byte": [b"\x00" + request("/nul")],
    "split-before-third-byte": [b"GE", b"T /split HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"],
    "no-space-in-first-line": [b"GET/nospace\r\nHost: 127.0.0.1\r\n\r\n" + request("/after-nospace")],
    "ssh-banner": [b"SSH-2.0-OpenSSH_9.6\r\n" + request("/ssh")],
    "binary": [bytes(range(256)) + request("/binary")],
}


def connect(port: int, target: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert s.recv(100).startswith(b"HTTP/1.1 200"), "the CONNECT was not accepted"
    return s


def socks5(port: int, host: str, dport: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    name = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + dport.to_bytes(2, "big"))
    reply = s.recv(10)
    assert reply[:2] == b"\x05\x00", reply
    return s


def send_and_drain(s: socket.socket, chunks: list[bytes]) -> bytes:
    """Send each chunk on its own (so each is its own read at hush), then read until hush closes."""
    got = b""
    try:
        for i, chunk in enumerate(chunks):
            s.sendall(chunk)
            if i + 1 < len(chunks):
                time.sleep(0.2)  # not a sync: only makes the split arrive as two reads (the variant)
        s.settimeout(15)
        while True:
            data = s.recv(65536)
            if not data:
                break
            got += data
    except OSError:
        pass
    finally:
        s.close()
    return got


def stopped_rows(h) -> list[dict]:
    """Stop hush (SIGTERM writes every queued row) and return the audit."""
    h.stop()
    return h.audit()


def refused_rows(rows):
    return [r for r in rows if r["decision"] == "block" and r["ip_exposed"] == 0
            and "not HTTP" in ((r["note"] or "") + (r["error"] or ""))]


@pytest.mark.parametrize("variant", sorted(NOT_HTTP))
@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_an_inspected_tunnel_that_is_not_http_is_closed_and_audited(hush, origin, variant, mode):
    port = free_port()
    h = hush({"t": policy(port, mode)})
    s = connect(port, f"127.0.0.1:{origin.port}") if mode == "http" else socks5(port, "127.0.0.1", origin.port)
    got = send_and_drain(s, NOT_HTTP[variant])
    assert b"origin 127.0.0.1" not in got
    assert origin.accepts == [] and origin.requests == []
    rows = stopped_rows(h)
    assert len(refused_rows(rows)) == 1, rows
    [row] = refused_rows(rows)
    assert (row["host"], row["port"], row["method"]) == ("127.0.0.1", origin.port, "CONNECT")


def test_an_inspected_tunnel_that_is_http_still_works(hush, origin):
    # the control: the same tunnel with a well-formed request reaches the origin
    port = free_port()
    h = hush({"t": policy(port)})
    got = send_and_drain(connect(port, f"127.0.0.1:{origin.port}"), [request("/fine")])
    assert b"origin 127.0.0.1 /fine" in got
    assert [r.path for r in origin.requests] == ["/fine"]
    h.stop()
    assert [(r["decision"], r["ip_exposed"]) for r in h.audit()] == [("allow", 1)]


def _tls_client(alpn=None) -> ssl.SSLContext:
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    if alpn:
        client.set_alpn_protocols(alpn)
    return client


@pytest.mark.parametrize("inner", [b"\r\n" + request("/tls-crlf"), b"GE", b"\x00\x01\x02\x03 not http\r\n"])
@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_inside_intercepted_tls_too(hush, tls_origin, inner, mode):
    port = free_port()
    h = hush({"t": policy(port, mode)})
    s = connect(port, f"127.0.0.1:{tls_origin.port}") if mode == "http" else socks5(port, "127.0.0.1", tls_origin.port)
    got = b""
    try:
        with _tls_client().wrap_socket(s, server_hostname="localhost") as t:  # no ALPN: mitmproxy sniffs
            t.sendall(inner)
            t.settimeout(15)
            while data := t.recv(65536):
                got += data
    except (ssl.SSLError, OSError):
        pass
    assert b"origin" not in got
    assert tls_origin.accepts == [] and tls_origin.requests == []
    rows = stopped_rows(h)
    assert len(refused_rows(rows)) == 1, rows


@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_garbage_that_looks_like_tls_is_closed_and_audited(hush, tls_origin, mode):
    # a TLS record header with a ClientHello that does not parse
    port = free_port()
    h = hush({"t": policy(port, mode)})
    s = connect(port, f"127.0.0.1:{tls_origin.port}") if mode == "http" else socks5(port, "127.0.0.1", tls_origin.port)
    send_and_drain(s, [b"\x16\x03\x01\x00\x20" + b"\x01\x00\x00\x1c" + b"\xff" * 28])
    assert tls_origin.accepts == []
    rows = stopped_rows(h)
    [row] = [r for r in rows if r["decision"] == "block"]
    assert row["ip_exposed"] == 0 and "TLS cannot be read" in (row["note"] or "") + (row["error"] or "")


def test_garbage_in_a_tunnel_decided_at_connection_level_is_not_audited_as_relayed(hush, tls_origin):
    port = free_port()
    h = hush({"t": policy(port, rules="  - {match: {host: 127.0.0.1}, action: allow}")})
    hello = b"\x16\x03\x01\x00\x08\x01\x00\x00\x04" + b"\xff" * 4  # a record whose ClientHello does not parse
    send_and_drain(connect(port, f"127.0.0.1:{tls_origin.port}"), [hello])
    assert tls_origin.accepts == []
    [row] = stopped_rows(h)
    assert (row["decision"], row["ip_exposed"]) == ("allow", 0) and "TLS cannot be read" in row["error"]


@pytest.mark.parametrize("preface", [
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 with prior knowledge, in the clear
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",  # with an empty SETTINGS frame
    b"PRI * HTTP/2.0\r\n\r\n",  # truncated
    b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # after a CRLF
])
def test_http2_prefaces_in_a_cleartext_tunnel_reach_nothing(hush, origin, preface):
    port = free_port()
    h = hush({"t": policy(port)})
    send_and_drain(connect(port, f"127.0.0.1:{origin.port}"), [preface])
    assert origin.accepts == []
    h.stop()
    rows = h.audit()
    assert all(r["ip_exposed"] == 0 for r in rows), rows



@pytest.fixture
def keepalive():
    o = RawOrigin()
    yield o
    o.close()


@pytest.mark.parametrize("variant", ["leading-crlf", "split-before-third-byte", "binary"])
def test_a_connect_after_an_allowed_request_on_the_same_connection(hush, keepalive, variant):
    # An allowed plain request first (hush permitted this client's connection to the origin),
    # then, on the same keep-alive connection, a CONNECT to the same host:port, inspected, and
    # bytes that are not HTTP: the permit of the first request must not carry them.
    port = free_port()
    h = hush({"t": policy(port)})
    target = f"127.0.0.1:{keepalive.port}"
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET http://{target}/first HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    first = b""
    while b"raw-ok" not in first:
        chunk = s.recv(4096)
        assert chunk, first
        first += chunk
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    got = send_and_drain(s, NOT_HTTP[variant])
    assert b"raw-ok" not in got
    assert len(keepalive.accepts) == 1 and keepalive.data.count(b"GET ") == 1, keepalive.data
    h.stop()
    rows = h.audit()
    assert [(r["decision"], r["ip_exposed"]) for r in rows if r["method"] == "GET"] == [("allow", 1)]
    assert len(refused_rows(rows)) == 1, rows


@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_a_silent_client_waiting_for_the_server_to_speak_first_gets_nothing_relayed(hush, origin, mode):
    # A server-speaks-first protocol (SMTP, SSH…) in an inspected tunnel: hush connects nowhere
    # until the client has sent something it can decide on, and then only if it is HTTP or TLS.
    port = free_port()
    h = hush({"t": policy(port, mode)})
    silent = connect(port, f"127.0.0.1:{origin.port}") if mode == "http" else socks5(port, "127.0.0.1", origin.port)
    other = connect(port, f"127.0.0.1:{origin.port}") if mode == "http" else socks5(port, "127.0.0.1", origin.port)
    assert b"origin 127.0.0.1 /other" in send_and_drain(other, [request("/other")])  # hush's loop has run
    assert [r.path for r in origin.requests] == ["/other"] and len(origin.accepts) == 1
    silent.shutdown(socket.SHUT_WR)  # it gives up waiting
    assert silent.recv(100) == b""  # hush closes its side too, having sent nothing
    silent.close()
    assert len(origin.accepts) == 1
    assert [r["decision"] for r in stopped_rows(h)] == ["allow"]  # nothing was decided on the silent one
