"""Hostile request heads: what they cost the daemon, against a baseline in the same run.

For each configuration of hush (the default limits, then the largest the
config allows), with a loopback origin:

- baseline: 200 ordinary requests, one connection each; latency p50/max,
  the event loop's longest stall (``hush status --json``) and RSS;
- 100k header lines (~1.1 MB in one request, the attack of issue 11): how
  long until hush answers/closes, the worst latency an ordinary client saw
  meanwhile (a request every 20 ms), the loop's longest stall, RSS;
- one 200 MiB header, streamed: how much hush accepted before it closed,
  and its peak RSS (VmHWM) above the baseline.

Then, in this process, the header join ``request_info`` used before (a
lookup per distinct name: quadratic) against the one it uses now.

Run:  .venv/bin/python bench/headers_dos.py
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import free_port, pct, rss_mb, start_hush, start_origin, wait_port


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def status(state: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "status", "--json", "--state-dir", str(state)],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def one_request(port: int, origin: int) -> float:
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        s.sendall(f"GET http://127.0.0.1:{origin}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + 512:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return (time.perf_counter() - t) * 1000


def hostile_lines(port: int, origin: int, n: int = 100_000, value: bytes = b"v") -> tuple[float, bytes]:
    head = [f"GET http://127.0.0.1:{origin}/hostile HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    head += [b"X-H%d: %s" % (i, value) for i in range(n)]
    data = b"\r\n".join(head) + b"\r\n\r\n"
    t = time.perf_counter()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=900) as s:
        try:
            s.sendall(data)
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
    return (time.perf_counter() - t) * 1000, answer[:12]


def huge_header(port: int, origin: int, total: int = 200 * 1024 * 1024) -> int:
    sent = 0
    block = b"a" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"GET http://127.0.0.1:{origin}/huge HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ".encode())
        try:
            while sent < total:
                s.sendall(block)
                sent += len(block)
            s.sendall(b"\r\n\r\n")
            while s.recv(65536):
                pass
        except OSError:
            pass
    return sent


def scenario(label: str, config: str, origin: int, at_bound: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        (tmp / "policies").mkdir()
        (tmp / "policies" / "b.yaml").write_text(f"app: bench\nlisten: {port}\ndefault: allow\n")
        hush = start_hush(tmp, tmp / "policies", port, config=f"log_level: error\n{config}")
        try:
            wait_port(port)
            for _ in range(20):
                one_request(port, origin)  # warm up
            base = [one_request(port, origin) for _ in range(200)]
            base_rss, base_stall = rss_mb(hush.pid), status(tmp / "state").get("loop", {}).get("max_stall_ms")
            print(f"{label:<22} baseline        p50 {statistics.median(base):7.2f} ms  max {max(base):8.2f} ms  "
                  f"loop stall {base_stall} ms  RSS {base_rss:6.1f} MB")

            probes: list[float] = []
            done = threading.Event()

            def probe():
                while not done.is_set():
                    probes.append(one_request(port, origin))
                    time.sleep(0.02)

            t = threading.Thread(target=probe)
            t.start()
            took, answer = hostile_lines(port, origin)
            done.set()
            t.join()
            stall = status(tmp / "state").get("loop", {}).get("max_stall_ms")
            print(f"{label:<22} 100k lines      answered {answer.decode(errors='replace')!r:>14} after {took:9.1f} ms; "
                  f"others meanwhile p50 {statistics.median(probes):.2f} ms max {max(probes):.2f} ms "
                  f"(p99 {pct(probes, 99):.2f}); loop stall {stall} ms  RSS {rss_mb(hush.pid):6.1f} MB")

            took, answer = hostile_lines(port, origin, at_bound - 2, b"v" * 60)  # with Host and Connection
            stall = status(tmp / "state").get("loop", {}).get("max_stall_ms")
            print(f"{label:<22} {at_bound} fields    (at the bound, ~{at_bound * 70 // 1024} KiB) answered "
                  f"{answer.decode(errors='replace')!r} after {took:.1f} ms; loop stall {stall} ms  "
                  f"RSS {rss_mb(hush.pid):6.1f} MB")

            sent = huge_header(port, origin)
            print(f"{label:<22} 200 MiB header  accepted {sent / 1024 / 1024:8.2f} MiB before the close; "
                  f"peak RSS {hwm_mb(hush.pid):6.1f} MB (+{hwm_mb(hush.pid) - base_rss:.1f} over the baseline)")
        finally:
            hush.stop()


def join_cost() -> None:
    from mitmproxy import http

    from hush.addons.flowinfo import joined_headers

    joined_headers(http.Headers([(b"X-H%d" % i, b"v") for i in range(1000)]))  # warm up
    print("\nrequest_info's header join, in this process (distinct header names):")
    for n in (1_000, 10_000, 100_000):
        headers = http.Headers([(b"X-H%d" % i, b"v") for i in range(n)])
        t = time.perf_counter()
        joined_headers(headers)
        now = (time.perf_counter() - t) * 1000
        before = "skipped (minutes)"
        if n <= 10_000:
            t = time.perf_counter()
            {name.lower(): ", ".join(headers.get_all(name)) for name in headers}  # the join used before
            before = f"{(time.perf_counter() - t) * 1000:10.1f} ms"
        print(f"  {n:>7} headers: now {now:8.2f} ms   before {before}")


def main() -> None:
    origin_proc, origin = start_origin()
    try:
        scenario("default limits", "", origin, 100)
        scenario("largest limits", "limits: {max_headers: 10000, max_header_bytes: 1MiB}\n", origin, 10_000)
    finally:
        origin_proc.stop()
    join_cost()


if __name__ == "__main__":
    main()
