"""Issue 11, class 13: a reload closes what the new policy set treats more strictly.

A tunnel relayed on a decision made at connection level (CONNECT, SOCKS5) and
a flow held by ``delay`` were decided under the set they started with.  After
a reload, each whose new decision is stricter — blocked, sent through Tor
where it went direct, decided only per request, no longer the app's — is
closed (held flows answered 503), never sent on, and audited ``revoked``; the
others keep going.  Each test checks what the origin saw after the reload
and the audit row.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from .harness import free_port
from .hostile import read_head, socks5, wait_for
from .wire import EchoOrigin, recv_exactly, tunnel_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def echo():
    o = EchoOrigin()
    yield o
    o.close()


@pytest.fixture
def tls_echo(ca):
    cert = ca.issue_cert("127.0.0.1", "echo.test")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    o = EchoOrigin(ctx)
    yield o
    o.close()


# A set that routes through Tor starts hush's tor: here it may only attach to a
# control port where nothing listens (no tor ever reaches beyond loopback).
NO_TOR = f'tor:\n  mode: attach\n  control: "127.0.0.1:{free_port()}"\n'


def policy(port, rules="", default="allow", mode="http", extra=""):
    return f"app: t\nlisten: {{port: {port}, mode: {mode}}}\n{extra}default: {default}\nrules:\n{rules}"


def reload(h, policies: dict[str, str]):
    before = h.log.count("reloaded (SIGHUP)")
    for name, text in policies.items():
        tmp = h.policies / f"{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, h.policies / f"{name}.yaml")
    h.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: h.log.count("reloaded (SIGHUP)") > before), h.log


def closed_by_hush(s: socket.socket) -> bool:
    """The app's end sees its connection closed (EOF or reset), within 15 s."""
    s.settimeout(15)
    try:
        while s.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError, OSError) as e:
        return not isinstance(e, TimeoutError)
    return True


STRICTER = {
    "blocked": "  - {match: {host: 127.0.0.1}, action: block}\n",
    "tor-now": "  - {match: {host: 127.0.0.1}, action: tor}\n",
    "per-request-now": "  - {match: {host: 127.0.0.1, path: /x}, action: block}\n",
    "default-block": "",
}


@pytest.mark.parametrize("change", STRICTER)
def test_a_socks5_tunnel_the_new_set_treats_more_strictly_is_closed(hush, echo, change):
    port = free_port()
    h = hush({"t": policy(port, mode="socks5")}, config=NO_TOR)
    with socks5(port, "127.0.0.1", echo.port) as s:
        s.sendall(b"before")
        assert recv_exactly(s, 11) == b"echo:before"
        reload(h, {"t": policy(port, STRICTER[change], default="block" if change == "default-block" else "allow",
                               mode="socks5")})
        assert wait_for(lambda: echo.closed == 1), "hush did not close the tunnel to the origin"
        assert closed_by_hush(s)
        with contextlib.suppress(OSError):
            s.sendall(b"after")
    assert echo.received == b"before" and len(echo.accepts) == 1
    h.stop()
    [row] = tunnel_rows(h)
    assert (row["decision"], row["route"], row["ip_exposed"]) == ("revoked", "direct", 1)
    assert row["error"].startswith("revoked on reload: policy set") and row["ended"] is not None
    assert "revoked on reload" in h.log


def test_a_connect_tunnel_the_new_set_blocks_is_closed_and_another_is_kept(hush, tls_echo, echo, ca_file):
    # two tunnels: one to the TLS origin (127.0.0.1), one to the plain one on 127.0.0.1 too, but
    # the new set blocks only the first's port
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.1}, action: passthrough}\n")}, config=NO_TOR)
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(f"CONNECT 127.0.0.1:{tls_echo.port} HTTP/1.1\r\nHost: 127.0.0.1:{tls_echo.port}\r\n\r\n".encode())
    assert read_head(s).startswith(b"HTTP/1.1 200")
    s = ssl.create_default_context(cafile=str(ca_file)).wrap_socket(s, server_hostname="echo.test")
    kept = socks_or_connect(port, echo.port)
    s.sendall(b"one")
    assert recv_exactly(s, 8) == b"echo:one"
    kept.sendall(b"two")
    assert recv_exactly(kept, 8) == b"echo:two"
    reload(h, {"t": policy(port, f"  - {{match: {{host: 127.0.0.1, port: {tls_echo.port}}}, action: block}}\n"
                                 "  - {match: {host: 127.0.0.1}, action: allow}\n")})
    assert wait_for(lambda: tls_echo.closed == 1)
    assert closed_by_hush(s)
    s.close()
    kept.sendall(b"three")  # allow instead of passthrough: both direct, so it keeps going
    assert recv_exactly(kept, 10) == b"echo:three"
    kept.close()
    assert tls_echo.received == b"one" and echo.received == b"twothree"
    h.stop()
    rows = {r["port"]: r for r in tunnel_rows(h)}
    assert rows[tls_echo.port]["decision"] == "revoked" and "block" in rows[tls_echo.port]["error"]
    assert rows[echo.port]["decision"] == "passthrough" and rows[echo.port]["error"] is None


def socks_or_connect(port, target_port):
    """A CONNECT tunnel carrying plain bytes (decided at connection level, relayed untouched)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: 127.0.0.1:{target_port}\r\n\r\n".encode())
    assert read_head(s).startswith(b"HTTP/1.1 200")
    return s


@pytest.mark.parametrize("mode", ["socks5", "http"])
def test_a_tunnel_the_new_set_still_allows_keeps_going(hush, echo, mode):
    port = free_port()
    h = hush({"t": policy(port, mode=mode)}, config=NO_TOR)
    s = socks5(port, "127.0.0.1", echo.port) if mode == "socks5" else socks_or_connect(port, echo.port)
    with s:
        s.sendall(b"a")
        recv_exactly(s, 6)
        # laxer or equal for this tunnel: another host blocked, the default now passthrough
        reload(h, {"t": policy(port, "  - {match: {host: blocked.test}, action: block}\n", default="passthrough",
                               mode=mode)})
        s.sendall(b"b")
        assert recv_exactly(s, 6) == b"echo:b"
    assert echo.received == b"ab"
    h.stop()
    [row] = tunnel_rows(h)
    assert row["decision"] == "allow" and row["error"] is None


def test_held_flows_the_new_set_blocks_are_revoked_and_the_others_released(hush, origin):
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {path: '/held*'}, action: delay, delay: 4s}\n")}, config=NO_TOR)
    results: dict[str, bytes] = {}

    def get(path):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(f"GET {origin.url(path)} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
                      "Connection: close\r\n\r\n".encode())
            results[path] = read_head(s)[:12]

    threads = [threading.Thread(target=get, args=(p,)) for p in ("/held-blocked", "/held-kept")]
    for t in threads:
        t.start()
    assert wait_for(lambda: _held(h) == 2, timeout=20), h.log
    reload(h, {"t": policy(port, "  - {match: {path: '/held-blocked'}, action: block}\n"
                                 "  - {match: {path: '/held*'}, action: delay, delay: 4s}\n")})
    for t in threads:
        t.join(30)
    assert results == {"/held-blocked": b"HTTP/1.1 503", "/held-kept": b"HTTP/1.1 200"}
    assert [r.path for r in origin.requests] == ["/held-kept"]
    h.stop()
    rows = h.audit()
    assert sorted(r["decision"] for r in rows) == ["delay", "revoked"]
    [revoked] = [r for r in rows if r["decision"] == "revoked"]
    assert (revoked["ip_exposed"], revoked["egress"], revoked["status"]) == (0, "none", 503)
    assert "block" in revoked["error"]


def _held(h) -> int:
    """How many flows hush holds, from ``hush status``."""
    import json

    out = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "status", "--state-dir", str(h.state), "--json"],
                         capture_output=True, timeout=30)
    try:
        return json.loads(out.stdout).get("held", 0)
    except ValueError:
        return 0


def test_a_shared_listener_tunnel_whose_app_changes_is_closed(hush, echo, tmp_path):
    # the lax app's own executable opened the tunnel; the new set no longer names it
    exe = tmp_path / "laxcli"
    shutil.copy(os.path.realpath(sys.executable), exe)
    port = free_port()
    lax = f"app: lax\nlisten: {{port: {port}, mode: socks5}}\nidentify: {{process: [laxcli]}}\ndefault: allow\n"
    strict = (f"app: strict\nlisten: {{port: {port}, mode: socks5}}\nidentify: {{process: [strictcli]}}\n"
              "default: block\n")
    h = hush({"lax": lax, "strict": strict}, config=NO_TOR)
    script = (
        "import socket, sys\n"
        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
        "s.sendall(b'\\x05\\x01\\x00'); assert s.recv(2) == b'\\x05\\x00'\n"
        "s.sendall(b'\\x05\\x01\\x00\\x01' + socket.inet_aton('127.0.0.1') + int(sys.argv[2]).to_bytes(2, 'big'))\n"
        "s.recv(10)\n"
        "s.sendall(b'first'); print(s.recv(100).decode(), flush=True)\n"
        "sys.stdin.readline()\n"  # the test reloads here
        "s.settimeout(15)\n"
        "try:\n"
        "    data = s.recv(100)\n"
        "except OSError:\n"
        "    data = b''\n"
        "print('closed' if not data else data.decode(), flush=True)\n"
    )
    child = subprocess.Popen([str(exe), "-c", script, str(port), str(echo.port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "echo:first"
        reload(h, {"lax": lax.replace("[laxcli]", "[laxcli2]")})
        assert wait_for(lambda: echo.closed == 1)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "closed"
    finally:
        child.stdin.close()
        child.wait(30)
    assert echo.received == b"first"
    h.stop()
    [row] = tunnel_rows(h)
    assert (row["app"], row["decision"], row["process"]) == ("lax", "revoked", "laxcli")
    assert "not lax" in row["error"]


def test_a_tunnel_is_decided_again_on_the_tls_name_it_let_through(hush, tls_echo, ca_file):
    """A CONNECT to an allowed address whose ClientHello named another host, let
    through because the old set treated both alike: a reload that blocks that
    name closes the tunnel (it was re-decided on its target alone before)."""
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.1}, action: passthrough}\n")}, config=NO_TOR)
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(f"CONNECT 127.0.0.1:{tls_echo.port} HTTP/1.1\r\nHost: 127.0.0.1:{tls_echo.port}\r\n\r\n".encode())
    assert read_head(s).startswith(b"HTTP/1.1 200")
    s = ssl.create_default_context(cafile=str(ca_file)).wrap_socket(s, server_hostname="echo.test")
    s.sendall(b"one")
    assert recv_exactly(s, 8) == b"echo:one"
    reload(h, {"t": policy(port, "  - {match: {host: echo.test}, action: block}\n"
                                 "  - {match: {host: 127.0.0.1}, action: passthrough}\n")})
    assert wait_for(lambda: tls_echo.closed == 1)
    assert closed_by_hush(s)
    s.close()
    assert tls_echo.received == b"one"
    h.stop()
    [row] = [r for r in tunnel_rows(h) if r["port"] == tls_echo.port]
    assert row["decision"] == "revoked" and "block" in row["error"]
