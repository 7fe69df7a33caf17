"""Origins that keep connections open, and the audit read while hush runs
(tests/integration/test_adversarial_audit.py, test_adversarial_reload.py)."""

from __future__ import annotations

import socket
import sqlite3
import ssl
import threading

from .procnet import owner_pid


class EchoOrigin:
    """Keeps every connection open and answers each chunk with ``echo:`` + the
    chunk; counts accepts and the bytes each connection sent.  With ``tls``
    it is the app's TLS peer (hush relays the TLS untouched)."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.accepts: list[tuple] = []
        self.received = bytearray()
        self.sent_back = 0
        self.closed = 0
        self._tls = tls
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
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn):
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            with conn:
                while chunk := conn.recv(65536):
                    self.received += chunk
                    conn.sendall(b"echo:" + chunk)
                    self.sent_back += 5 + len(chunk)
        except OSError:
            pass
        self.closed += 1  # the far side closed (or reset) this connection

    def close(self):
        self._sock.close()


class KeepAliveOrigin:
    """HTTP/1.1 that keeps connections alive (no ``Connection: close``), and
    records, per request, the path and the pid owning the peer's socket:
    hush's for a direct connection, the exit relay's through Tor."""

    def __init__(self):
        self.accepts: list[tuple] = []
        self.seen: list[tuple[str, int | None]] = []
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
            owner = owner_pid(addr, conn.getsockname())
            threading.Thread(target=self._handle, args=(conn, owner), daemon=True).start()

    def _handle(self, conn, owner):
        buf = b""
        with conn:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    path = head.split(b" ")[1].decode()
                    self.seen.append((path, owner))
                    body = f"origin {path}\n".encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                return

    def url(self, path, host="127.0.0.1"):
        return f"http://{host}:{self.port}{path}"

    def close(self):
        self._sock.close()


def live_rows(h) -> list[dict]:
    """The audit as a reader sees it while hush runs (or after it was killed)."""
    path = h.state / "audit.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM records ORDER BY id")]
    except sqlite3.OperationalError:  # the table is not there yet
        return []
    finally:
        conn.close()


def tunnel_rows(h) -> list[dict]:
    return [r for r in live_rows(h) if r["method"] == "CONNECT"]


def recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


