"""Issue 11, class 14: request heads as a denial of service.

One ~1 MB request of 100k header lines held the event loop for minutes (a
quadratic join); one header of 200 MiB grew the daemon by 200 MB (mitmproxy
buffers a request head without bound).  Heads are bounded at every listener
(``limits.max_headers``, ``limits.max_header_bytes``): beyond, hush answers
431, closes, audits, and sends nothing on — wherever the head arrives: a
plain proxy request, inside a CONNECT or SOCKS5 tunnel, inside intercepted
TLS, over HTTP/2.
"""

import contextlib
import socket
import ssl
import threading

import pytest

from .harness import curl, free_port
from .rawserver import RawOrigin

pytestmark = pytest.mark.integration

INTERCEPT = "  - {match: {path: /never}, action: block}"


def policy(port, mode="http", rules=INTERCEPT):
    return f"""\
        app: testapp
        listen: {{port: {port}, mode: {mode}}}
        default: allow
        rules:
        {rules}
    """


def head(target: str, n_headers: int, value: bytes = b"v", fold: bool = False) -> bytes:
    out = [f"GET {target} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    for i in range(n_headers - 1):
        out.append(b" folded" if fold and i else b"X-H%d: " % i + value)
    return b"\r\n".join(out) + b"\r\n\r\n"


def read_all(s) -> bytes:
    got = b""
    try:
        while data := s.recv(65536):
            got += data
    except (ConnectionResetError, ssl.SSLError):
        pass
    return got


def send(port: int, data: bytes, chunk: int = 0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            if chunk:
                for i in range(0, len(data), chunk):
                    s.sendall(data[i:i + chunk])
            else:
                s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # hush closed it before the whole head was sent
        return read_all(s)


def limited(rows):
    return [r for r in rows if r["status"] == 431 and "over the limit" in (r["note"] or "")]


def check_431(h, origin, answer: bytes, method="GET", may_reset=False):
    """``may_reset``: the client sent far more than the bound without reading; hush closed with its
    bytes unread, and the kernel's reset may reach the client before the 431 does."""
    assert answer.startswith(b"HTTP/1.1 431") or (may_reset and answer == b""), answer[:200]
    assert origin.accepts == []
    h.stop()
    [row] = limited(h.audit())
    assert (row["decision"], row["ip_exposed"], row["method"]) == ("block", 0, method)
    return row


@pytest.mark.parametrize("n, value", [(101, b"v"), (2, b"a" * 40_000), (100_000, b"v")],
                         ids=["101-fields", "one-40KB-field", "100k-fields"])
@pytest.mark.parametrize("chunk", [0, 1000], ids=["one-write", "dribbled"])
def test_a_plain_request_over_a_bound_is_431(hush, origin, n, value, chunk):
    port = free_port()
    h = hush({"t": policy(port)})
    data = head(origin.url("/x"), n, value)
    row = check_431(h, origin, send(port, data, chunk), may_reset=len(data) > 200_000)
    assert row["host"] == "127.0.0.1" and row["port"] == origin.port


def test_at_the_bound_it_passes(hush):
    origin = RawOrigin()  # http.server refuses more than 100 headers itself
    port = free_port()
    h = hush({"t": policy(port)})
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head(f"http://127.0.0.1:{origin.port}/ok", 100, b"v" * 200))  # 100 fields, ~22 KB
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    origin.close()
    assert len(origin.accepts) == 1 and origin.data.count(b"\r\nX-H") == 99
    h.stop()
    assert limited(h.audit()) == []


def test_folded_continuation_lines_count(hush, origin):
    port = free_port()
    h = hush({"t": policy(port)})
    check_431(h, origin, send(port, head(origin.url("/fold"), 5000, fold=True)))


def test_the_limits_come_from_the_config(hush, origin):
    port = free_port()
    h = hush({"t": policy(port)}, config="limits: {max_headers: 10, max_header_bytes: 2KiB}\n")
    assert send(port, head(origin.url("/ten"), 10)).startswith(b"HTTP/1.1 200")
    assert send(port, head(origin.url("/eleven"), 11)).startswith(b"HTTP/1.1 431")
    assert send(port, head(origin.url("/big"), 2, b"a" * 2100)).startswith(b"HTTP/1.1 431")
    assert [r.path for r in origin.requests] == ["/ten"]
    h.stop()
    assert len(limited(h.audit())) == 2


def test_inside_a_connect_tunnel_and_a_socks5_one(hush, origin):
    port, socks = free_port(), free_port()
    h = hush({"t": policy(port), "s": policy(socks, "socks5").replace("testapp", "socksapp")})
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        s.sendall(head("/tunnel", 150))
        assert read_all(s).startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", socks), timeout=30) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + origin.port.to_bytes(2, "big"))
        assert s.recv(10)[:2] == b"\x05\x00"
        s.sendall(head("/socks", 2, b"b" * 50_000))
        assert read_all(s).startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # the CONNECT's own head
        s.sendall(head(f"127.0.0.1:{origin.port}", 150).replace(b"GET ", b"CONNECT ", 1))
        assert read_all(s).startswith(b"HTTP/1.1 431")
    assert origin.accepts == []
    h.stop()
    rows = limited(h.audit())
    assert sorted(r["app"] for r in rows) == ["socksapp", "testapp", "testapp"]
    connect = next(r for r in rows if r["method"] == "CONNECT")  # named as the CONNECT named it
    assert (connect["host"], connect["port"], connect["level"], connect["ip_exposed"]) == (
        "127.0.0.1", origin.port, "connect", 0)
    assert all(r["duration_ms"] >= 0 for r in rows), rows


def test_inside_intercepted_tls_http1_and_http2(hush, tls_origin):
    port = free_port()
    h = hush({"t": policy(port)})
    ca = str(h.ca_cert)
    client = ssl.create_default_context(cafile=ca)
    client.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"CONNECT localhost:{tls_origin.port} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        with client.wrap_socket(s, server_hostname="localhost") as t:
            with contextlib.suppress(ssl.SSLError, OSError):
                t.sendall(head("/tls", 3, b"c" * 20_000))
            assert read_all(t).startswith(b"HTTP/1.1 431")
    many = [arg for i in range(150) for arg in ("-H", f"X-H{i}: v")]
    res = curl("-x", f"http://127.0.0.1:{port}", "--cacert", ca, "--http2", "-o", "/dev/null", "-w", "%{http_code}",
               *many, tls_origin.url("/h2", host="localhost"))
    assert res.stdout == b"431", res.stderr
    assert tls_origin.accepts == []
    h.stop()
    rows = limited(h.audit())
    assert len(rows) == 2 and {r["scheme"] for r in rows} == {"https"}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_200_mib_header_is_cut_short_and_costs_no_memory(hush, origin):
    port = free_port()
    h = hush({"t": policy(port)})
    before = rss_kb(h.proc.pid)
    sent = 0
    block = b"a" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {origin.url('/huge')} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ".encode())
        try:
            while sent < 200 * 1024 * 1024:
                s.sendall(block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(s)
    assert sent < 16 * 1024 * 1024, "hush kept reading the header"
    assert rss_kb(h.proc.pid) - before < 32 * 1024, "hush grew by more than 32 MB"
    check_431(h, origin, answer, may_reset=True)


def test_a_hostile_head_does_not_stall_other_clients(hush, origin):
    """100k header lines in one request: another client is served meanwhile (it took minutes)."""
    port = free_port()
    h = hush({"t": policy(port)})
    hostile = head(origin.url("/hostile"), 100_000)
    result = {}

    def attack():
        result["answer"] = send(port, hostile, 4096)

    t = threading.Thread(target=attack)
    t.start()
    ok = curl("-x", f"http://127.0.0.1:{port}", origin.url("/meanwhile"))
    t.join(60)
    assert ok.returncode == 0 and not t.is_alive()
    assert [r.path for r in origin.requests] == ["/meanwhile"]
    check_431(h, origin=type("O", (), {"accepts": []})(), answer=result["answer"], may_reset=True)
