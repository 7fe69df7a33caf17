"""A tunnel decided at connection level (allow/passthrough on its target, 127.0.0.1 here) whose TLS
records are crafted so that the server reads a name hush never checked.

- An empty record before the ClientHello: OpenSSL skips any number of empty change_cipher_spec
  records (``14 03 03 00 00``) and then serves the name of the hello that follows; mitmproxy took
  such a first record for raw TCP and relayed it unchecked, and the front door's parser handed it
  to mitmproxy.  decide now refuses a tunnel whose first bytes are a TLS record but not a readable
  ClientHello (``handshake.tls_record_start``).
- A second ClientHello after a HelloRetryRequest: the first hello passes the check (no name, or
  the target's), the server asks for another (TLS 1.3's HRR), and the client's second hello names
  a blocked host, which OpenSSL serves.  Now the client's bytes after the first hello are held
  until the server's first record is known; after an HRR the second hello must name what the
  first named (``handshake.RetryWatch``: the front door's ``Door`` and mitmproxy's path's
  ``Counted``).

Each test runs on both listener modes and with the front door on and off, and asserts what the
origin saw: the names its servername callback was asked for, the raw bytes it received, the
requests it answered.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
import trustme

from hush.daemon.handshake import CCS, hello_retry
from tests.tls import client_hello

from .harness import free_port, wait_for
from .hostile import read_head
from .test_adversarial_frontdoor import ALLOWED, BLOCK_NAME, BLOCKED, policy, through_hush
from .test_frontdoor import front_off
from .wire import recv_exactly, tunnel_rows

pytestmark = pytest.mark.integration

MODES = ["http", "socks5"]
FRONT = ["front-on", "front-off"]


class Origin:
    """A TLS 1.3 server on 127.0.0.1 (OpenSSL through MemoryBIO) recording, per connection, every
    raw byte it received, the names its servername callback saw, and the requests it answered (one
    per connection).  ``retry``: it accepts only secp384r1, so a client offering an x25519 key
    share (Python's, curl's) gets a HelloRetryRequest."""

    def __init__(self, retry: bool = False):
        cert = trustme.CA().issue_cert(ALLOWED, BLOCKED, "127.0.0.1")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self.ctx)
        if retry:
            self.ctx.set_ecdh_curve("secp384r1")
        self.names: list[str | None] = []
        self.ctx.sni_callback = lambda _obj, name, _ctx: self.names.append(name)
        self.raw: list[bytearray] = []
        self.requests: list[bytes] = []
        self.closed = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def accepts(self) -> int:
        return len(self.raw)

    def _serve(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            raw = bytearray()
            self.raw.append(raw)
            threading.Thread(target=self._handle, args=(conn, raw), daemon=True).start()

    def _handle(self, conn: socket.socket, raw: bytearray):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ctx.wrap_bio(incoming, outgoing, server_side=True)

        def receive() -> bool:
            data = conn.recv(65536)
            raw.extend(data)
            incoming.write(data)
            return bool(data)

        try:
            with conn, contextlib.suppress(OSError, ssl.SSLError):
                conn.settimeout(15)
                while True:
                    try:
                        tls.do_handshake()
                        conn.sendall(outgoing.read())
                        break
                    except ssl.SSLWantReadError:
                        conn.sendall(outgoing.read())
                        if not receive():
                            return
                request = b""
                while b"\r\n\r\n" not in request:
                    try:
                        request += tls.read(65536)
                    except ssl.SSLWantReadError:
                        conn.sendall(outgoing.read())
                        if not receive():
                            return
                self.requests.append(request.split(b"\r\n")[0])
                tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\norigin\n")
                conn.sendall(outgoing.read())
        finally:
            self.closed += 1

    def close(self):
        self._sock.close()


@pytest.fixture
def origins():
    made: list[Origin] = []

    def make(**kw) -> Origin:
        made.append(Origin(**kw))
        return made[-1]

    yield make
    for o in made:
        o.close()


def daemon(hush, tmp_path, mode: str, front: str):
    port = free_port()
    env = front_off(tmp_path, ENABLED=False) if front == "front-off" else None
    return port, hush({"t": policy(port, BLOCK_NAME, mode=mode)}, env=env)


def exchange(sock: socket.socket, sni: str | None, prefix: bytes = b"", separate: bool = False,
             context: ssl.SSLContext | None = None) -> bytes:
    """A TLS handshake and ``GET /x`` over ``sock`` (hush said yes already) by Python's ssl, its
    first flight after ``prefix`` (in the same write, or ``separate``ly, a moment before): the
    response's bytes (b"" if none came)."""
    if context is None:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    first = [True]

    def flush():
        out = outgoing.read()
        if out and first[0]:
            first[0] = False
            if separate and prefix:
                sock.sendall(prefix)
                time.sleep(0.2)
            elif prefix:
                out = prefix + out
        if out:
            sock.sendall(out)

    sock.settimeout(10)
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


def until_closed(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    got = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            got += chunk
    return got


def refused_rows(h) -> list[dict]:
    return [r for r in tunnel_rows(h) if r["error"] and r["error"].startswith("refused")]


# -- an empty record before the ClientHello ----------------------------------------------------------

PREFIXES = {
    "ccs": bytes.fromhex("1403030000"),
    "ccs-x3": bytes.fromhex("1403030000") * 3,
    "ccs-0301": bytes.fromhex("1403010000"),
    "alert-empty": bytes.fromhex("1503030000"),
    "appdata-empty": bytes.fromhex("1703030000"),
}


@pytest.mark.parametrize("front", FRONT)
@pytest.mark.parametrize("mode", MODES)
def test_an_empty_record_before_the_hello_is_refused(hush, origins, tmp_path, mode, front):
    # found: OpenSSL skips empty change_cipher_spec records and serves the name of the hello after
    # them; mitmproxy relayed such a tunnel as raw TCP (its first byte is not 0x16), never checking it
    port, h = daemon(hush, tmp_path, mode, front)
    seen = {}
    for name, prefix in PREFIXES.items():
        for separate in (False, True):
            origin = origins()
            with through_hush(port, mode, origin.port) as s:
                answer = exchange(s, BLOCKED, prefix, separate)
            time.sleep(0.1)
            seen[name, separate] = (origin.accepts, origin.names, origin.requests, b"origin" in answer)
    assert all(v == (0, [], [], False) for v in seen.values()), seen
    # a real client through the same daemon is not affected
    origin = origins()
    with through_hush(port, mode, origin.port) as s:
        assert exchange(s, None).endswith(b"origin\n")
    assert origin.requests == [b"GET /x HTTP/1.1"] and origin.names == [None]
    wait_for(lambda: len(refused_rows(h)) == 2 * len(PREFIXES), message="a row for each refused tunnel")
    h.stop()
    rows = refused_rows(h)
    assert {(r["decision"], r["ip_exposed"], r["route"]) for r in rows} == {("refused", 0, "none")}, rows
    assert all("TLS record cannot be read" in r["error"] for r in rows), rows


@pytest.mark.parametrize("front", FRONT)
@pytest.mark.parametrize("mode", MODES)
def test_a_first_byte_that_only_may_start_a_record_waits_for_the_rest(hush, origins, tmp_path, mode, front):
    # one byte 0x14, then the rest of an empty record and the hello: waited for, then refused
    port, h = daemon(hush, tmp_path, mode, front)
    origin = origins()
    hello = client_hello(BLOCKED)
    with through_hush(port, mode, origin.port) as s:
        s.sendall(b"\x14")
        time.sleep(0.3)
        s.sendall(b"\x03\x03\x00\x00" + hello)
        until_closed(s)
    assert (origin.accepts, origin.names) == (0, [])
    h.stop()


def test_curl_through_hush_is_unaffected(hush, origins, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl")
    for mode in MODES:
        for front in FRONT:
            port, h = daemon(hush, tmp_path, mode, front)
            origin = origins()
            proxy = f"{'http' if mode == 'http' else 'socks5'}://127.0.0.1:{port}"
            out = subprocess.run([curl, "-sk", "--max-time", "10", "--proxy", proxy,
                                  f"https://127.0.0.1:{origin.port}/x"], capture_output=True, timeout=20)
            assert out.stdout == b"origin\n", (mode, front, out)
            assert origin.requests == [b"GET /x HTTP/1.1"]
            h.stop()


# -- a second ClientHello after a HelloRetryRequest ---------------------------------------------------

def second_hello(sni: str | None) -> bytes:
    """A ClientHello whose key share is secp384r1's, as a client answering the origin's HRR sends."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_ecdh_curve("secp384r1")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("front", FRONT)
@pytest.mark.parametrize("mode", MODES)
def test_a_second_hello_naming_another_host_after_a_retry_is_refused(hush, origins, tmp_path, mode, front):
    # found: the first hello (no name) passed the check, the origin asked for another (HRR), and the
    # second one, naming the blocked host in cleartext, was relayed: OpenSSL served that name
    port, h = daemon(hush, tmp_path, mode, front)
    seen = {}
    cases = [(first, second, ccs, pipelined)
             for first, second in ((None, BLOCKED), (ALLOWED, BLOCKED), (ALLOWED, None), (None, ALLOWED))
             for ccs in (True, False) for pipelined in (False, True)]
    fast = 0
    for first, second, ccs, pipelined in cases:
        origin = origins(retry=True)
        one, two = client_hello(first), (CCS if ccs else b"") + second_hello(second)
        with through_hush(port, mode, origin.port) as s:
            if pipelined:
                s.sendall(one + two)  # the server reads the second hello after its HRR, from its buffer
            else:
                s.sendall(one)
                s.settimeout(10)
                retry = s.recv(65536)
                assert hello_retry(retry) is True, retry[:16]
                s.sendall(two)
            until_closed(s)
        wait_for(lambda o=origin: o.accepts == 0 or o.closed == 1, message="the origin's connection ended")
        fast += first is None and not pipelined
        seen[first, second, ccs, pipelined] = (origin.names, origin.requests, [bytes(r) for r in origin.raw] == [one])
    wrong = {key: value for key, value in seen.items() if value != ([key[0]], [], True)}
    assert wrong == {}, "the origin saw more than the first hello"
    if front == "front-on":  # the front door's own watch took the plain ones (the rest it handed)
        assert h.status()["frontdoor"]["fast"] == fast
    wait_for(lambda: len(refused_rows(h)) == len(cases), message="the refused tunnels' rows")
    h.stop()
    rows = refused_rows(h)
    retried = [r for r in rows if "second TLS ClientHello" in r["error"]]
    assert len(retried) == len(cases), rows
    # the first hello went to the site: the row says so (direct, the address exposed), and its error
    assert all((r["route"], r["ip_exposed"], r["decision"]) == ("direct", 1, "allow") and r["ended"]
               for r in retried), retried


@pytest.mark.parametrize("front", FRONT)
@pytest.mark.parametrize("mode", MODES)
def test_a_retry_naming_the_same_host_completes(hush, origins, tmp_path, mode, front):
    # a real client the origin asks for a second hello (HRR): the same name (or none) twice goes through
    port, h = daemon(hush, tmp_path, mode, front)
    for sni in (None, ALLOWED):
        origin = origins(retry=True)
        with through_hush(port, mode, origin.port) as s:
            answer = exchange(s, sni)
        assert answer.endswith(b"origin\n"), (sni, origin.names)
        assert origin.names == [sni, sni] and origin.requests == [b"GET /x HTTP/1.1"]
        raw = bytes(origin.raw[0])
        assert raw.count(b"\x16\x03\x01") + raw.count(b"\x16\x03\x03") >= 2  # two hellos reached it
    if front == "front-on":
        assert h.status()["frontdoor"]["fast"] == 1  # the nameless one: the front door's
    h.stop()
    assert not refused_rows(h)


# -- the tor route: the same watch, on the bytes after tor's answer ---------------------------------

def through_tor(port: int, mode: str, dport: int) -> socket.socket:
    """A tunnel to origin.hushtest:dport that hush routes through tor (the exit resolves the name to
    127.0.0.1)."""
    from .harness import NAME

    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if mode == "http":
        target = f"{NAME}:{dport}"
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert read_head(s).startswith(b"HTTP/1.1 200 ")
    else:
        s.sendall(b"\x05\x01\x00")
        assert recv_exactly(s, 2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(NAME)]) + NAME.encode() + dport.to_bytes(2, "big"))
        assert recv_exactly(s, 10)[:2] == b"\x05\x00"
    return s


@pytest.mark.parametrize("mode", MODES)
def test_through_tor_a_second_hello_must_name_what_the_first_named(hush, torlab, origins, mode):
    from .harness import tor_config, wait_tor_ready

    port = free_port()
    rules = BLOCK_NAME + "  - {match: {host: '*.hushtest'}, action: tor}\n"
    h = hush({"t": policy(port, rules, default="block", mode=mode)}, config=tor_config(torlab))
    wait_tor_ready(h)
    origin = origins(retry=True)  # a real client retried: the same (no) name twice goes through tor
    with through_tor(port, mode, origin.port) as s:
        assert exchange(s, None).endswith(b"origin\n"), origin.names
    assert origin.names == [None, None] and origin.requests == [b"GET /x HTTP/1.1"]
    seen = {}
    for pipelined in (False, True):
        origin = origins(retry=True)
        one, two = client_hello(None), CCS + second_hello(BLOCKED)
        with through_tor(port, mode, origin.port) as s:
            if pipelined:
                s.sendall(one + two)
            else:
                s.sendall(one)
                s.settimeout(30)
                assert hello_retry(s.recv(65536)) is True
                s.sendall(two)
            until_closed(s, 15)
        wait_for(lambda o=origin: o.closed == 1, timeout=30, message="the origin's connection ended")
        seen[pipelined] = (origin.names, origin.requests, [bytes(r) for r in origin.raw] == [one])
    assert seen == {False: ([None], [], True), True: ([None], [], True)}, seen
    h.stop()
    retried = [r for r in refused_rows(h) if "second TLS ClientHello" in r["error"]]
    assert len(retried) == 2 and all((r["route"], r["ip_exposed"]) == ("tor", 0) for r in retried), retried
