"""A keep-alive origin that counts TCP accepts and keeps every byte it received.

conftest's Origin answers ``Connection: close``; some attacks need a
connection that stays open after a first, allowed request.  This one answers
each request head (up to a blank line) with a short keep-alive 200 and
records the raw bytes of each connection, so a test can assert that a
request, or any part of it, never arrived.
"""

from __future__ import annotations

import socket
import threading


class RawOrigin:
    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.accepts: list[tuple] = []
        self.received: list[bytearray] = []  # per accepted connection
        self._sock = socket.create_server((host, 0))
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def data(self) -> bytes:
        return b"".join(bytes(r) for r in self.received)

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return
            self.accepts.append(addr)  # counted before any byte is read
            buf = bytearray()
            self.received.append(buf)
            threading.Thread(target=self._handle, args=(conn, buf), daemon=True).start()

    @staticmethod
    def _handle(conn: socket.socket, buf: bytearray) -> None:
        answered = 0
        with conn:
            conn.settimeout(30)
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                heads = bytes(buf).count(b"\r\n\r\n")
                while answered < heads:
                    answered += 1
                    try:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nContent-Type: text/plain\r\n\r\n"
                                     b"raw-ok-%d\n" % (answered % 10))
                    except OSError:
                        return

    def close(self) -> None:
        self._closed = True
        self._sock.close()
