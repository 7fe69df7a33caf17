"""Issue 11, item 15: proxy headers never reach the site.

``Proxy-Connection``, the app's ``Proxy-Authorization`` (its proxy
credentials), ``Via``, ``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP`` and the
like tell the site that a proxy is in use, or hand it what only the proxy
should see.  Whatever action sends the request (allow, strip, delay,
debounce, passthrough, tor), the origin receives none of them — and every
other header as the app sent it.
"""

import pytest

from .harness import NAME, curl, free_port, tor_config, wait_tor_ready
from .hostile import CountingOrigin, exchange, policy, socks5_http, status

pytestmark = pytest.mark.integration

PROXY_HEADERS = [
    "Proxy-Connection: keep-alive", "Proxy-Authorization: Basic YXBwOnNlY3JldA==", "Via: 1.1 app-internal",
    "Forwarded: for=10.1.2.3;proto=http", "X-Forwarded-For: 10.1.2.3", "X-Forwarded-Host: internal.example",
    "X-Forwarded-Proto: http", "X-Real-IP: 10.1.2.3", "True-Client-IP: 10.1.2.3", "Client-IP: 10.1.2.3",
    "proxy-foo: bar", "X-Tor-Stream-Isolation: app", "x-forwarded-for: 10.9.9.9",
]
KEPT = ["X-Keep: 1", "Accept: text/html", "Connection: keep-alive, Proxy-Connection, X-Keep"]
TELLS = [b"proxy-", b"via:", b"forwarded", b"x-real-ip", b"client-ip", b"x-tor-", b"10.1.2.3", b"10.9.9.9",
         b"secret", b"yxbwonnly3jldaa9"]

RULES = ("  - {match: {host: 127.0.0.3}, action: passthrough}\n"
         "          - {match: {path: '/strip*'}, action: strip}\n"
         "          - {match: {path: '/delay*'}, action: delay, delay: 50ms}\n"
         "          - {match: {path: '/debounce*'}, action: debounce, quiet: 50ms}\n"
         "          - {match: {path: '/delayed-strip*'}, action: delay, delay: 50ms, then: strip}")
PATHS = {"/allow": "allow", "/strip": "strip", "/delay": "delay", "/debounce": "debounce"}


@pytest.fixture
def origins():
    one, three = CountingOrigin("127.0.0.1"), CountingOrigin("127.0.0.3")
    yield one, three
    one.close()
    three.close()


def assert_clean(data: bytes, requests: int):
    lower = data.lower()
    assert lower.count(b"x-keep: 1") == requests and lower.count(b"accept: text/html") == requests, data
    for tell in TELLS:
        assert tell not in lower, (tell, data)


def test_no_proxy_header_reaches_the_site_on_any_action(hush, origins):
    one, three = origins
    port = free_port()
    h = hush({"t": policy(port, RULES)})
    answers = {}
    for path in PATHS:
        where = f"127.0.0.1:{one.port}"
        answers[path] = status(exchange(port, f"GET http://{where}{path} HTTP/1.1", f"Host: {where}",
                                        *PROXY_HEADERS, *KEPT))
    where = f"127.0.0.3:{three.port}"
    answers["passthrough"] = status(exchange(port, f"GET http://{where}/p HTTP/1.1", f"Host: {where}",
                                             *PROXY_HEADERS, *KEPT))
    assert answers == {k: 200 for k in answers}
    assert len(one.accepts) == len(PATHS) and len(three.accepts) == 1
    assert_clean(one.data, len(PATHS))
    assert_clean(three.data, 1)
    h.stop()
    assert sorted(r["decision"] for r in h.audit()) == sorted([*PATHS.values(), "passthrough"])
    assert all(r["ip_exposed"] == 1 for r in h.audit())


def test_the_apps_proxy_credentials_stay_with_the_proxy(hush, origins):
    # curl sends Proxy-Authorization itself when the proxy URL carries credentials
    one, _ = origins
    port = free_port()
    h = hush({"t": policy(port, RULES)})
    for path in ("/allow", "/strip", "/delayed-strip"):
        res = curl("-x", f"http://app:secret@127.0.0.1:{port}", "--proxy-header", "Proxy-Connection: keep-alive",
                   "-H", "X-Keep: 1", "-H", "Accept: text/html", "-H", "Via: 1.0 app", f"http://127.0.0.1:{one.port}{path}")
        assert res.returncode == 0 and res.stdout == b"origin\n", res.stderr
    assert len(one.accepts) == 3
    assert_clean(one.data, 3)
    h.stop()


def test_inside_socks5_and_intercepted_https(hush, origins, tls_origin, ca_file):
    one, _ = origins
    socks, port = free_port(), free_port()
    h = hush({"s": policy(socks, RULES, mode="socks5").replace("testapp", "socksapp"),
              "t": policy(port, RULES)}, config=f"upstream_ca: {ca_file}\n")
    for path in PATHS:
        assert status(socks5_http(socks, "127.0.0.1", one.port, f"GET {path} HTTP/1.1", "Host: localhost",
                                  *PROXY_HEADERS, *KEPT, domain=False)) == 200
    assert_clean(one.data, len(PATHS))
    headers = [a for header in PROXY_HEADERS + KEPT[:2] for a in ("-H", header)]
    for path in ("/allow", "/strip"):  # the strip rule needs the path: every tunnel is intercepted
        res = curl("--cacert", str(h.ca_cert), "-x", f"http://127.0.0.1:{port}", *headers, tls_origin.url(path))
        assert res.returncode == 0, res.stderr
    seen = [r.headers for r in tls_origin.requests]
    assert len(seen) == 2 and all(s["x-keep"] == "1" for s in seen)
    for headers_seen in seen:
        names = set(headers_seen)
        assert not {n for n in names if n.startswith(("proxy-", "x-forwarded-", "x-tor-"))}, names
        assert not names & {"via", "forwarded", "x-real-ip", "true-client-ip", "client-ip"}, names
    h.stop()


def test_through_tor(hush, torlab, origin):
    # the private Tor network's exit fetches it (hush.daemon.torlab); hush's own headers to tor stay with tor
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: '*.hushtest'}, action: tor}", default="block")},
             config=tor_config(torlab))
    wait_tor_ready(h)
    headers = [a for header in PROXY_HEADERS + KEPT[:2] for a in ("-H", header)]
    res = curl("-x", f"http://app:secret@127.0.0.1:{port}", *headers, origin.url("/via-tor", host=NAME))
    assert res.returncode == 0 and res.stdout == b"origin 127.0.0.1 /via-tor\n", res.stderr
    assert origin.owners == [torlab.exit_pid]
    [seen] = origin.requests
    names = set(seen.headers)
    assert seen.headers["x-keep"] == "1" and seen.headers["accept"] == "text/html"
    assert not {n for n in names if n.startswith(("proxy-", "x-forwarded-", "x-tor-"))}, names
    assert not names & {"via", "forwarded", "x-real-ip", "true-client-ip", "client-ip"}, names
    h.stop()
    [row] = h.audit()
    assert (row["decision"], row["ip_exposed"]) == ("tor", 0)
