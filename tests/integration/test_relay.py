"""Issue 16: tunnels decided at connection level are relayed by the splice relay
(daemon/relay.py), and every guarantee holds — what the origin saw, byte for byte."""

import contextlib
import os
import signal
import socket
import threading
import time

import pytest

from tests.tls import client_hello

from .harness import free_port, payload, wait_for
from .hostile import socks5
from .wire import tunnel_rows

pytestmark = pytest.mark.integration

CONFIG = "log_level: debug\n"  # the hand-over to the relay is logged at debug


HELLO = client_hello()


class Origin:
    """Accepts connections; reads the ClientHello record, then everything until EOF (or
    until closed), counting bytes with the time each arrived; ``answer`` bytes are sent once
    the client's EOF is in (a half-closed client still gets them), then EOF."""

    def __init__(self, answer: bytes = b""):
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepts = 0
        self.received = bytearray()
        self.arrivals: list[tuple[float, int]] = []
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepts += 1
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn, contextlib.suppress(OSError):
            while chunk := conn.recv(1 << 16):
                self.received += chunk
                self.arrivals.append((time.monotonic(), len(chunk)))
            if self.answer:
                conn.sendall(self.answer)
            conn.shutdown(socket.SHUT_WR)
        self.closed.set()

    def close(self):
        self.sock.close()


def connect_tunnel(port: int, target: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return s


def open_tunnel(mode: str, port: int, target: int) -> socket.socket:
    return connect_tunnel(port, target) if mode == "http" else socks5(port, "127.0.0.1", target, domain=False)


def policy(port: int, mode: str, default: str = "passthrough", rules: str = "") -> str:
    head = f"app: t\nlisten: {{port: {port}, mode: {mode}}}\ndefault: {default}\n"
    return head + (f"rules:\n{rules}" if rules else "")


@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_bytes_exact_both_ways_half_close_and_counted_at_close(hush, mode):
    up, down = payload(3_000_000), payload(5_000_000)[::-1]
    origin = Origin(answer=down)
    port = free_port()
    h = hush({"t": policy(port, mode)}, config=CONFIG)
    try:
        s = open_tunnel(mode, port, origin.port)
        s.sendall(HELLO + up)
        s.shutdown(socket.SHUT_WR)  # the app is done sending: the site still answers
        got = bytearray()
        while chunk := s.recv(1 << 16):
            got += chunk
        s.close()
        assert wait_for(origin.closed.is_set)
        assert bytes(origin.received) == HELLO + up
        assert bytes(got) == down
        assert origin.accepts == 1
        assert "in the kernel (splice)" in h.log, "the tunnel was not handed to the relay"
        wait_for(lambda: any(r["ended"] for r in tunnel_rows(h)), message="the tunnel's row completed at close")
    finally:
        origin.close()
    h.stop()
    [row] = tunnel_rows(h)
    assert (row["decision"], row["route"]) == ("passthrough", "direct")
    assert (row["bytes_up"], row["bytes_down"]) == (len(HELLO) + len(up), len(down))
    assert row["ended"] is not None and row["error"] is None


@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_a_reload_closes_a_spliced_tunnel_mid_transfer(hush, mode):
    """Nothing the app sends after the reload reaches the origin: the relay's sockets are
    shut down as the reload revokes the tunnel."""
    origin = Origin()
    port = free_port()
    h = hush({"t": policy(port, mode)}, config=CONFIG)
    stop = threading.Event()
    phase = {"byte": b"a"}
    sent_after = [0]

    def pump(s):
        with contextlib.suppress(OSError):
            while not stop.is_set():
                byte = phase["byte"]
                s.sendall(byte * 65536)
                if byte == b"Z":
                    sent_after[0] += 65536
                    time.sleep(0.01)

    try:
        s = open_tunnel(mode, port, origin.port)
        s.sendall(HELLO)
        t = threading.Thread(target=pump, args=(s,), daemon=True)
        t.start()
        wait_for(lambda: len(origin.received) > 4_000_000, message="bytes flowing before the reload")
        assert "in the kernel (splice)" in h.log
        before = h.log.count("reloaded (SIGHUP)")
        new = h.policies / "t.tmp"
        new.write_text(policy(port, mode, default="allow", rules="  - {match: {host: 127.0.0.1}, action: block}\n"))
        os.replace(new, h.policies / "t.yaml")
        h.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: h.log.count("reloaded (SIGHUP)") > before, message="the reload")
        phase["byte"] = b"Z"  # from here on, what the app sends must not reach the origin
        assert wait_for(origin.closed.is_set, message="hush closed the tunnel at the origin")
        time.sleep(0.5)
        stop.set()
        t.join(5)
        s.close()
        assert origin.received.startswith(HELLO)
        assert b"Z" not in origin.received[len(HELLO):]  # (the ClientHello's random bytes may hold a Z)
        assert origin.accepts == 1
    finally:
        stop.set()
        origin.close()
    h.stop()
    [row] = tunnel_rows(h)
    assert row["decision"] == "revoked" and row["error"].startswith("revoked on reload")
    assert row["ended"] is not None and 0 < row["bytes_up"] <= len(HELLO) + len(origin.received)
