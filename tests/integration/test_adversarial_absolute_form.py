"""Issue 11, item 4: an absolute-form request inside a tunnel.

After ``CONNECT allowed:80`` (or a SOCKS5 connection to it) the app sends
``GET http://blocked.test/x HTTP/1.1``: the connection goes to the tunnel's
target, but a server must serve the absolute target's authority, not the
Host header's (RFC 9112 §3.2.2).  So that authority is decided too, the
stricter decision applying, and a blocked one is audited under its own name.
"""

import pytest

from .harness import free_port
from .hostile import CountingOrigin, connect, policy, read_response, socks5, status

pytestmark = pytest.mark.integration

RULES = ("  - {match: {host: [blocked.test, '*.blocked.test', 127.0.0.3]}, action: block}\n"
         "          - {match: {host: tor.test}, action: tor}")  # no tor here: 503, never direct
INSPECT = RULES + "\n          - {match: {path: /never}, action: block}"  # every tunnel inspected

# (target as the app writes it, status, host the audit names)
TARGETS = [
    ("http://blocked.test/x", 403, "blocked.test"),
    ("http://BLOCKED.TEST./x", 403, "blocked.test"),
    ("http://blocked.test:8080/x", 403, "blocked.test"),
    ("https://blocked.test/x", 403, "blocked.test"),
    ("http://www.blocked.test/x?q=1", 403, "www.blocked.test"),
    ("http://127.0.0.3/x", 403, "127.0.0.3"),
    ("http://2130706435/x", 403, "127.0.0.3"),
    ("http://0x7f.3/x", 403, "127.0.0.3"),
    ("http://[::ffff:127.0.0.3]/x", 403, "127.0.0.3"),
    ("http://tor.test/x", 503, "tor.test"),
]


@pytest.fixture
def origin():
    o = CountingOrigin("127.0.0.1")
    yield o
    o.close()


def inside(sock, target: str, host: str) -> int | None:
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return status(read_response(sock))


@pytest.mark.parametrize("rules", [RULES, INSPECT], ids=["tunnel-decided-at-connect", "tunnel-inspected"])
def test_an_absolute_target_inside_a_connect_tunnel_is_decided_on_its_own_authority(hush, origin, rules):
    port = free_port()
    h = hush({"t": policy(port, rules)})
    where = f"127.0.0.1:{origin.port}"
    answers = {}
    for target, _, _ in TARGETS:
        s, head = connect(port, where)
        with s:
            assert status(head) == 200
            answers[target] = inside(s, target, where)  # the Host header names the allowed target
    s, head = connect(port, where)
    with s:
        allowed = inside(s, f"http://{where}/same", where)  # naming the tunnel's own target: sent
    assert answers == {target: code for target, code, _ in TARGETS} and allowed == 200
    assert len(origin.accepts) == 1 and b"/same" in origin.data
    assert b"blocked" not in origin.data.lower() and b"tor.test" not in origin.data
    h.stop()
    rows = [r for r in h.audit() if r["method"] == "GET"]
    assert [(r["host"], r["decision"], r["ip_exposed"]) for r in rows] == (
        [(host, "block" if code == 403 else "tor-unavailable", 0) for _, code, host in TARGETS]
        + [("127.0.0.1", "allow", 1)])


def test_after_an_allowed_request_on_the_same_connection(hush):
    # keep-alive: the first request in the tunnel is allowed and opens the connection to the
    # site; the next names a blocked site on that same connection, then one more is allowed
    origin = CountingOrigin("127.0.0.1", keep_alive=True)
    try:
        port = free_port()
        h = hush({"t": policy(port, RULES)})
        where = f"127.0.0.1:{origin.port}"
        s, head = connect(port, where)
        with s:
            assert status(head) == 200
            answers = [inside(s, "/first", where)]
            answers.append(inside(s, "http://blocked.test/second", where))
            answers.append(inside(s, f"http://{where}/third", where))
        s, head = connect(port, where)
        with s:  # pipelined: sent at once, each decided on its own
            s.sendall(f"GET /fourth HTTP/1.1\r\nHost: {where}\r\n\r\n"
                      f"GET http://www.blocked.test/fifth HTTP/1.1\r\nHost: {where}\r\n\r\n".encode())
            answer = b""
            while answer.count(b"HTTP/1.1 ") < 2:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answers[:2] == [200, 403] and answers[2] == 200
        assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 403" in answer, answer
        data = origin.data
        assert b"/first" in data and b"/third" in data and b"/fourth" in data
        assert b"second" not in data and b"fifth" not in data and b"blocked" not in data
        h.stop()
        rows = [(r["host"], r["decision"]) for r in h.audit() if r["method"] == "GET"]
        assert rows == [("127.0.0.1", "allow"), ("blocked.test", "block"), ("127.0.0.1", "allow"),
                        ("127.0.0.1", "allow"), ("www.blocked.test", "block")]
    finally:
        origin.close()


def test_inside_a_socks5_connection(hush, origin):
    port = free_port()
    h = hush({"t": policy(port, RULES, mode="socks5")})
    answers = {}
    for target, _, _ in TARGETS:
        with socks5(port, "127.0.0.1", origin.port, domain=False) as s:
            answers[target] = inside(s, target, f"127.0.0.1:{origin.port}")
    assert answers == {target: code for target, code, _ in TARGETS}
    assert origin.accepts == []
    h.stop()
    assert [(r["host"], r["ip_exposed"]) for r in h.audit()] == [(host, 0) for _, _, host in TARGETS]


def test_inside_intercepted_tls(hush, tls_origin, ca_file):
    # the same inside TLS that hush intercepts (a path rule needs the requests): the absolute
    # target travels encrypted, where only hush and the origin read it
    import ssl

    port = free_port()
    h = hush({"t": policy(port, INSPECT)}, config=f"upstream_ca: {ca_file}\n")
    client = ssl.create_default_context(cafile=str(h.ca_cert))
    where = f"127.0.0.1:{tls_origin.port}"
    answers = {}
    for target in ("https://blocked.test/x", "http://www.blocked.test/x", "https://127.0.0.3/x",
                   f"https://{where}/same"):
        s, head = connect(port, where)
        assert status(head) == 200
        with client.wrap_socket(s, server_hostname="localhost") as t:
            answers[target] = inside(t, target, where)
    assert answers == {"https://blocked.test/x": 403, "http://www.blocked.test/x": 403, "https://127.0.0.3/x": 403,
                       f"https://{where}/same": 200}
    assert len(tls_origin.accepts) == 1 and [r.path for r in tls_origin.requests] == [f"https://{where}/same"]
    h.stop()
    assert [(r["host"], r["decision"]) for r in h.audit() if r["method"] == "GET"] == [
        ("blocked.test", "block"), ("www.blocked.test", "block"), ("127.0.0.3", "block"), ("127.0.0.1", "allow")]
