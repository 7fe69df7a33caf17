"""Shared pieces of the benchmarks: a fast loopback origin, a load client,
and starting the contenders (hush, bare mitmdump, Privoxy)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ORIGIN = r'''
import asyncio, sys
BODY = b"x" * 512
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 512\r\nContent-Type: text/plain\r\n\r\n" + BODY
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(RESP)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()
asyncio.run(main())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


class Proc:
    def __init__(self, cmd: list[str], port: int | None = None, log: Path | None = None):
        if log:
            with open(log, "wb") as out:  # the child writes to its own copy of the descriptor
                self.p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        else:
            self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if port:
            wait_port(port)

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()


def start_origin() -> tuple[Proc, int]:
    port = free_port()
    return Proc([sys.executable, "-c", ORIGIN, str(port)], port), port


def start_hush(tmp: Path, policies: Path, port_hint: int | None = None, config: str = "") -> Proc:
    (tmp / "config.yaml").write_text(config or "log_level: warning\n")
    cmd = [sys.executable, "-m", "hush.daemon.cli", "run", "--policies", str(policies), "--state-dir",
           str(tmp / "state"), "--config", str(tmp / "config.yaml")]
    proc = Proc(cmd, None, tmp / "hush.log")
    if port_hint:
        wait_port(port_hint)
    return proc


def start_mitmdump(tmp: Path, *extra: str) -> tuple[Proc, int]:
    """mitmdump of the installed version, lazy like hush; ``extra``: more arguments (``-s script``)."""
    port = free_port()
    mitmdump = str(Path(sys.executable).parent / "mitmdump")
    cmd = [mitmdump, "-q", "--listen-host", "127.0.0.1", "-p", str(port), "--set", "connection_strategy=lazy",
           "--set", f"confdir={tmp / 'mitm-conf'}", *extra]
    return Proc(cmd, port, tmp / "mitmdump.log"), port


def start_privoxy(tmp: Path, actions: str = "{ -block }\n/\n") -> tuple[Proc, int]:
    binary = shutil.which("privoxy") or "/usr/sbin/privoxy"
    port = free_port()
    (tmp / "privoxy").mkdir(exist_ok=True)
    (tmp / "privoxy" / "hush-bench.action").write_text(actions)
    (tmp / "privoxy" / "config").write_text(
        f"confdir {tmp / 'privoxy'}\ntempldir /etc/privoxy/templates\nlisten-address 127.0.0.1:{port}\n"
        "actionsfile hush-bench.action\n"
        "toggle 1\nenable-remote-toggle 0\nenable-edit-actions 0\nkeep-alive-timeout 30\n"
        "max-client-connections 512\n")
    return Proc([binary, "--no-daemon", str(tmp / "privoxy" / "config")], port, tmp / "privoxy.log"), port


async def _request(reader, writer, line: bytes) -> None:
    writer.write(line)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for h in head.split(b"\r\n"):
        if h.lower().startswith(b"content-length:"):
            length = int(h.split(b":")[1])
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        raise RuntimeError(head[:60])
    await reader.readexactly(length)


def request_line(url: str, via_proxy: bool) -> bytes:
    if via_proxy:
        return f"GET {url} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    path = "/" + url.split("/", 3)[3]
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


async def throughput(port: int, url: str, via_proxy: bool, seconds: float, concurrency: int) -> float:
    """Requests/s over keep-alive connections, closed loop."""
    line = request_line(url, via_proxy)
    done = 0
    stop = time.perf_counter() + seconds

    async def worker():
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop:
            await _request(reader, writer, line)
            done += 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


async def latencies(port: int, url: str, via_proxy: bool, n: int, fresh: bool = False) -> list[float]:
    """Per-request latency, one at a time (a new connection each if ``fresh``)."""
    line = request_line(url, via_proxy)
    out = []
    reader = writer = None
    for _ in range(n):
        start = time.perf_counter()
        if fresh or reader is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _request(reader, writer, line)
        out.append(time.perf_counter() - start)
        if fresh:
            writer.close()
    if writer and not fresh:
        writer.close()
    return out


def median(values):
    return statistics.median(values)
