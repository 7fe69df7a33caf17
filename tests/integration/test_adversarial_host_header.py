"""Issue 11, item 3: the Host header check, and the ways around it.

A request to an allowed address whose ``Host:`` names a blocked site is
blocked (a shared server or CDN serves what the Host header names).  Every
other spelling of that name is blocked too; a ``Host:`` that is not exactly
one valid authority (userinfo, a comma list, a port that is no number, a
zone id, blanks…), and a request with more than one ``Host:``, are refused
with 400 and never passed on.  The same holds in a WebSocket upgrade, inside
a CONNECT tunnel and over SOCKS5; ``hush policy explain`` agrees.
"""

import json

import pytest

from hush.daemon.cli.main import main

from .harness import free_port
from .hostile import CountingOrigin, connect, exchange, policy, read_head, socks5_http, status

pytestmark = pytest.mark.integration

RULES = "  - {match: {host: [blocked.test, '*.blocked.test']}, action: block}"

BLOCKED = ["blocked.test", "blocked.test:", "blocked.test.:", "BLOCKED.Test.", "blocked.test:80", "blocked.test:1",
           "www.blocked.test:", "blocked.test:0080", "\tblocked.test:\t"]
MALFORMED = ["blocked.test:abc", "blocked.test:80:80", "user@blocked.test", "user:pw@blocked.test:80",
             "blocked.test, 127.0.0.1", "127.0.0.1, blocked.test", "blocked.test,", "blocked.test..:",
             "bl%6fcked.test", "blocked.test :80", "blocked.test:99999", "[::1%1]:80", "::1", "[blocked.test]",
             "blocked.test/x", "blocked.test?x", "blocked.test#x", "blocked.test\\", "blocked.test\x00",
             "blocked.test\x7f", "[::1]:80 blocked.test"]


@pytest.fixture
def origin():
    o = CountingOrigin("127.0.0.1")
    yield o
    o.close()


def test_a_host_header_naming_a_blocked_host_is_blocked_however_spelt(hush, origin):
    port = free_port()
    h = hush({"t": policy(port, RULES)})
    target = f"http://127.0.0.1:{origin.port}"
    answers = {value: status(exchange(port, f"GET {target}/x HTTP/1.1", f"Host: {value}")) for value in BLOCKED}
    allowed = status(exchange(port, f"GET {target}/ok HTTP/1.1", f"Host: 127.0.0.1:{origin.port}"))
    assert answers == {value: 403 for value in BLOCKED} and allowed == 200
    assert len(origin.accepts) == 1 and b"GET /ok " in origin.data and b"blocked" not in origin.data.lower()
    h.stop()
    rows = h.audit()
    assert [(r["host"], r["decision"], r["ip_exposed"]) for r in rows] == (
        [(value.strip().lower().split(":")[0].rstrip("."), "block", 0) for value in BLOCKED]
        + [("127.0.0.1", "allow", 1)])


def test_a_host_header_that_is_not_one_authority_is_refused(hush, origin):
    port = free_port()
    h = hush({"t": policy(port, RULES)})
    target = f"http://127.0.0.1:{origin.port}/x HTTP/1.1"
    answers = {value: status(exchange(port, f"GET {target}", f"Host: {value}")) for value in MALFORMED}
    # more than one Host header: refused even when each alone would pass, and whatever their order
    ok = f"127.0.0.1:{origin.port}"
    for pair in ((ok, "blocked.test"), ("blocked.test", ok), (ok, ok), (ok, ""), ("", "blocked.test")):
        answers[pair] = status(exchange(port, f"GET {target}", f"Host: {pair[0]}", f"Host: {pair[1]}"))
    answers["host: + HOST:"] = status(exchange(port, f"GET {target}", f"host: {ok}", "HOST: blocked.test"))
    answers["folded"] = status(exchange(port, f"GET {target}", f"Host: {ok}", " blocked.test"))  # obs-fold
    assert answers == {k: 400 for k in answers}
    assert origin.accepts == []
    h.stop()
    rows = h.audit()
    assert len(rows) == len(answers)
    assert all((r["decision"], r["status"], r["ip_exposed"]) == ("block", 400, 0) for r in rows)
    assert all(r["note"].startswith("refused: the Host header") for r in rows)


def test_websocket_upgrade_connect_tunnel_and_socks5(hush, origin):
    port, socks = free_port(), free_port()
    h = hush({"t": policy(port, RULES),
              "s": policy(socks, RULES, mode="socks5").replace("testapp", "socksapp")})
    upgrade = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    where = f"127.0.0.1:{origin.port}"
    answers = {}
    for value in ("blocked.test:", "blocked.test.:", "user@blocked.test", "blocked.test:x", "a.test, blocked.test"):
        answers[("ws", value)] = status(exchange(port, f"GET http://{where}/ws HTTP/1.1", f"Host: {value}", *upgrade))
        s, head = connect(port, where)  # a tunnel decided at connection level (allowed); plain HTTP inside
        with s:
            assert status(head) == 200
            s.sendall(f"GET /inner HTTP/1.1\r\nHost: {value}\r\n\r\n".encode())
            answers[("tunnel", value)] = status(read_head(s))
        answers[("socks5", value)] = status(socks5_http(socks, "127.0.0.1", origin.port, "GET /s HTTP/1.1",
                                                        f"Host: {value}", domain=False))
        answers[("socks5 ws", value)] = status(socks5_http(socks, "localhost.", origin.port, "GET /s HTTP/1.1",
                                                           f"Host: {value}", *upgrade))
    answers[("socks5", "twice")] = status(socks5_http(socks, "127.0.0.1", origin.port, "GET /s HTTP/1.1",
                                                      f"Host: {where}", "Host: blocked.test", domain=False))
    expected = {k: 403 if k[1] in ("blocked.test:", "blocked.test.:") else 400 for k in answers}
    assert answers == expected
    assert origin.accepts == []
    h.stop()
    rows = h.audit()
    requests = [r for r in rows if r["method"] == "GET"]
    assert len(requests) == len(answers)
    assert all(r["decision"] == "block" and r["ip_exposed"] == 0 for r in requests)
    assert {r["host"] for r in requests if r["status"] == 403} == {"blocked.test"}


def test_explain_agrees_with_the_proxy(hush, origin, capsys):
    port = free_port()
    h = hush({"t": policy(port, RULES)})
    url = f"http://127.0.0.1:{origin.port}/x"
    for values in [[v] for v in BLOCKED + MALFORMED] + [["127.0.0.1", "blocked.test"], [f"127.0.0.1:{origin.port}"]]:
        proxy = status(exchange(port, f"GET {url} HTTP/1.1", *(f"Host: {v}" for v in values)))
        argv = ["policy", "explain", "--policies", str(h.policies), "--app", "testapp", url, "--json"]
        assert main(argv + [a for v in values for a in ("--header", f"Host: {v}")]) == 0
        explained = json.loads(capsys.readouterr().out)
        said = 200 if explained["decision"] == "allow" else 400 if explained["by"].startswith("refused") else 403
        assert said == proxy, (values, explained, proxy)
    assert len(origin.accepts) == 1  # the one allowed
    h.stop()
