"""The daemon end to end: real hush, real curl, an origin that counts accepts."""

import socket

import pytest

from .harness import curl, free_port, payload

pytestmark = pytest.mark.integration


def policy(port, rules="", default="allow", mode="http"):
    return f"""\
        app: testapp
        listen: {{port: {port}, mode: {mode}}}
        default: {default}
        rules:
        {rules}
    """


def proxy(port):
    return ["-x", f"http://127.0.0.1:{port}"]


def only(rows, **match):
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


def test_allowed_flow_is_delivered_byte_for_byte(hush, origin):
    port = free_port()
    h = hush({"t": policy(port)})
    res = curl(*proxy(port), origin.url("/bytes/300000"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == payload(300000)
    assert len(origin.accepts) == 1 and len(origin.requests) == 1
    assert h.stop() == 0
    row = only(h.audit(), decision="allow")
    assert (row["app"], row["method"], row["host"], row["status"], row["ip_exposed"]) == (
        "testapp", "GET", "127.0.0.1", 200, 1)
    assert row["bytes_down"] == 300000
    assert row["rule"].endswith("t.yaml:3")  # the default


def test_blocked_plain_http_never_reaches_the_origin(hush, origin):
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.1}, action: block, status: 451}")})
    res = curl("-o", "/dev/null", "-w", "%{http_code}", *proxy(port), origin.url("/x?token=secret"))
    assert res.stdout == b"451"
    assert origin.accepts == []
    h.stop()
    row = only(h.audit(), decision="block")
    assert row["ip_exposed"] == 0 and row["sent"] is None and row["status"] == 451
    assert row["url"] == "http://127.0.0.1/"  # default redaction: site only
    assert "secret" not in str(row)


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1"])
def test_other_spellings_of_a_blocked_address_are_blocked(hush, origin, spelling):
    # the resolver reads each of these as 127.0.0.1 (inet_aton); the policy must too
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.1}, action: block, status: 403}\n"
                                "          - {match: {net: 127.0.0.0/8}, action: block, status: 451}")})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET http://{spelling}:{origin.port}/x HTTP/1.1\r\nHost: {spelling}:{origin.port}\r\n"
                  "Connection: close\r\n\r\n".encode())
        head = s.recv(64)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # and as a CONNECT
        s.sendall(f"CONNECT {spelling}:{origin.port} HTTP/1.1\r\nHost: {spelling}:{origin.port}\r\n\r\n".encode())
        connect = s.recv(64)
    assert head.startswith(b"HTTP/1.1 403") and connect.startswith(b"HTTP/1.1 403"), (head, connect)
    assert origin.accepts == []
    h.stop()
    # decided as 127.0.0.1 by the first rule (the exact host), not only by the network
    assert [(r["host"], r["decision"], r["status"]) for r in h.audit()] == [("127.0.0.1", "block", 403)] * 2


def test_a_host_header_neither_steers_a_request_nor_escapes_its_rules(hush, origin, origin2):
    # The connection goes to the tunnel's target (or the URL's authority), never to the Host
    # header's; but on a shared server or CDN the Host header (or an absolute-form target, which
    # a server must prefer to it) picks the site, so it must be allowed too: a blocked name in it
    # blocks the request, which is audited under that name.
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: [127.0.0.3, blocked.test]}, action: block}\n"
                                "          - {match: {path: /never}, action: block}")})  # intercept every tunnel
    tunnel = f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n"
    elsewhere = f"127.0.0.3:{origin2.port}"
    answers = []
    for target, host in (("/inner", "other.test"), (f"http://{elsewhere}/absolute", "other.test"),
                         ("/fronted", "blocked.test"), ("/fronted-ip", elsewhere)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(tunnel.encode())
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answers.append(s.recv(300)[:12])
    assert answers == [b"HTTP/1.1 200"] + [b"HTTP/1.1 403"] * 3
    assert origin2.accepts == [] and [r.path for r in origin.requests] == ["/inner"]
    plain = raw(port, f"GET {origin.url('/plain')} HTTP/1.1", "Host: blocked.test", "Connection: close")
    assert plain.startswith(b"HTTP/1.1 403") and len(origin.requests) == 1
    h.stop()
    assert [(r["host"], r["decision"]) for r in h.audit()] == [
        ("127.0.0.1", "allow"), ("127.0.0.3", "block"), ("blocked.test", "block"), ("127.0.0.3", "block"),
        ("blocked.test", "block")]


def test_a_tls_name_the_policy_treats_more_strictly_closes_the_tunnel(hush, tls_origin):
    # CONNECT to an allowed target, then a ClientHello naming a blocked host (domain fronting:
    # the CDN at the target would serve the named site)
    import ssl

    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: blocked.test}, action: block}")})
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    results = []
    for name in ("localhost", "blocked.test"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"CONNECT 127.0.0.1:{tls_origin.port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            try:
                with client.wrap_socket(s, server_hostname=name) as t:
                    t.sendall(b"GET /via-%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % name.encode())
                    results.append(t.recv(100)[:12])
            except (ssl.SSLError, OSError):
                results.append(None)
    assert results == [b"HTTP/1.1 200", None]
    assert len(tls_origin.accepts) == 1 and [r.path for r in tls_origin.requests] == ["/via-localhost"]
    h.stop()
    rows = sorted((r["host"], r["decision"], r["ip_exposed"], bool(r["error"])) for r in h.audit())
    assert rows == [("127.0.0.1", "allow", 1, False), ("127.0.0.1", "block", 0, True)]


def raw(port: int, *lines: str) -> bytes:
    """Send request lines exactly as written (no client tidies them up); the first bytes of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return s.recv(100)


@pytest.mark.parametrize("path", ["/private/x", "/%70rivate/x", "/%2Fprivate/../private/x", "/public/../private/x",
                                  "/public/%2e%2e/private/x", "//private/x", "/./private//x"])
def test_a_path_rule_sees_the_path_the_server_will(hush, origin, path):
    port = free_port()
    h = hush({"t": policy(port, '  - {match: {path: "/private/*"}, action: block}')})
    authority = f"127.0.0.1:{origin.port}"
    plain = raw(port, f"GET http://{authority}{path} HTTP/1.1", f"Host: {authority}", "Connection: close")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # absolute-form inside a tunnel
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        s.sendall(f"GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        tunnelled = s.recv(100)
    assert plain.startswith(b"HTTP/1.1 403") and tunnelled.startswith(b"HTTP/1.1 403"), (plain, tunnelled)
    assert origin.requests == []
    h.stop()


def test_a_rule_on_an_internationalised_name_matches_it(hush):
    # apps send IDNs as punycode; mitmproxy hands hush the Unicode form
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: [xn--bcher-kva.de, \"*.xn--mnchen-3ya.de\", xn--strae-oqa.de]}, "
                                "action: block}")})
    code = ("-o", "/dev/null", "-w", "%{http_code}", *proxy(port))
    assert curl(*code, "http://xn--bcher-kva.de/").stdout == b"403"  # not 502: never looked up
    assert curl(*code, "http://www.xn--mnchen-3ya.de/").stdout == b"403"
    assert curl(*code, "https://xn--bcher-kva.de/").returncode != 0  # the CONNECT too
    # IDNA 2008 spells straße so; IDNA 2003, which mitmproxy decodes with, says strasse
    straße = curl(*code, "http://xn--strae-oqa.de/").stdout
    assert straße == b"400", straße  # mitmproxy cannot decode it: refused before any hook, nothing sent
    h.stop()
    rows = h.audit()
    assert [(r["host"], r["decision"]) for r in rows] == [
        ("xn--bcher-kva.de", "block"), ("www.xn--mnchen-3ya.de", "block"), ("xn--bcher-kva.de", "block"),
        ("", "block")]  # the one mitmproxy refused, recorded as such (addons/intake.py)
    assert rows[-1]["note"].startswith("fail-closed: refused by mitmproxy")


def test_connect_level_block_sends_nothing_not_even_a_clienthello(hush, tls_origin, ca_file):
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.1}, action: block}")})
    res = curl("--cacert", str(ca_file), *proxy(port), tls_origin.url("/"))
    assert res.returncode == 56 and b"403" in res.stderr  # CONNECT refused
    assert tls_origin.accepts == []
    h.stop()
    row = only(h.audit(), method="CONNECT")
    assert (row["decision"], row["level"], row["ip_exposed"], row["status"]) == ("block", "connect", 0, 403)


def test_connect_level_reset(hush, tls_origin):
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.1}, action: block, status: reset}")})
    res = curl(*proxy(port), tls_origin.url("/"))
    assert res.returncode != 0
    assert tls_origin.accepts == []
    h.stop()
    assert only(h.audit(), method="CONNECT")["decision"] == "block"


def test_inspected_block_never_reaches_the_origin(hush, tls_origin, ca_file):
    port = free_port()
    h = hush({"t": policy(port, '  - {match: {host: 127.0.0.1, path: "/secret*"}, action: block}')},
             config=f"upstream_ca: {ca_file}\n")
    res = curl("--cacert", str(h.ca_cert), "-w", "%{http_code}", "-o", "/dev/null", *proxy(port),
               tls_origin.url("/secret/1"))
    assert res.stdout == b"403", res.stderr
    assert tls_origin.accepts == []  # with connection_strategy=eager this would be 1
    res = curl("--cacert", str(h.ca_cert), *proxy(port), tls_origin.url("/public"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"origin 127.0.0.1 /public\n"
    assert len(tls_origin.accepts) == 1 and [r.path for r in tls_origin.requests] == ["/public"]
    h.stop()
    rows = h.audit()
    blocked = only(rows, decision="block")
    assert (blocked["scheme"], blocked["level"], blocked["ip_exposed"]) == ("https", "request", 0)
    allowed = only(rows, decision="allow")
    assert (allowed["scheme"], allowed["ip_exposed"], allowed["status"]) == ("https", 1, 200)


STRIPPED = ["-H", "Cookie: session=abc", "-H", "Referer: https://chat.example.com/room/1",
            "-H", "Accept-Language: de-CH", "-H", "User-Agent: WhatsApp/2.19.305 A", "-H", "X-Keep: 1"]


def test_strip_plain_http(hush, origin):
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.1}, action: strip}")})
    res = curl(*STRIPPED, *proxy(port), origin.url("/p"))
    assert res.returncode == 0, res.stderr
    [seen] = origin.requests
    for name in ("cookie", "referer", "accept-language"):
        assert name not in seen.headers
    assert seen.headers["user-agent"].startswith("Mozilla/5.0") and "WhatsApp" not in seen.headers["user-agent"]
    assert seen.headers["x-keep"] == "1"
    h.stop()
    import json

    row = only(h.audit(), decision="strip")
    carried, sent = json.loads(row["carried"]), json.loads(row["sent"])
    assert carried["cookies"] == 1 and sent["cookies"] == 0
    assert carried["user_agent"] == "WhatsApp/2.19.305 A" and sent["user_agent"].startswith("Mozilla/5.0")
    assert carried["referer"] == "https://example.com/" and sent["referer"] is None


def test_strip_inspected_https(hush, tls_origin, ca_file):
    port = free_port()
    h = hush({"t": policy(port, '  - {match: {host: 127.0.0.1}, action: strip, headers: [cookie], '
                                'user_agent: "Generic/1.0"}')},
             config=f"upstream_ca: {ca_file}\n")
    res = curl("--cacert", str(h.ca_cert), *STRIPPED, *proxy(port), tls_origin.url("/s"))
    assert res.returncode == 0, res.stderr
    [seen] = tls_origin.requests
    assert "cookie" not in seen.headers
    assert seen.headers["accept-language"] == "de-CH"  # not listed: kept
    assert seen.headers["user-agent"] == "WhatsApp/2.19.305 A"  # user-agent not listed: kept
    h.stop()


def test_passthrough_is_not_intercepted(hush, tls_origin, ca_file):
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.1}, action: passthrough}", default="block")})
    # curl trusts only the origin's CA: it succeeds only if hush did not intercept
    res = curl("--cacert", str(ca_file), *proxy(port), tls_origin.url("/pinned"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"origin 127.0.0.1 /pinned\n"
    assert len(tls_origin.accepts) == 1
    h.stop()
    row = only(h.audit(), method="CONNECT")
    assert (row["decision"], row["level"], row["ip_exposed"]) == ("passthrough", "connect", 1)
    assert row["duration_ms"] is not None


def test_connect_level_allow_needs_no_ca(hush, tls_origin, ca_file):
    port = free_port()
    h = hush({"t": policy(port)})
    res = curl("--cacert", str(ca_file), *proxy(port), tls_origin.url("/a"))
    assert res.returncode == 0, res.stderr
    h.stop()
    assert only(h.audit(), method="CONNECT")["decision"] == "allow"


def test_socks5_listener(hush, origin, origin2):
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.3}, action: block}", mode="socks5")})
    ok = curl("--socks5-hostname", f"127.0.0.1:{port}", origin.url("/s"))
    assert ok.returncode == 0 and ok.stdout == b"origin 127.0.0.1 /s\n"
    blocked = curl("--socks5-hostname", f"127.0.0.1:{port}", origin2.url("/s"))
    assert blocked.returncode == 97 and b"(2)" in blocked.stderr  # SOCKS5 0x02: not allowed by ruleset
    assert origin2.accepts == [] and len(origin.accepts) == 1
    h.stop()
    rows = h.audit()
    assert only(rows, host="127.0.0.3")["decision"] == "block"
    assert only(rows, host="127.0.0.1")["listener"] == f"socks5@127.0.0.1:{port}"


def test_net_rule_matches_addresses_never_names(hush, origin, origin2):
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {net: 127.0.0.0/31}, action: passthrough}", default="block",
                          mode="socks5")})
    ok = curl("--socks5-hostname", f"127.0.0.1:{port}", origin.url("/in"))
    assert ok.returncode == 0 and ok.stdout == b"origin 127.0.0.1 /in\n"
    code = ("--socks5-hostname", f"127.0.0.1:{port}")
    for refused in (curl(*code, origin2.url("/out")), curl(*code, origin.url("/name", host="localhost"))):
        assert refused.returncode == 97 and b"(2)" in refused.stderr  # SOCKS5 0x02: not allowed by ruleset
    # localhost resolves into the network, but hush never resolves a name to decide
    assert origin2.accepts == [] and [r.path for r in origin.requests] == ["/in"]
    h.stop()
    assert sorted((r["host"], r["decision"]) for r in h.audit()) == [
        ("127.0.0.1", "passthrough"), ("127.0.0.3", "block"), ("localhost", "block")]


def test_socks5_client_that_resolves_names_itself(hush, tls_origin):
    # curl --socks5 (not --socks5-hostname) hands hush an address; the name is only in the TLS SNI
    seen = tls_origin.accepts
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: blocked.test}, action: block}", mode="socks5")})
    socks = ("--socks5", f"127.0.0.1:{port}", "-k", "--resolve", f"blocked.test:{tls_origin.port}:127.0.0.1")
    ok = curl(*socks, tls_origin.url("/allowed", host="localhost"))
    assert ok.returncode == 0 and ok.stdout == b"origin 127.0.0.1 /allowed\n", ok.stderr  # was refused
    assert curl(*socks, tls_origin.url("/named", host="blocked.test")).returncode != 0
    # with remote DNS too: the SNI is allowed, the SOCKS5 destination (what is reached) is not
    fronted = curl("--socks5-hostname", f"127.0.0.1:{port}", "-k", "--connect-to",
                   f"localhost:{tls_origin.port}:blocked.test:{tls_origin.port}",
                   tls_origin.url("/fronted", host="localhost"))
    assert fronted.returncode != 0
    assert len(seen) == 1
    h.stop()
    assert [(r["host"], r["decision"]) for r in h.audit()] == [  # the last refused on its destination alone
        ("localhost", "allow"), ("blocked.test", "block"), ("blocked.test", "block")]

    # and the address must allow it too: a rule on the address wins over a laxer one on the name
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: localhost}, action: passthrough}\n"
                                "          - {match: {net: 127.0.0.0/8}, action: block}", mode="socks5")})
    assert curl("--socks5", f"127.0.0.1:{port}", "-k", tls_origin.url("/address", host="localhost")).returncode != 0
    assert len(seen) == 1
    h.stop()
    [row] = h.audit()  # refused on the address (SOCKS5 0x02) before any TLS: recorded under it
    assert (row["host"], row["decision"], row["ip_exposed"]) == ("127.0.0.1", "block", 0)


def test_socks5_tls_blocked_at_connection_level(hush, tls_origin):
    port = free_port()
    h = hush({"t": policy(port, default="block", mode="socks5")})
    res = curl("--socks5-hostname", f"127.0.0.1:{port}", "-k", tls_origin.url("/"))
    assert res.returncode != 0
    assert tls_origin.accepts == []
    h.stop()
    assert only(h.audit(), method="CONNECT")["decision"] == "block"


def test_two_apps_two_listeners(hush, origin):
    p1, p2 = free_port(), free_port()
    h = hush({
        "a": f"app: a\nlisten: {p1}\ndefault: allow\n",
        "b": f"app: b\nlisten: {p2}\ndefault: block\n",
    })
    assert curl(*proxy(p1), origin.url("/a")).returncode == 0
    assert curl("-w", "%{http_code}", "-o", "/dev/null", *proxy(p2), origin.url("/b")).stdout == b"403"
    assert [r.path for r in origin.requests] == ["/a"]
    assert f"listening: app=a address=127.0.0.1:{p1} mode=http" in h.log
    assert f"listening: app=b address=127.0.0.1:{p2} mode=http" in h.log
    h.stop()
    assert {(r["app"], r["decision"]) for r in h.audit()} == {("a", "allow"), ("b", "block")}


def test_sigterm_writes_every_audit_record(hush, origin):
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {path: '/blocked/*'}, action: block}")})
    urls = [origin.url(f"/blocked/{i}") for i in range(150)]
    res = curl("--parallel", "--parallel-max", "20", *proxy(port), *[a for u in urls for a in ("-o", "/dev/null", u)],
               timeout=60)
    assert res.returncode == 0, res.stderr
    assert h.stop() == 0
    assert len([r for r in h.audit() if r["decision"] == "block"]) == 150
    assert origin.accepts == []
