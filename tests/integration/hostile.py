"""What an adversarial app sends, byte for byte, and an origin on any loopback
address (IPv6 too) that counts what reaches it.

conftest's Origin listens on IPv4 only; the unspecified address ``::`` and
zone ids (``::1%1``) reach ``::1``, so those tests need an origin there.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time


class CountingOrigin:
    """Counts TCP accepts (before reading a byte) and keeps each connection's
    bytes; answers every request head with ``200`` and closes — or, with
    ``keep_alive``, keeps the connection for the next request."""

    def __init__(self, host: str = "127.0.0.1", keep_alive: bool = False):
        self.host = host
        self.keep_alive = keep_alive
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.accepts: list[tuple] = []
        self.received: list[bytearray] = []
        self._sock = socket.create_server((host, 0), family=family)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def data(self) -> bytes:
        return b"".join(bytes(r) for r in self.received)

    def _serve(self) -> None:
        while True:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return
            self.accepts.append(addr)
            buf = bytearray()
            self.received.append(buf)
            threading.Thread(target=self._handle, args=(conn, buf), daemon=True).start()

    def _handle(self, conn: socket.socket, buf: bytearray) -> None:
        close = b"keep-alive" if self.keep_alive else b"close"
        answered = 0
        with conn:
            conn.settimeout(30)
            try:
                while True:
                    while buf.count(b"\r\n\r\n") <= answered:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    answered += 1
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: " + close + b"\r\n\r\norigin\n")
                    if not self.keep_alive:
                        return
            except OSError:
                return

    def close(self) -> None:
        self._sock.close()


def wait_for(condition, timeout: float = 15.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def read_head(sock: socket.socket) -> bytes:
    """Bytes up to the end of a response head (or the connection's end)."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and a Content-Length body), nothing of the next."""
    data = read_head(sock)
    head, sep, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while sep and len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return head + sep + body


def exchange(port: int, *lines: str, host: str = "127.0.0.1") -> bytes:
    """Send request lines exactly as written; the answer's head."""
    with socket.create_connection((host, port), timeout=15) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return read_head(s)


def status(answer: bytes) -> int | None:
    """The status code of an answer's head, None if there was no HTTP answer."""
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and answer.startswith(b"HTTP/") and parts[1].isdigit() else None


def connect(port: int, target: str) -> tuple[socket.socket, bytes]:
    """A CONNECT to ``target`` (as written); the socket and the answer's head."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    return s, read_head(s)


def socks5(port: int, host: str, dport: int, domain: bool = True) -> socket.socket:
    """A SOCKS5 CONNECT to ``host`` — as a domain (ATYP 3, any bytes), or as
    an address (ATYP 1 or 4) — that the proxy said yes to."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    if domain:
        name = host.encode()
        target = b"\x03" + bytes([len(name)]) + name
    else:
        address = ipaddress.ip_address(host)
        target = (b"\x01" if address.version == 4 else b"\x04") + address.packed
    s.sendall(b"\x05\x01\x00" + target + dport.to_bytes(2, "big"))
    reply = s.recv(4)
    assert reply[:2] == b"\x05\x00", reply
    rest = {1: 4, 4: 16}.get(reply[3])
    if rest is None:
        rest = s.recv(1)[0]
    s.recv(rest + 2)
    return s


def socks5_reply(port: int, host: str, dport: int, domain: bool = True) -> int:
    """The reply code a SOCKS5 CONNECT to ``host`` gets (0: granted, 2: not allowed by ruleset…)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        if domain:
            target = b"\x03" + bytes([len(host.encode())]) + host.encode()
        else:
            address = ipaddress.ip_address(host)
            target = (b"\x01" if address.version == 4 else b"\x04") + address.packed
        s.sendall(b"\x05\x01\x00" + target + dport.to_bytes(2, "big"))
        reply = s.recv(10)
        assert reply[:1] == b"\x05", reply
        return reply[1]


def socks5_http(port: int, host: str, dport: int, *lines: str, domain: bool = True) -> bytes:
    """An HTTP request sent inside a SOCKS5 connection; the answer's head."""
    with socks5(port, host, dport, domain) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return read_head(s)


def policy(port: int, rules: str = "", default: str = "allow", mode: str = "http") -> str:
    return f"""\
        app: testapp
        listen: {{port: {port}, mode: {mode}}}
        default: {default}
        rules:
        {rules}
    """
