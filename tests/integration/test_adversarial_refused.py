"""Issue 11, class 11: connections mitmproxy refuses itself.

SOCKS4/4a or HTTP sent to a SOCKS5 listener, SOCKS5 requests mitmproxy does
not support, request heads it cannot parse, chunked trailers: mitmproxy
closed them with a "mitmproxy has crashed!" traceback, left the client's
connection open (closing on the first read crashed), and nothing was
audited.  Each must be closed at once, logged in one line, audited, reach
no origin, and leave the daemon serving.
"""

import socket

import pytest

from .harness import curl, free_port

pytestmark = pytest.mark.integration


def policy(http_port, socks_port, default="allow"):
    return f"""\
        app: testapp
        listen: [{http_port}, {{port: {socks_port}, mode: socks5}}]
        default: {default}
    """


def exchange(port: int, *chunks: bytes) -> bytes:
    """Send the chunks; read until hush closes the connection (a hang fails the test at the timeout)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for chunk in chunks:
            try:
                s.sendall(chunk)
            except OSError:
                break
        try:
            while data := s.recv(65536):
                got += data
        except ConnectionResetError:
            pass
    return got


def socks4(dport: int) -> bytes:
    return b"\x04\x01" + dport.to_bytes(2, "big") + bytes([127, 0, 0, 1]) + b"user\x00"


def socks4a(dport: int) -> bytes:
    return b"\x04\x01" + dport.to_bytes(2, "big") + b"\x00\x00\x00\x01user\x00localhost\x00"


def socks5_request(cmd: int, dport: int, atyp: int = 1) -> bytes:
    return b"\x05\x01\x00" + bytes([5, cmd, 0, atyp]) + bytes([127, 0, 0, 1]) + dport.to_bytes(2, "big")


TO_SOCKS5 = {
    "socks4": lambda o: [socks4(o.port)],
    "socks4a": lambda o: [socks4a(o.port)],
    "http-request": lambda o: [f"GET http://127.0.0.1:{o.port}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()],
    "http-connect": lambda o: [f"CONNECT 127.0.0.1:{o.port} HTTP/1.1\r\n\r\n".encode()],
    "tls-hello": lambda o: [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40],
    "garbage": lambda o: [b"\xff\xfe\xfd\xfc"],
    "socks5-bind": lambda o: [socks5_request(2, o.port)],
    "socks5-udp-associate": lambda o: [socks5_request(3, o.port)],
    "socks5-unknown-address-type": lambda o: [socks5_request(1, o.port, atyp=9)],
    "socks5-only-user-password-auth": lambda o: [b"\x05\x01\x02"],
}

TO_HTTP = {
    "garbage-line": lambda o: [b"\x00\x01\x02\x03\r\n\r\n"],
    "not-a-request-line": lambda o: [b"HELLO\r\n\r\n"],
    "header-without-colon": lambda o: [f"GET http://127.0.0.1:{o.port}/ HTTP/1.1\r\nNoColon\r\n\r\n".encode()],
    "socks5-greeting-then-junk": lambda o: [b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50\r\n\r\n"],
}


def no_tracebacks(h):
    log = h.log
    assert "mitmproxy has crashed" not in log and "Traceback" not in log, log


def refused(rows):
    return [r for r in rows if (r["note"] or "").startswith("fail-closed: refused by mitmproxy")]


@pytest.mark.parametrize("variant", sorted(TO_SOCKS5))
def test_what_a_socks5_listener_refuses(hush, origin, variant):
    http_port, socks_port = free_port(), free_port()
    h = hush({"t": policy(http_port, socks_port)})
    exchange(socks_port, *TO_SOCKS5[variant](origin))  # returns: hush closed it (it used to hang)
    assert origin.accepts == []
    ok = curl("--socks5-hostname", f"127.0.0.1:{socks_port}", origin.url("/after"))  # still serving
    assert ok.returncode == 0, ok.stderr
    h.stop()
    no_tracebacks(h)
    rows = h.audit()
    [row] = refused(rows)
    assert (row["decision"], row["ip_exposed"], row["app"]) == ("block", 0, "testapp")
    assert row["listener"].startswith("socks5@") and row["error"]
    assert h.log.count("hush.intake") == 1, h.log
    assert [r["decision"] for r in rows if r not in refused(rows)] == ["allow"]


@pytest.mark.parametrize("variant", sorted(TO_HTTP))
def test_what_an_http_listener_refuses(hush, origin, variant):
    http_port, socks_port = free_port(), free_port()
    h = hush({"t": policy(http_port, socks_port)})
    got = exchange(http_port, *TO_HTTP[variant](origin))
    assert b"origin" not in got
    assert origin.accepts == []
    h.stop()
    no_tracebacks(h)
    [row] = refused(h.audit())
    assert (row["decision"], row["ip_exposed"]) == ("block", 0) and row["listener"].startswith("regular@")
    assert "\\x00" not in (row["error"] + row["note"])  # the client's bytes are not kept


@pytest.mark.parametrize("trailer", [b"X-Trailer: 1\r\n", b"X-A: 1\r\nX-B: 2\r\n"])
def test_chunked_trailers_are_refused_not_crashed(hush, origin, trailer):
    http_port, socks_port = free_port(), free_port()
    h = hush({"t": policy(http_port, socks_port)})
    head = (f"POST http://127.0.0.1:{origin.port}/upload HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    exchange(http_port, head, b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n")
    assert origin.accepts == []
    h.stop()
    no_tracebacks(h)
    [row] = h.audit()
    # decided (allow) on its head, then mitmproxy failed on the body: recorded with the error, nothing sent
    assert (row["method"], row["ip_exposed"], row["status"]) == ("POST", 0, None)
    assert "trailers" in row["error"]


def test_a_client_that_leaves_early_is_not_a_refusal(hush, origin):
    http_port, socks_port = free_port(), free_port()
    h = hush({"t": policy(http_port, socks_port)})
    with socket.create_connection(("127.0.0.1", http_port), timeout=10) as s:
        s.sendall(b"GET http://127.0.0.1/ HT")  # and hangs up
    with socket.create_connection(("127.0.0.1", socks_port), timeout=10) as s:
        s.sendall(b"\x05")
    for port in [socks_port, http_port] * 10:  # connect and hang up at once (a port probe)
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    ok = curl("-x", f"http://127.0.0.1:{http_port}", origin.url("/after"))
    assert ok.returncode == 0, ok.stderr
    h.stop()
    no_tracebacks(h)
    assert "Unhandled error" not in h.log and "hush.intake" not in h.log, h.log
    assert [r["decision"] for r in h.audit()] == ["allow"]
