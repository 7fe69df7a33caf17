"""What the tests that run real processes share (their fixtures are in tests/conftest.py):
an origin that counts what reaches it, the daemon as a subprocess, curl, and
waiting for what a test waits for.

The origin records every TCP accept (before any TLS or HTTP is read) with the
peer address, and every request with its headers, so tests assert on what
the far side saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .procnet import owner_pid

NAME = "origin.hushtest"  # known only to the private Tor network's exit DNS server

ORIGIN_NAMES = ["localhost", "127.0.0.1", "127.0.0.2", "127.0.0.3", "origin.hushtest", "*.hushtest"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def payload(n: int) -> bytes:
    """n deterministic bytes, all 256 values, for byte-for-byte checks."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:n])


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    peer: tuple


class Origin:
    """An HTTP(S) server on one address that records what reaches it: every TCP
    accept (before a byte is read) with the process owning the peer socket, and
    every request.  ``/slow/SECONDS`` answers late, ``/bytes/N`` with N bytes,
``/keep/…`` keeps the connection open (every other answer closes it),
    ``*.html`` with a page naming the origin, anything else with a line of text.

    ``bind(server_class, address, handler)`` makes the server (the launch tests'
    world makes it inside its network namespace); ``owner(peer, local)`` finds
    the peer's process (there, in the world's /proc)."""

    def __init__(self, host: str, tls: ssl.SSLContext | None = None, port: int = 0,
                 bind: Callable | None = None, owner: Callable[[tuple, tuple], int | None] | None = None):
        self.host = host
        self.accepts: list[tuple] = []
        self.owners: list[int | None] = []  # pid owning the peer socket, per accept
        self.requests: list[Seen] = []
        origin = self
        owner = owner or owner_pid

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                origin.requests.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                            self.client_address))
                kind = "application/octet-stream"
                if self.path.startswith("/slow/"):  # /slow/SECONDS: answer late
                    time.sleep(float(self.path.split("/")[2]))
                if self.path.startswith("/bytes/"):
                    body = payload(int(self.path.split("/")[2]))
                elif self.path.endswith(".html"):
                    body = (f"<!doctype html><html><head><title>t</title></head><body>"
                            f"<p id=o>origin {origin.host} {self.path}</p></body></html>").encode()
                    kind = "text/html"
                else:
                    body = f"origin {origin.host} {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                if not self.path.startswith("/keep/"):  # /keep/…: the connection stays open
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_HEAD = do_GET

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def server_bind(self):
                socketserver.TCPServer.server_bind(self)  # no getfqdn(): the harness asks no DNS
                self.server_name, self.server_port = host, self.server_address[1]

            def get_request(self):
                sock, addr = super().get_request()
                origin.accepts.append(addr)  # counted before any byte is read
                origin.owners.append(owner(addr, sock.getsockname()))
                if tls is not None:
                    sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return sock, addr

            def handle_error(self, request, client_address):
                pass

        self.server = (bind or (lambda cls, *args: cls(*args)))(Server, (host, port), Handler)
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/", host: str | None = None) -> str:
        host = host or self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Hush:
    """``hush run`` as a subprocess, with its own state dir and policies."""

    def __init__(self, tmp: Path, policies: dict[str, str], config: str | None = None, args=(), env=None,
                 state: Path | None = None):
        self.dir = tmp
        self.state = state or tmp / "state"
        self.policies = tmp / "policies"
        self.policies.mkdir(exist_ok=True)
        for name, text in policies.items():
            (self.policies / f"{name}.yaml").write_text(textwrap.dedent(text))
        self.log_path = tmp / "hush.log"
        cmd = [sys.executable, "-m", "hush.daemon.cli", "run", "--policies", str(self.policies),
               "--state-dir", str(self.state), *args]
        if config is not None:
            (tmp / "config.yaml").write_text(textwrap.dedent(config))
            cmd += ["--config", str(tmp / "config.yaml")]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.log_path, "wb") as log:  # the daemon writes to its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> Hush:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "hush is running" in self.log:
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"hush exited with {self.proc.returncode}:\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"hush not ready after {timeout}s:\n{self.log}")

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit()

    @property
    def ca_cert(self) -> Path:
        return self.state / "ca" / "mitmproxy-ca-cert.pem"

    def status(self) -> dict:
        """What ``hush status --json`` says about this daemon (its control socket)."""
        out = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "status", "--state-dir", str(self.state),
                              "--json"], capture_output=True, timeout=30)
        return json.loads(out.stdout)

    def held(self) -> int:
        """How many flows ``hush status`` says are held (delay, debounce) now."""
        return self.status()["held"]

    def audit(self) -> list[dict]:
        """Every audit row (call after stop(): SIGTERM writes everything)."""
        import sqlite3

        conn = sqlite3.connect(self.state / "audit.db")
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM records ORDER BY id")]
        conn.close()
        return rows


CURL = shutil.which("curl")


def curl(*args, timeout=20, binary=None) -> subprocess.CompletedProcess:
    """curl (or ``binary``, a curl under another name) with its output in ``.stdout`` (bytes)."""
    assert CURL, "curl is not installed (.ci/run installs it)"
    return subprocess.run([binary or CURL, "-sS", "--max-time", "15", "--noproxy", "", *args],
                          capture_output=True, timeout=timeout, env={"PATH": os.environ.get("PATH", "")})


def wait_for[T](what: Callable[[], T], timeout: float = 30, interval: float = 0.05, message: str = "") -> T:
    """Poll ``what()`` until it returns something true, and return that; fail
    after ``timeout`` seconds (generous: it bounds a hang, it does not time anything)."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {message or what}: last {got!r}")
        time.sleep(interval)


# -- the private Tor network (hush.daemon.torlab) ---------------------------------------------

def tor_config(lab, extra=""):
    lines = "\n".join(f"    - {json.dumps(line)}" for line in lab.client_torrc())
    return f"tor:\n  torrc:\n{lines}\n{extra}"


def wait_tor_ready(h, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "tor ready" in h.log:
            return
        assert h.proc.poll() is None, h.log
        time.sleep(0.1)
    raise AssertionError(f"hush's tor not ready after {timeout}s:\n{h.log}")


