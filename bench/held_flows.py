"""Memory and latency of hush while it holds many delayed flows.

In one run, against one daemon:

1. baseline: latency of allowed flows (p50/p99 over --samples requests, each
   on a new connection) and the daemon's RSS, with nothing held;
2. hold 1,000 flows (``delay: 600s``), measure again;
3. hold 10,000 flows, measure again.

Prints RSS and the latency ratios ÷ baseline.  Targets (issue 4): RSS
≤ 200 MB with 10,000 held; p99 ratio ≤ 1.5 with 1,000 held.

Run:  .venv/bin/python bench/held_flows.py [--samples 400]
Loopback only: an origin (python -m http.server) and hush on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, latencies, pct, rss_mb  # noqa: E402


async def hold(proxy: int, url: str, n: int, keep: list) -> None:
    """Open n connections whose requests hush holds (kept open in ``keep``)."""
    async def open_one(i):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
        writer.write(f"GET {url}/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        keep.append(writer)

    for start in range(0, n, 500):
        await asyncio.gather(*(open_one(i) for i in range(start, min(n, start + 500))))


async def main_async(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hush-bench-held-"))
    (tmp / "www").mkdir()
    (tmp / "www" / "x").write_bytes(b"x" * 1024)
    origin_port, proxy = free_port(), free_port()
    origin = subprocess.Popen([sys.executable, "-m", "http.server", str(origin_port), "--bind", "127.0.0.1",
                               "--directory", str(tmp / "www")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp / "policies").mkdir()
    (tmp / "policies" / "b.yaml").write_text(
        f"app: b\nlisten: {proxy}\ndefault: allow\nrules:\n  - {{match: {{path: '/hold*'}}, action: delay, delay: 600s}}\n")
    (tmp / "config.yaml").write_text("timing:\n  max_held_per_app: 20000\n  max_held_total: 20000\n"
                                     "audit:\n  redaction: site\n")
    log = open(tmp / "hush.log", "wb")
    hush = subprocess.Popen([sys.executable, "-m", "hush.daemon.cli", "run", "--policies", str(tmp / "policies"),
                             "--state-dir", str(tmp / "state"), "--config", str(tmp / "config.yaml")],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            if b"hush is running" in (tmp / "hush.log").read_bytes():
                break
            time.sleep(0.05)
        allowed = f"http://127.0.0.1:{origin_port}/x"
        held_url = f"http://127.0.0.1:{origin_port}/hold"
        await latencies(proxy, allowed, True, 50, fresh=True)  # warm up
        rows = []
        keep: list = []
        base = await latencies(proxy, allowed, True, args.samples, fresh=True)
        rows.append((0, rss_mb(hush.pid), base))
        for target in (1000, 10000):
            await hold(proxy, held_url, target - len(keep), keep)
            await asyncio.sleep(1.0)
            lat = await latencies(proxy, allowed, True, args.samples, fresh=True)
            rows.append((target, rss_mb(hush.pid), lat))
        b50, b99 = pct(base, 50), pct(base, 99)
        print(f"{'held':>6} {'RSS MB':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50 ÷ base':>11} {'p99 ÷ base':>11}")
        for held, rss, lat in rows:
            p50, p99 = pct(lat, 50), pct(lat, 99)
            print(f"{held:>6} {rss:>8.1f} {p50 * 1000:>8.2f} {p99 * 1000:>8.2f} {p50 / b50:>11.2f} {p99 / b99:>11.2f}")
        print(f"(samples per row: {args.samples}; mean base {statistics.mean(base) * 1000:.2f} ms)")
        for w in keep:
            w.close()
    finally:
        hush.terminate()
        hush.wait(30)
        origin.terminate()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # 10k held sockets, both ends
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
