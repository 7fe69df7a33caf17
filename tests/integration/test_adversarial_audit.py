"""Issue 11, classes 8, 9 and 10: the audit says what really happened on the wire.

8. A tunnel's row is written when its decision is applied, and completed in
   place when it connects and when it closes: a long tunnel is visible while
   it is open, and a ``kill -9`` does not lose the tunnels that carried data.
9. A route never leaks from one request of a keep-alive connection to the
   next (one Tor-routed request must not send the later direct ones through
   tor, nor the other way round); what hush killed or refused is audited as
   such, not as its decision; SOCKS5 rows keep the destination the app gave.
10. ``hush audit summary`` counts a leak as prevented only where the decision
   kept the request from the site, not where the upstream failed.

Every test asserts on what the far side saw (accepts, bytes, the process that
owned the peer socket) and on the audit rows.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys

import pytest

from .harness import NAME, curl, free_port, tor_config, wait_tor_ready
from .hostile import read_head, socks5, wait_for
from .wire import EchoOrigin, KeepAliveOrigin, live_rows, recv_exactly, tunnel_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def echo():
    o = EchoOrigin()
    yield o
    o.close()


@pytest.fixture
def tls_echo(ca):
    cert = ca.issue_cert("127.0.0.1", "localhost", "echo.test")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    o = EchoOrigin(ctx)
    yield o
    o.close()


@pytest.fixture
def keepalive():
    o = KeepAliveOrigin()
    yield o
    o.close()


def policy(port, rules="", default="allow", mode="http", app="testapp"):
    return f"""\
        app: {app}
        listen: {{port: {port}, mode: {mode}}}
        default: {default}
        rules:
        {rules}
    """


def open_socks(port, target_port, *, tls_ca=None, host="127.0.0.1"):
    s = socks5(port, host, target_port)
    if tls_ca is not None:
        ctx = ssl.create_default_context(cafile=str(tls_ca))
        s = ctx.wrap_socket(s, server_hostname="echo.test")
    return s


def open_connect(port, target_port, *, tls_ca):
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: 127.0.0.1:{target_port}\r\n\r\n".encode())
    assert read_head(s).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(tls_ca))
    return ctx.wrap_socket(s, server_hostname="echo.test")


# -- class 8: written when opened, completed in place, kept across kill -9 --------------------

TUNNELS = {
    "socks5-plain": ("socks5", False),
    "socks5-tls": ("socks5", True),
    "connect-tls": ("http", True),
}


@pytest.mark.parametrize("kind", TUNNELS)
def test_an_open_tunnel_is_audited_while_open_and_survives_kill_9(hush, echo, tls_echo, ca_file, kind):
    mode, tls = TUNNELS[kind]
    origin = tls_echo if tls else echo
    port = free_port()
    h = hush({"t": policy(port, mode=mode)})
    if mode == "socks5":
        s = open_socks(port, origin.port, tls_ca=ca_file if tls else None)
    else:
        s = open_connect(port, origin.port, tls_ca=ca_file)
    with s:
        s.sendall(b"x" * 1000)
        assert recv_exactly(s, 1005) == b"echo:" + b"x" * 1000
        # a live reader sees the tunnel, connected, before it closes
        assert wait_for(lambda: any(r["route"] == "direct" for r in tunnel_rows(h))), live_rows(h)
        [row] = tunnel_rows(h)
        assert (row["decision"], row["ip_exposed"], row["ended"]) == ("allow", 1, None)
        assert row["dest"] == f"127.0.0.1:{origin.port}"
        h.proc.kill()  # SIGKILL: no shutdown, no flush
        h.wait_exit()
    assert len(origin.accepts) == 1
    [row] = tunnel_rows(h)  # the database opens clean and still has it
    assert (row["decision"], row["route"], row["ip_exposed"], row["ended"]) == ("allow", "direct", 1, None)


def test_several_open_tunnels_survive_kill_9(hush, echo):
    port = free_port()
    h = hush({"t": policy(port, mode="socks5")})
    sockets = [open_socks(port, echo.port) for _ in range(5)]
    for i, s in enumerate(sockets):
        s.sendall(b"%d" % i)
        assert recv_exactly(s, 6) == b"echo:%d" % i
    assert wait_for(lambda: sum(r["route"] == "direct" for r in tunnel_rows(h)) == 5), live_rows(h)
    h.proc.kill()
    h.wait_exit()
    for s in sockets:
        s.close()
    rows = tunnel_rows(h)
    assert len(echo.accepts) == 5 and len(rows) == 5
    assert {r["conn"] for r in rows} and len({r["conn"] for r in rows}) == 5


def test_a_closed_tunnel_is_completed_in_place_with_its_bytes(hush, echo):
    port = free_port()
    h = hush({"t": policy(port, mode="socks5")})
    with open_socks(port, echo.port) as s:
        got = sent = 0
        for size in (1, 500, 70000):
            s.sendall(b"y" * size)
            sent += size
            assert wait_for(lambda sent=sent: len(echo.received) == sent)
            while got < echo.sent_back:  # everything the origin answered so far
                got += len(s.recv(65536))
        assert wait_for(lambda: any(r["route"] == "direct" for r in tunnel_rows(h)))
        [opened] = tunnel_rows(h)
        assert opened["ended"] is None
    assert wait_for(lambda: tunnel_rows(h) and tunnel_rows(h)[0]["ended"] is not None), live_rows(h)
    [row] = tunnel_rows(h)
    assert row["id"] == opened["id"]  # the same row, completed
    assert row["bytes_up"] == len(echo.received) == 70501  # what hush relayed is what the origin got
    assert row["bytes_down"] == echo.sent_back == got  # and what the app got back
    assert row["duration_ms"] > 0 and row["ended"] >= row["ts"]
    h.stop()
    assert len(tunnel_rows(h)) == 1


def test_hush_audit_tail_shows_a_long_tunnel_while_it_is_open(hush, tls_echo, ca_file):
    port = free_port()
    h = hush({"t": policy(port, mode="http")})
    with open_connect(port, tls_echo.port, tls_ca=ca_file) as s:
        s.sendall(b"hello")
        recv_exactly(s, 10)
        assert wait_for(lambda: any(r["route"] == "direct" for r in tunnel_rows(h)))
        out = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "audit", "tail", "--state-dir", str(h.state),
                              "--json"], capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        [row] = [r for r in json.loads(out.stdout) if r["method"] == "CONNECT"]
        assert row["ended"] is None and row["ip_exposed"] is True and row["host"] == "127.0.0.1"
    h.stop()


def test_a_refused_tunnel_is_written_once_closed(hush, echo):
    port = free_port()
    h = hush({"t": policy(port, mode="socks5", default="block")})
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + echo.port.to_bytes(2, "big"))
    s.recv(100)
    s.sendall(b"\x00\x01 not http, not tls")  # decided on the destination (a block)
    s.close()
    assert wait_for(lambda: tunnel_rows(h))
    h.proc.kill()
    h.wait_exit()
    [row] = tunnel_rows(h)
    assert (row["decision"], row["route"], row["ip_exposed"], row["egress"]) == ("block", "none", 0, "none")
    assert row["ended"] is not None and echo.accepts == []


# -- class 9: what really happened on the wire -----------------------------------------------

def test_socks5_row_keeps_the_destination_the_app_gave(hush, tls_echo, ca_file):
    # a client that resolved the name itself: the SOCKS5 destination is an address, the SNI a name
    port = free_port()
    h = hush({"t": policy(port, mode="socks5")})
    with open_socks(port, tls_echo.port, tls_ca=ca_file) as s:  # SNI echo.test, destination 127.0.0.1
        s.sendall(b"z")
        recv_exactly(s, 6)
    h.stop()
    [row] = tunnel_rows(h)
    assert (row["host"], row["dest"], row["route"]) == ("echo.test", f"127.0.0.1:{tls_echo.port}", "direct")
    assert len(tls_echo.accepts) == 1


H2C_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.mark.parametrize("where", ["connect", "socks5"])
def test_a_killed_h2c_preface_is_audited_refused_not_allowed(hush, echo, where):
    port = free_port()
    mode = "socks5" if where == "socks5" else "http"
    # a request-level rule: every tunnel is inspected, so the preface is an HTTP request to hush
    h = hush({"t": policy(port, mode=mode, rules="  - {match: {path: /never}, action: block}")})
    if where == "socks5":
        s = socks5(port, "127.0.0.1", echo.port)
    else:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: 127.0.0.1:{echo.port}\r\n\r\n".encode())
        assert read_head(s).startswith(b"HTTP/1.1 200")
    with s:
        s.sendall(H2C_PREFACE)
        s.settimeout(10)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
    h.stop()
    assert echo.accepts == [] and echo.received == b""
    rows = [r for r in h.audit() if r["method"] == "PRI"]
    assert rows, h.audit()
    for row in rows:
        assert (row["decision"], row["route"], row["ip_exposed"], row["egress"]) == ("refused", "none", 0, "direct")
        assert row["error"]


def test_requests_that_fail_upstream_stay_their_decision_and_prevent_nothing(hush, echo):
    closed = free_port()  # nothing listens here: the connection is refused
    port = free_port()
    h = hush({"t": policy(port, rules="  - {match: {path: /blocked}, action: block}")})
    proxy = ("-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", "-A", "WhatsApp/2",
             "-H", "Cookie: a=1")
    for i in range(3):
        assert curl(*proxy, f"http://127.0.0.1:{closed}/gone{i}").stdout == b"502"
    assert curl(*proxy, f"http://127.0.0.1:{closed}/blocked").stdout == b"403"
    h.stop()
    rows = h.audit()
    failed = [r for r in rows if r["decision"] == "allow"]
    assert len(failed) == 3 and all((r["route"], r["ip_exposed"], r["egress"]) == ("none", 0, "direct")
                                    for r in failed)
    out = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "audit", "summary", "--state-dir", str(h.state),
                          "--json"], capture_output=True, timeout=60)
    prevented = json.loads(out.stdout)["apps"]["testapp"]["prevented"]
    # only the block kept anything from the site; the failed allows kept nothing
    assert prevented == {"ip": 1, "user_agent": 1, "cookies": 1, "referer": 0, "accept_language": 0}


def test_a_client_that_leaves_before_the_answer_prevented_nothing(hush, keepalive):
    port = free_port()
    h = hush({"t": policy(port)})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {keepalive.url('/left')} HTTP/1.1\r\nHost: 127.0.0.1:{keepalive.port}\r\n"
                  "User-Agent: WhatsApp/2\r\n\r\n".encode())
        read_head(s)
    h.stop()
    [row] = h.audit()
    assert (row["decision"], row["route"], row["ip_exposed"]) == ("allow", "direct", 1)
    out = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "audit", "summary", "--state-dir", str(h.state),
                          "--json"], capture_output=True, timeout=60)
    assert json.loads(out.stdout)["apps"]["testapp"]["prevented"]["ip"] == 0


# -- class 9 through Tor: a route never leaks to the next request of a connection ------------

TOR_POLICY = """\
    app: t
    listen: {port}
    default: block
    rules:
      - match: {{host: "*.hushtest"}}
        action: tor
      - match: {{host: 127.0.0.1}}
        action: allow
"""


def keepalive_requests(port, urls):
    """Requests one after another on one client connection; the answers' heads."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for url in urls:
            host = url.split("/")[2]
            s.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = read_head(s)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]) if b"ontent-" in head else 0
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += s.recv(65536)
            answers.append(head[:12])
    return answers


@pytest.mark.parametrize("order", [("tor", "direct", "direct"), ("direct", "tor", "direct"),
                                   ("tor", "direct", "tor", "direct")])
def test_a_tor_route_does_not_leak_to_the_next_request(hush, torlab, keepalive, order):
    port = free_port()
    h = hush({"t": TOR_POLICY.format(port=port)}, config=tor_config(torlab))
    wait_tor_ready(h)
    urls = [keepalive.url(f"/{i}-{kind}", host=NAME if kind == "tor" else "127.0.0.1")
            for i, kind in enumerate(order)]
    assert keepalive_requests(port, urls) == [b"HTTP/1.1 200"] * len(order)
    seen = dict(keepalive.seen)
    for i, kind in enumerate(order):
        owner = seen[f"/{i}-{kind}"]
        if kind == "tor":
            assert owner == torlab.exit_pid, (i, kind, keepalive.seen)
        else:
            assert owner == h.proc.pid, (i, kind, keepalive.seen)  # hush itself, not the exit
    h.stop()
    rows = [r for r in h.audit() if r["method"] == "GET"]
    assert [(r["decision"], r["route"], r["ip_exposed"]) for r in rows] == [
        ("tor", "tor", 0) if kind == "tor" else ("allow", "direct", 1) for kind in order]


def test_a_socks5_tunnel_through_tor_is_audited_as_routed(hush, torlab, keepalive):
    port = free_port()
    h = hush({"t": f"app: t\nlisten: {{port: {port}, mode: socks5}}\ndefault: block\n"
                   "rules:\n  - {match: {host: '*.hushtest'}, action: tor}\n"}, config=tor_config(torlab))
    wait_tor_ready(h)
    with socks5(port, NAME, keepalive.port) as s:
        s.sendall(f"GET /socks HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
        assert read_head(s).startswith(b"HTTP/1.1 200")
        assert wait_for(lambda: any(r["route"] == "tor" for r in tunnel_rows(h)))
    assert keepalive.seen == [("/socks", torlab.exit_pid)]
    h.stop()
    [row] = tunnel_rows(h)
    assert (row["decision"], row["route"], row["ip_exposed"], row["dest"]) == ("tor", "tor", 0,
                                                                               f"{NAME}:{keepalive.port}")
    assert row["bytes_up"] > 0 and row["bytes_down"] > 0 and row["ended"] is not None
