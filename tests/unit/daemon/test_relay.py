"""relay: a splice relay between two sockets — bytes exact both ways, half-close, counts, stop."""

import contextlib
import hashlib
import socket
import threading
import time

from hush.daemon.relay import Relay


def payload(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    return a, b


def read_all(sock: socket.socket, into: bytearray) -> None:
    while chunk := sock.recv(1 << 16):
        into += chunk


class Setup:
    """app ⇄ (client_side | relay | server_side) ⇄ site"""

    def __init__(self, up_head=b"", down_head=b""):
        self.app, self.client_side = tcp_pair()
        self.server_side, self.site = tcp_pair()
        self.ended = threading.Event()
        self.relay = Relay(self.client_side.fileno(), self.server_side.fileno(), up_head, down_head,
                           on_end=lambda r: self.ended.set()).start()

    def close(self):
        for s in (self.app, self.client_side, self.server_side, self.site):
            s.close()


def test_bytes_exact_both_ways_with_half_close_and_counts():
    up, down = payload(5_000_000, 1), payload(7_000_000, 2)
    s = Setup(up_head=b"HEAD-UP", down_head=b"HEAD-DOWN")
    try:
        at_site, at_app = bytearray(), bytearray()
        readers = [threading.Thread(target=read_all, args=(s.site, at_site)),
                   threading.Thread(target=read_all, args=(s.app, at_app))]
        for t in readers:
            t.start()
        s.app.sendall(up)
        s.app.shutdown(socket.SHUT_WR)  # the app is done sending; the site still answers
        time.sleep(0.2)
        s.site.sendall(down)  # after the app's half-close: still relayed
        s.site.shutdown(socket.SHUT_WR)
        for t in readers:
            t.join(10)
        assert s.ended.wait(10)
        assert bytes(at_site) == b"HEAD-UP" + up
        assert bytes(at_app) == b"HEAD-DOWN" + down
        assert (s.relay.bytes_up, s.relay.bytes_down) == (len(up) + 7, len(down) + 9)
        assert s.relay.error is None
    finally:
        s.close()


def test_stop_shuts_both_sides_at_once():
    s = Setup()
    try:
        s.app.sendall(b"before")
        got = b""
        while len(got) < 6:
            got += s.site.recv(100)
        s.relay.stop()  # returns with both sockets shut down
        assert s.ended.wait(5)
        s.app.settimeout(2)
        with contextlib.suppress(OSError):
            s.app.sendall(b"after" * 1000)
        s.site.settimeout(2)
        assert s.site.recv(100) == b""  # the site saw the close, and nothing after "before"
        assert s.relay.bytes_up == 6
    finally:
        s.close()


def test_a_reset_ends_the_relay_with_its_error():
    s = Setup()
    try:
        s.site.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.site.close()  # RST
        s.app.sendall(b"x" * 100_000)
        assert s.ended.wait(5)
    finally:
        s.close()


def test_tell_reaches_the_loop_and_is_silent_once_it_has_closed():
    import asyncio

    from hush.daemon.relay import tell

    loop = asyncio.new_event_loop()
    got = []
    tell(loop, got.append, 1)
    loop.run_until_complete(asyncio.sleep(0))
    assert got == [1]
    loop.close()
    tell(loop, got.append, 2)  # a relay ending after the daemon's loop closed: no exception in its thread
    assert got == [1]
