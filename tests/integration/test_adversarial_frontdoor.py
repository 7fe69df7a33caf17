"""Issue 16: the front door (daemon/frontdoor.py, daemon/handshake.py), attacked from the app's side.

The front door relays the plain connection-level tunnel itself and hands
everything else to mitmproxy with every byte replayed.  Whatever it relays
must be what mitmproxy's path would have relayed: same destination, same
TLS-name check, same refusals, and the same local users.  Each test asserts
what reached the far side (an origin counting TCP accepts, recording bytes
and, for TLS, the name each handshake asked for) and checks through
``hush status`` which path took the connection where that matters.

Found by these tests and fixed with them:

- a ClientHello whose record-layer version is 0x0304 or above, which
  OpenSSL accepts, is not TLS to mitmproxy (``starts_like_tls_record``),
  so a tunnel decided at connection level was relayed raw and the TLS name
  never checked (mitmproxy's path too, before the front door): decide now
  refuses a handshake record it cannot read, and waits for a record header
  still arriving;
- a ClientHello whose first 1-2 bytes waited past the front door's WAIT was
  handed to mitmproxy as those bytes alone, which it took for raw TCP;
- a CONNECT whose framing headers mitmproxy refuses (400) was relayed;
- another local user's connection was answered and held by the front door
  (the uid was asked only once the handshake was complete): it is now handed
  to mitmproxy's path, which closes it at once, as soon as it is accepted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest
import trustme

from tests.tls import client_hello

from .harness import free_port, wait_for
from .hostile import CountingOrigin, read_head
from .wire import EchoOrigin, recv_exactly, tunnel_rows

pytestmark = pytest.mark.integration

BLOCKED = "blocked.hushtest"
ALLOWED = "allowed.hushtest"


def policy(port: int, rules: str = "", default: str = "allow", mode: str = "http") -> str:
    return f"app: t\nlisten: {{port: {port}, mode: {mode}}}\ndefault: {default}\nrules:\n{rules}"


BLOCK_NAME = f"  - {{match: {{host: {BLOCKED}}}, action: block}}\n"


class SniOrigin:
    """A TLS server on 127.0.0.1 that records every TCP accept and the name each
    handshake asked for (its SNI), and answers one request per connection."""

    def __init__(self):
        cert = trustme.CA().issue_cert(ALLOWED, BLOCKED, "127.0.0.1")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self.ctx)
        self.accepts: list[tuple] = []
        self.names: list[str | None] = []
        self.requests: list[bytes] = []
        self.ctx.sni_callback = lambda _obj, name, _ctx: self.names.append(name)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return
            self.accepts.append(addr)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.settimeout(20)
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                data = tls.recv(4096)
                self.requests.append(data.split(b"\r\n")[0])
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\norigin\n")

    def close(self):
        self._sock.close()


@pytest.fixture
def sni_origin():
    o = SniOrigin()
    yield o
    o.close()


def tls_get(sock: socket.socket, sni: str, minor: int | None = None, split: int = 0, pause: float = 0.0) -> bytes:
    """A whole TLS handshake and ``GET /x`` over ``sock`` (hush said yes already), as an app crafting
    its first record may: its record-layer minor version set to ``minor``, and/or the ClientHello sent
    as ``split`` bytes, a pause, then the rest.  The response's bytes (b"" if it never came)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    first = True

    def flush():
        nonlocal first
        out = outgoing.read()
        if out and first:
            first = False
            if minor is not None:
                out = out[:2] + bytes([minor]) + out[3:]
            if split:
                sock.sendall(out[:split])
                time.sleep(pause)
                out = out[split:]
        if out:
            sock.sendall(out)

    sock.settimeout(pause + 15)
    try:
        while True:
            try:
                tls.do_handshake()
                flush()
                break
            except ssl.SSLWantReadError:
                flush()
                data = sock.recv(65536)
                if not data:
                    return b""
                incoming.write(data)
        tls.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        flush()
        answer = b""
        while True:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    return answer
                incoming.write(data)
    except (OSError, ssl.SSLError):
        return b""


def through_hush(port: int, mode: str, dport: int) -> socket.socket:
    """A tunnel to 127.0.0.1:dport that hush said yes to: a CONNECT, or SOCKS5 with an IPv4 address."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    if mode == "http":
        target = f"127.0.0.1:{dport}"
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert read_head(s).startswith(b"HTTP/1.1 200 "), "the CONNECT was not granted"
    else:
        s.sendall(b"\x05\x01\x00")
        assert recv_exactly(s, 2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + dport.to_bytes(2, "big"))
        assert recv_exactly(s, 10)[:2] == b"\x05\x00", "the SOCKS5 request was not granted"
    return s


def frontdoor(h) -> dict:
    return h.status()["frontdoor"]


# -- the plain case: taken by the front door, and it works ---------------------------------------

@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_the_plain_tunnel_is_the_front_doors_and_reaches_the_origin(hush, sni_origin, mode):
    port = free_port()
    h = hush({"t": policy(port, BLOCK_NAME, mode=mode)})
    with through_hush(port, mode, sni_origin.port) as s:
        answer = tls_get(s, "127.0.0.1")  # an address: OpenSSL sends no SNI
    assert answer.endswith(b"origin\n")
    assert sni_origin.requests == [b"GET /x HTTP/1.1"] and sni_origin.names == [None]
    assert frontdoor(h)["fast"] == 1 and frontdoor(h)["handed"] == 0
    h.stop()
    [row] = {r["conn"]: r for r in tunnel_rows(h)}.values()  # one tunnel (its row written at open, connect, close)
    assert (row["decision"], row["route"], row["ip_exposed"]) == ("allow", "direct", 1) and row["ended"]


# -- the TLS name: a blocked name on an allowed address is never served -------------------------

@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_a_hello_naming_a_blocked_host_is_refused(hush, sni_origin, mode):
    port = free_port()
    h = hush({"t": policy(port, BLOCK_NAME, mode=mode)})
    with through_hush(port, mode, sni_origin.port) as s:
        assert tls_get(s, BLOCKED) == b""
    assert sni_origin.accepts == [] and sni_origin.names == [] and sni_origin.requests == []
    assert frontdoor(h)["fast"] == 0  # the front door handed it: mitmproxy's path refused it
    h.stop()


@pytest.mark.parametrize("split", [1, 2, 4])
@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_a_hello_split_after_its_first_bytes_is_still_checked(hush, sni_origin, mode, split):
    # mitmproxy alone takes a first read shorter than 3 bytes for raw TCP and relays a decided tunnel
    # unchecked; the front door waits for the whole record and hands it over whole
    port = free_port()
    h = hush({"t": policy(port, BLOCK_NAME, mode=mode)})
    with through_hush(port, mode, sni_origin.port) as s:
        assert tls_get(s, BLOCKED, split=split, pause=0.3) == b""
    assert sni_origin.names == [] and sni_origin.requests == []
    h.stop()


@pytest.mark.parametrize("minor", [0x04, 0xFF])
@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_a_hello_whose_record_version_is_above_tls12_is_still_checked(hush, sni_origin, mode, minor):
    # found (fixed since): OpenSSL takes a ClientHello in a record whose legacy version is 0x0304..0x03ff;
    # mitmproxy's starts_like_tls_record only 0x0300..0x0303, so the tunnel (decided on its address)
    # was relayed as raw TCP and the name it asks for never decided
    port = free_port()
    h = hush({"t": policy(port, BLOCK_NAME, mode=mode)})
    with through_hush(port, mode, sni_origin.port) as s:
        answer = tls_get(s, BLOCKED, minor=minor)
    assert BLOCKED not in sni_origin.names, "the origin served the blocked name"
    assert sni_origin.requests == [] and b"origin" not in answer
    h.stop()


def test_a_hello_whose_first_bytes_wait_past_the_front_doors_wait_is_still_checked(hush, sni_origin):
    # found (fixed since): the sweep handed a client that waited (WAIT, 10 s) to mitmproxy with the two
    # bytes it had; mitmproxy took them for raw TCP and relayed the rest of the hello unchecked
    from hush.daemon import frontdoor as door

    port = free_port()
    h = hush({"t": policy(port, BLOCK_NAME)})
    with through_hush(port, "http", sni_origin.port) as s:
        answer = tls_get(s, BLOCKED, split=2, pause=door.WAIT + door.SWEEP + 1)
    assert BLOCKED not in sni_origin.names, "the origin served the blocked name"
    assert sni_origin.requests == [] and b"origin" not in answer
    h.stop()


# -- the CONNECT head: what mitmproxy refuses is not relayed -------------------------------------

FRAMING = {
    "content-length-not-a-number": "Content-Length: abc",
    "content-length-twice": "Content-Length: 0\r\nContent-Length: 1",
    "transfer-encoding-unknown": "Transfer-Encoding: bogus",
    "transfer-encoding-chunked": "Transfer-Encoding: chunked",
    "transfer-encoding-http10": "Transfer-Encoding: chunked",
}


def test_a_connect_whose_framing_mitmproxy_refuses_is_not_relayed(hush):
    # found (fixed since): mitmproxy answers these 400 (or, chunked, reads the tunnel as the CONNECT's
    # body and relays nothing); the front door did not look at the framing fields and relayed them
    port = free_port()
    h = hush({"t": policy(port)})
    reached = {}
    for name, field in FRAMING.items():
        origin = CountingOrigin()
        target = f"127.0.0.1:{origin.port}"
        version = "HTTP/1.0" if name.endswith("http10") else "HTTP/1.1"
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.sendall(f"CONNECT {target} {version}\r\nHost: {target}\r\n{field}\r\n\r\n".encode())
            if b" 200 " in read_head(s)[:16]:
                s.sendall(client_hello())
                time.sleep(0.5)
        origin.close()
        if origin.accepts:
            reached[name] = bytes(origin.data[:5]).hex()
    assert reached == {}, f"reached the origin: {reached}; front door {frontdoor(h)}"
    h.stop()
    # each is audited: the four mitmproxy answered 400 before hush decided anything, with what it said
    # (it had no row at all before); the chunked one's tunnel, granted, carried nothing
    rows = [(r["method"], r["level"], r["decision"], r["ip_exposed"], r["error"] or "") for r in h.audit()]
    refused = [row for row in rows if row[2] == "block"]
    assert len(refused) == 4 and len(rows) == 5, rows
    assert all(row[:4] == ("CONNECT", "connect", "block", 0) for row in refused), rows
    assert sum("content-length" in row[4] for row in refused) == 2, rows
    assert sum("transfer-encoding" in row[4].lower() for row in refused) == 2, rows
    assert [row[:4] for row in rows if row[2] != "block"] == [("CONNECT", "connect", "allow", 0)]


@pytest.mark.parametrize("target", ["0x7f.1", "2130706433", "127.1", "0177.0.0.1", "[::ffff:127.0.0.1]",
                                    "127.0.0.1.", "0.0.0.0", "LOCALHOST"])
def test_an_address_spelt_otherwise_is_decided_as_the_address(hush, target):
    origin = CountingOrigin()
    port = free_port()
    rules = "  - {match: {host: 127.0.0.1}, action: block}\n  - {match: {host: localhost}, action: block}\n"
    h = hush({"t": policy(port, rules)})
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        authority = f"{target}:{origin.port}"
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        answer = read_head(s)
        if b" 200 " in answer[:16]:
            s.sendall(client_hello())
            time.sleep(0.3)
    origin.close()
    assert origin.accepts == [], answer
    assert frontdoor(h)["fast"] == 0
    h.stop()


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"\x01\x7f\x00\x00\x01", id="ipv4"),
    pytest.param(b"\x01\x00\x00\x00\x00", id="unspecified"),
    pytest.param(b"\x04" + bytes(10) + b"\xff\xff\x7f\x00\x00\x01", id="ipv4-mapped"),
    pytest.param(b"\x03\x06" + b"0x7f.1", id="hex-name"),
    pytest.param(b"\x03\x0a" + b"127.0.0.1.", id="trailing-dot"),
    pytest.param(b"\x03\x0a" + b"2130706433", id="decimal-name"),
])
def test_a_socks5_destination_spelt_otherwise_is_decided_as_the_address(hush, request_bytes):
    origin = CountingOrigin()
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.1}, action: block}\n", mode="socks5")})
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        # greeting, request and ClientHello in one write: the pipelined case
        s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00" + request_bytes + origin.port.to_bytes(2, "big") + client_hello())
        s.settimeout(5)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(100):
                answer += chunk
    origin.close()
    assert origin.accepts == [], answer
    assert answer[:2] == b"\x05\x00" and answer[2:4] == b"\x05\x02"  # not allowed by ruleset
    h.stop()


# -- other local users -------------------------------------------------------------------------

AS_NOBODY = """
import socket, sys, time
port, what = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=3)
s.sendall(bytes.fromhex(what))
start = time.monotonic()
try:
    data = s.recv(100)
    print("closed" if not data else "answered " + data.hex(), round(time.monotonic() - start, 1))
except ConnectionResetError:
    print("closed", round(time.monotonic() - start, 1))
except TimeoutError:
    print("open", round(time.monotonic() - start, 1))
"""


def as_nobody(port: int, what: str) -> str:
    """What a client run as uid 65534 saw after sending ``what`` (the system's python3: the
    virtualenv's may sit in a directory only its owner can enter)."""
    setpriv, python = shutil.which("setpriv"), shutil.which("python3", path="/usr/bin:/bin")
    assert setpriv and python, "setpriv (util-linux) or python3 is not installed"
    out = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", AS_NOBODY,
                          str(port), what.encode("latin-1").hex()], capture_output=True, timeout=30, env={})
    return out.stdout.decode().strip() or out.stderr.decode()[-300:]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user (CI: root)")


@needs_root
def test_another_users_connect_is_not_relayed(hush):
    origin = CountingOrigin()
    port = free_port()
    h = hush({"t": policy(port)})
    target = f"127.0.0.1:{origin.port}"
    got = as_nobody(port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
    origin.close()
    assert got.startswith("closed"), got
    assert origin.accepts == [] and frontdoor(h)["fast"] == 0
    h.stop()


@needs_root

@pytest.mark.parametrize("mode,first", [("socks5", "\x05\x01\x00"), ("http", "CONNECT 127.0.0.1:9 HTTP/1.1\r\n")])
def test_another_users_connection_is_closed_at_once_unanswered(hush, mode, first):
    # found (fixed since): mitmproxy's path asks the kernel for the peer's uid at accept and closes another
    # user's connection at once; the front door answered SOCKS5's greeting and held a half-sent CONNECT
    # head (until WAIT, or for as long as a byte arrives every few seconds) before it asked: another user
    # learnt what listens there and could hold the daemon's descriptors
    port = free_port()
    h = hush({"t": policy(port, mode=mode)})
    got = as_nobody(port, first)
    assert got.startswith("closed"), f"another user's connection was {got}"
    h.stop()


# -- a reload, a stop: the front door's own tunnels ------------------------------------------------

def reload(h, text: str):
    before = h.log.count("reloaded (SIGHUP)")
    tmp = h.policies / "t.tmp"
    tmp.write_text(text)
    os.replace(tmp, h.policies / "t.yaml")
    h.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: h.log.count("reloaded (SIGHUP)") > before), h.log


@pytest.mark.parametrize("spliced", [False, True], ids=["asyncio", "spliced"])
def test_a_reload_that_blocks_a_fast_tunnel_closes_it(hush, spliced):
    from hush.addons.tunnel import SPLICE_AFTER

    echo = EchoOrigin()
    port = free_port()
    h = hush({"t": policy(port)})
    hello = client_hello()
    with through_hush(port, "http", echo.port) as s:
        s.sendall(hello)
        assert recv_exactly(s, 5 + len(hello)) == b"echo:" + hello
        if spliced:  # past SPLICE_AFTER (both ways) the tunnel is relayed in the kernel
            got = bytearray()

            def drain():
                with contextlib.suppress(OSError):
                    while chunk := s.recv(65536):
                        got.extend(chunk)

            threading.Thread(target=drain, daemon=True).start()
            bulk = b"x" * (SPLICE_AFTER // 2)
            s.sendall(bulk)
            assert wait_for(lambda: len(got) >= len(bulk) and echo.sent_back == len(got) + 5 + len(hello))
            time.sleep(0.3)  # the relay starts once both write buffers are empty
        assert frontdoor(h)["fast"] == 1 and frontdoor(h)["open"] == 1
        before = len(echo.received)
        reload(h, policy(port, "  - {match: {host: 127.0.0.1}, action: block}\n"))
        assert wait_for(lambda: echo.closed == 1), "hush did not close the tunnel to the origin"
        with contextlib.suppress(OSError):
            s.sendall(b"after the reload")
            time.sleep(0.3)
    assert len(echo.received) == before and b"after" not in echo.received
    h.stop()
    echo.close()
    [row] = {r["conn"]: r for r in tunnel_rows(h)}.values()
    assert row["decision"] == "revoked" and row["error"].startswith("revoked on reload") and row["ended"]


def test_sigterm_completes_the_row_of_an_open_fast_tunnel(hush):
    echo = EchoOrigin()
    port = free_port()
    h = hush({"t": policy(port)})
    hello = client_hello()
    s = through_hush(port, "http", echo.port)
    s.sendall(hello)
    assert recv_exactly(s, 5 + len(hello)) == b"echo:" + hello
    assert frontdoor(h)["open"] == 1
    h.stop()
    s.close()
    echo.close()
    rows = tunnel_rows(h)
    assert rows and rows[-1]["ended"] is not None and rows[-1]["bytes_up"] == len(hello), rows
    assert echo.closed == 1


@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_a_reload_between_the_grant_and_the_hello_decides_under_the_new_set(hush, mode):
    # the front door granted under the old set; the ClientHello arrives after a reload that blocks the
    # target: nothing is dialled (mitmproxy's path decides it anew, its answer differs: closed)
    origin = CountingOrigin()
    port = free_port()
    h = hush({"t": policy(port, mode=mode)})
    with through_hush(port, mode, origin.port) as s:
        reload(h, policy(port, "  - {match: {host: 127.0.0.1}, action: block}\n", mode=mode))
        with contextlib.suppress(OSError):
            s.sendall(client_hello())
            s.settimeout(5)
            while s.recv(65536):
                pass
    origin.close()
    assert origin.accepts == [] and frontdoor(h)["fast"] == 0
    h.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="the floor must be root's: run as root (CI does)")
def test_the_organisations_floor_is_the_front_doors_too(hush, tmp_path):
    origin = CountingOrigin()
    port = free_port()
    floor = tmp_path / "etc-hush-policies"
    floor.mkdir(mode=0o755)
    os.chmod(floor, 0o755)
    (floor / "t.yaml").write_text("app: t\ndefault: allow\nrules:\n  - {match: {host: 127.0.0.1}, action: block}\n")
    os.chmod(floor / "t.yaml", 0o644)
    h = hush({"t": policy(port)}, config=f"organisation_policies: {floor}\n")
    target = f"127.0.0.1:{origin.port}"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = read_head(s)
        if b" 200 " in answer[:16]:
            s.sendall(client_hello())
            time.sleep(0.3)
    origin.close()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert origin.accepts == [] and frontdoor(h)["fast"] == 0
    h.stop()


def test_a_shared_listener_is_never_the_front_doors(hush):
    # two apps on one listener are told apart by the client's executable (mitmproxy's path):
    # this client (python) is neither, so it fails closed
    origin = CountingOrigin()
    port = free_port()
    h = hush({"a": f"app: a\nlisten: {port}\nidentify: {{process: [fakesignal]}}\ndefault: allow\n",
              "b": f"app: b\nlisten: {port}\nidentify: {{process: [fakechrome]}}\ndefault: allow\n"})
    target = f"127.0.0.1:{origin.port}"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = read_head(s)
        if b" 200 " in answer[:16]:
            s.sendall(client_hello())
            time.sleep(0.3)
    origin.close()
    assert answer.startswith(b"HTTP/1.1 502"), answer  # fail closed: no policy names this process
    assert origin.accepts == [] and frontdoor(h)["fast"] == 0
    h.stop()
