"""Issue 11, classes 6 and 7: the name a TLS ClientHello asks for.

A tunnel hush inspects (a rule needs its requests) is answered by hush's own
TLS, and hush's TLS to the site asks for the name the app's ClientHello
named.  A ClientHello naming a blocked (or Tor-routed) host made hush hand
that name to the site from the user's address.  A tunnel routed into Tor was
relayed from its first byte: its ClientHello, naming a blocked host, went
out through the exit.  The ClientHello's name is decided like the target,
the stricter applying — on HTTP and SOCKS5 listeners, inspected, decided
and Tor-routed tunnels alike.  The origins here record the SNI they saw.
"""

import contextlib
import socket
import ssl

import pytest

from tests.tls import client_hello

from .harness import NAME, ORIGIN_NAMES, Origin, free_port, tor_config, wait_tor_ready

pytestmark = pytest.mark.integration

INTERCEPT = "  - {match: {path: /never}, action: block}"  # a request-level rule: every tunnel is inspected


NAMES = ["fine.hushtest", "paths.hushtest", "a.onion-only.hushtest", "blocked.hushtest", "x.blocked.hushtest"]


class SniOrigin(Origin):
    """conftest's HTTPS origin, also recording the SNI of every handshake."""

    def __init__(self, ca):
        self.snis: list[str | None] = []
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*ORIGIN_NAMES, *NAMES).configure_cert(ctx)
        ctx.sni_callback = lambda sock, name, _: self.snis.append(name)
        super().__init__("127.0.0.1", ctx)


@pytest.fixture
def sni_origin(ca):
    o = SniOrigin(ca)
    yield o
    o.close()


def policy(port, rules, mode="http", default="allow"):
    return f"""\
        app: testapp
        listen: {{port: {port}, mode: {mode}}}
        default: {default}
        rules:
        {rules}
    """


def connect(port: int, target: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    answer = s.recv(100)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return s


def socks5(port: int, host: str, dport: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    try:
        addr = b"\x01" + socket.inet_aton(host)
    except OSError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    s.sendall(b"\x05\x01\x00" + addr + dport.to_bytes(2, "big"))
    reply = s.recv(10)
    assert reply[:2] == b"\x05\x00", reply
    return s


def tunnel(mode: str, port: int, host: str, dport: int) -> socket.socket:
    return connect(port, f"{host}:{dport}") if mode == "http" else socks5(port, host, dport)


def https_get(s: socket.socket, sni: str, path: str, host: str = "127.0.0.1", cafile=None) -> bytes | None:
    """TLS (asking for ``sni``) over ``s``, one request; the status line, or None if the tunnel was closed."""
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    if not cafile:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.check_hostname = False
    try:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            t.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            got = b""
            while data := t.recv(65536):
                got += data
            return got.split(b"\r\n", 1)[0] or None
    except (ssl.SSLError, OSError):
        return None
    finally:
        s.close()


def refused(rows, name):
    return [r for r in rows if r["ip_exposed"] == 0 and f"the TLS names {name}" in (r["error"] or "")]


# -- an inspected tunnel whose ClientHello names a blocked host ----------------------------------

@pytest.mark.parametrize("mode, target", [("http", "127.0.0.1"), ("http", "localhost"), ("socks5", "127.0.0.1"),
                                          ("socks5", "localhost")])
@pytest.mark.parametrize("sni", ["blocked.hushtest", "BLOCKED.hushtest.", "x.blocked.hushtest"])
def test_an_inspected_tunnel_naming_a_blocked_host_is_closed(hush, sni_origin, mode, target, sni):
    port = free_port()
    rules = '  - {match: {host: [blocked.hushtest, "*.blocked.hushtest"]}, action: block}\n        ' + INTERCEPT
    h = hush({"t": policy(port, rules, mode)})
    assert https_get(tunnel(mode, port, target, sni_origin.port), sni, "/named") is None
    assert sni_origin.accepts == [] and sni_origin.snis == []
    h.stop()
    rows = h.audit()
    name = sni.lower().rstrip(".")
    assert len(rows) == 1, rows
    [row] = rows
    assert (row["decision"], row["ip_exposed"]) == ("block", 0)
    if mode == "http":
        assert refused(rows, name) == [row]
    else:  # SOCKS5 connections are recorded under the SNI's name, the stricter of both decisions
        assert row["host"] == name


@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_an_inspected_tunnel_naming_an_allowed_host_still_works(hush, sni_origin, ca_file, mode):
    # the control: the same tunnels with a ClientHello naming an allowed host reach the origin
    port = free_port()
    rules = "  - {match: {host: blocked.hushtest}, action: block}\n        " + INTERCEPT
    h = hush({"t": policy(port, rules, mode)}, config=f"upstream_ca: {ca_file}\n")
    status = https_get(tunnel(mode, port, "127.0.0.1", sni_origin.port), "fine.hushtest", "/fine",
                       cafile=str(h.ca_cert))
    assert status == b"HTTP/1.1 200 OK"
    assert sni_origin.snis == ["fine.hushtest"] and [r.path for r in sni_origin.requests] == ["/fine"]
    h.stop()


# -- an inspected tunnel whose ClientHello names a host decided per request ------------------------

@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_each_request_is_decided_on_the_clienthello_name_too(hush, sni_origin, ca_file, mode):
    port = free_port()
    rules = '  - {match: {host: paths.hushtest, path: "/private/*"}, action: block}\n        ' + INTERCEPT
    h = hush({"t": policy(port, rules, mode)}, config=f"upstream_ca: {ca_file}\n")
    statuses = [https_get(tunnel(mode, port, "127.0.0.1", sni_origin.port), "paths.hushtest", path,
                          cafile=str(h.ca_cert))
                for path in ("/private/x", "/public/x", "/%70rivate/y")]
    assert statuses == [b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 200 OK", b"HTTP/1.1 403 Forbidden"]
    assert [r.path for r in sni_origin.requests] == ["/public/x"] and sni_origin.snis == ["paths.hushtest"]
    h.stop()
    rows = [r for r in h.audit() if r["method"] == "GET"]
    assert sorted((r["host"], r["decision"]) for r in rows) == [
        ("127.0.0.1", "allow"), ("paths.hushtest", "block"), ("paths.hushtest", "block")]


def test_a_name_routed_into_tor_never_goes_direct(hush, sni_origin, ca_file):
    # no tor configured: a request decided 'tor' is answered 503 at once; before, the inspected
    # tunnel to 127.0.0.1 (allowed) carried the Tor-routed name to the site from this machine
    port = free_port()
    rules = '  - {match: {host: "*.onion-only.hushtest"}, action: tor}\n        ' + INTERCEPT
    h = hush({"t": policy(port, rules)}, config=f"upstream_ca: {ca_file}\n")
    status = https_get(connect(port, f"127.0.0.1:{sni_origin.port}"), "a.onion-only.hushtest", "/x",
                       cafile=str(h.ca_cert))
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert sni_origin.accepts == [] and sni_origin.snis == []
    h.stop()
    [row] = h.audit()
    assert (row["host"], row["decision"], row["ip_exposed"]) == ("a.onion-only.hushtest", "tor-unavailable", 0)


# -- the upstream SNI hush sends is always a decided name (unit-level guard, seen end to end) ------

def test_the_sni_hush_sends_is_the_one_decided(hush, sni_origin, ca_file):
    # an IP target with no SNI: hush's own TLS names the address (decided), nothing else
    port = free_port()
    h = hush({"t": policy(port, INTERCEPT)}, config=f"upstream_ca: {ca_file}\n")
    s = connect(port, f"127.0.0.1:{sni_origin.port}")
    ctx = ssl.create_default_context(cafile=str(h.ca_cert))
    ctx.check_hostname = False
    with ctx.wrap_socket(s) as t:  # no server_hostname: no SNI
        t.sendall(b"GET /nosni HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert t.recv(100).startswith(b"HTTP/1.1 200")
    assert [r.path for r in sni_origin.requests] == ["/nosni"] and sni_origin.snis in ([None], ["127.0.0.1"])
    h.stop()


# -- tunnels routed into Tor (the private Tor network) ---------------------------------------------

TOR_RULES = f"""  - {{match: {{host: [blocked.hushtest, "*.blocked.hushtest"]}}, action: block}}
          - {{match: {{host: "{NAME}"}}, action: tor}}"""


@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_a_tor_routed_tunnel_naming_a_blocked_host_is_closed(hush, torlab, sni_origin, mode):
    port = free_port()
    h = hush({"t": policy(port, TOR_RULES, mode, default="block")}, config=tor_config(torlab))
    wait_tor_ready(h)
    results = {}
    for sni, split in (("blocked.hushtest", False), ("x.blocked.hushtest", True), (NAME, False)):
        s = tunnel(mode, port, NAME, sni_origin.port)
        if split:  # the ClientHello in two writes: nothing is relayed before the whole of it is read
            hello = client_hello(sni)
            s.sendall(hello[:7])
            s.settimeout(1)
            with pytest.raises(TimeoutError):
                s.recv(1)  # no answer yet, and the connection is still open
            s.settimeout(15)
            s.sendall(hello[7:])
            try:
                results[sni] = s.recv(100) or None
            except OSError:
                results[sni] = None
            s.close()
        else:
            results[sni] = https_get(s, sni, "/tor")
    assert results == {"blocked.hushtest": None, "x.blocked.hushtest": None, NAME: b"HTTP/1.1 200 OK"}
    assert sni_origin.owners == [torlab.exit_pid] and sni_origin.snis == [NAME]  # only the allowed one, via the exit
    h.stop()
    rows = h.audit()
    assert len(refused(rows, "blocked.hushtest")) == 1 and len(refused(rows, "x.blocked.hushtest")) == 1
    assert sorted(r["decision"] for r in rows) == ["block", "block", "tor"]


def test_a_tor_routed_tunnel_whose_clienthello_does_not_parse_is_closed(hush, torlab, sni_origin):
    port = free_port()
    h = hush({"t": policy(port, TOR_RULES, default="block")}, config=tor_config(torlab))
    wait_tor_ready(h)
    s = connect(port, f"{NAME}:{sni_origin.port}")
    s.sendall(b"\x16\x03\x01\x00\x10" + b"\x01\x00\x00\x0c" + b"\xff" * 12)
    with contextlib.suppress(OSError):
        assert s.recv(100) == b""
    s.close()
    assert sni_origin.accepts == []
    h.stop()
    [row] = h.audit()
    assert row["ip_exposed"] == 0 and "ClientHello cannot be read" in row["error"]


def test_plain_http_in_a_tor_routed_tunnel_is_decided_per_request(hush, torlab, origin):
    # no ClientHello to read: the requests are, each one with its Host header
    port = free_port()
    h = hush({"t": policy(port, TOR_RULES, default="block")}, config=tor_config(torlab))
    wait_tor_ready(h)
    answers = []
    for host in ("blocked.hushtest", NAME):
        s = connect(port, f"{NAME}:{origin.port}")
        s.sendall(f"GET /plain HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        got = b""
        try:
            while data := s.recv(65536):
                got += data
        except OSError:
            pass
        s.close()
        answers.append(got.split(b"\r\n", 1)[0])
    assert answers == [b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 200 OK"]
    assert [r.headers["host"] for r in origin.requests] == [NAME] and origin.owners == [torlab.exit_pid]
    h.stop()
    rows = [r for r in h.audit() if r["method"] == "GET"]
    assert sorted((r["host"], r["decision"], r["ip_exposed"]) for r in rows) == [
        ("blocked.hushtest", "block", 0), (NAME, "tor", 0)]
