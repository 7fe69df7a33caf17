"""Memory and latency of hush while it holds many delayed flows.

In one run, for each contender:

1. baseline: latency of allowed flows (p50/p99 over --samples requests, each
   on a new connection; the median of --rounds rounds) and the process's RSS, with nothing held;
2. hold 1,000 requests, measure again; 3. hold 10,000, measure again.

Contenders:

- hush: a policy holding ``/hold*`` with ``delay: 600s``;
- mitmproxy: mitmdump of the same version (``connection_strategy=lazy``)
  holding the same requests with its own ``flow.intercept()`` — the floor
  that any addon holding a request inside mitmproxy starts from.

Held requests are plain HTTP, or with ``--tls`` HTTPS that the proxy
intercepts (CONNECT, TLS with the proxy's certificate, then the GET) — what a
held link preview is in practice.  Prints RSS, KB per held flow (RSS above
the idle process ÷ flows held) and the latency ratios ÷ baseline; for hush
also the event loop's longest stall and full garbage collections from
``hush status --json``.  Targets (issue 4): RSS ≤ 200 MB with 10,000 held;
p99 ratio ≤ 1.5 with 1,000 held.

Run:  .venv/bin/python bench/held_flows.py [--samples 300] [--rounds 3] [--tls] [--only hush] [--steps 1000]
Loopback only: an asyncio origin and the proxies on 127.0.0.1; held requests
are never sent anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Proc, free_port, latencies, pct, rss_mb, start_hush, start_mitmdump, start_origin

INTERCEPT = """
def request(flow):
    if flow.request.path.startswith("/hold"):
        flow.intercept()
"""
STEPS = (1000, 10000)


async def open_held(proxy: int, n: int, start: int, keep: list, tls: bool) -> None:
    """Open n connections whose requests the proxy holds (kept open in ``keep``)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the proxy's own certificate

    async def one(i):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
        if tls:
            writer.write(b"CONNECT held.example:443 HTTP/1.1\r\nHost: held.example:443\r\n\r\n")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            await writer.start_tls(context, server_hostname="held.example")
            writer.write(f"GET /hold/{i} HTTP/1.1\r\nHost: held.example\r\n\r\n".encode())
        else:
            writer.write(f"GET http://held.example/hold/{i} HTTP/1.1\r\nHost: held.example\r\n\r\n".encode())
        await writer.drain()
        keep.append(writer)

    for first in range(start, start + n, 250):
        await asyncio.gather(*(one(i) for i in range(first, min(start + n, first + 250))))


def hush_status(state: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "status", "--json", "--state-dir", str(state)],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else {}


# hush as it was before issue 16: full collections walk every held flow (no freezing of their survivors)
GC_OFF = """
import sys
from hush.daemon import loopwatch
init = loopwatch.LoopWatch.__init__
loopwatch.LoopWatch.__init__ = lambda self, *a, **k: init(self, *a, **{**k, "freeze_survivors": False})
from hush.daemon.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def start_held_hush(tmp: Path, gc_off: bool = False) -> tuple[Proc, int, Path]:
    """hush with one app whose policy holds ``/hold*`` for 600 s, bounds raised above 10,000
    (``gc_off``: without loopwatch's freezing of what survives a full collection)."""
    port = free_port()
    (tmp / "policies").mkdir()
    (tmp / "policies" / "b.yaml").write_text(
        f"app: b\nlisten: {port}\ndefault: allow\n"
        "rules:\n  - {match: {path: '/hold*'}, action: delay, delay: 600s}\n")
    config = "log_level: warning\ntiming:\n  max_held_per_app: 20000\n  max_held_total: 20000\n"
    if not gc_off:
        return start_hush(tmp, tmp / "policies", port, config=config), port, tmp / "state"
    (tmp / "config.yaml").write_text(config)
    proc = Proc([sys.executable, "-c", GC_OFF, "run", "--policies", str(tmp / "policies"), "--state-dir",
                 str(tmp / "state"), "--config", str(tmp / "config.yaml")], port, tmp / "hush.log")
    return proc, port, tmp / "state"


def start_intercepting_mitmdump(tmp: Path) -> tuple[Proc, int]:
    """The floor: mitmdump holding the same requests with its own ``flow.intercept()``."""
    (tmp / "intercept.py").write_text(INTERCEPT)
    return start_mitmdump(tmp, "-s", str(tmp / "intercept.py"))


async def sample(port: int, allowed: str, args) -> tuple[float, float]:
    """p50 and p99 (s): the median over --rounds rounds of --samples requests, so that one
    burst of noise on a shared machine does not decide a row."""
    rounds = [await latencies(port, allowed, True, args.samples, fresh=True) for _ in range(args.rounds)]
    return statistics.median(pct(r, 50) for r in rounds), statistics.median(pct(r, 99) for r in rounds)


def _loop(state: Path | None, since: float) -> dict | None:
    """hush status's event loop, with ``window_ms``: the longest stall from ``since`` on (while
    this row's latencies were measured, every held flow in)."""
    loop = hush_status(state).get("loop") if state else None
    if loop:
        loop["window_ms"] = max((ms for second, ms in loop.get("recent_stalls_ms", []) if second >= int(since)),
                                default=0.0)
    return loop


async def measure(name: str, proc: Proc, port: int, allowed: str, args, state: Path | None) -> list[tuple]:
    await latencies(port, allowed, True, 50, fresh=True)  # warm up
    rows, keep = [], []
    idle = rss_mb(proc.pid)
    since = time.time()
    lat = await sample(port, allowed, args)
    rows.append((name, 0, idle, lat, _loop(state, since)))
    try:
        for target in args.steps:
            await open_held(port, target - len(keep), len(keep), keep, args.tls)
            await asyncio.sleep(1.0)
            since = time.time()
            lat = await sample(port, allowed, args)
            rows.append((name, target, rss_mb(proc.pid), lat, _loop(state, since)))
    finally:
        for w in keep:
            w.close()
    return rows


async def main_async(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hush-bench-held-"))
    origin, origin_port = start_origin()
    allowed = f"http://127.0.0.1:{origin_port}/x"
    rows = []
    try:
        for name, gc_off in (("hush", False), ("hush-gc-off", True)):
            if args.only == "hush-gc-off" and not gc_off:
                continue
            if gc_off and args.only != name and not (args.gc_off and args.only in (None, "hush")):
                continue
            if not gc_off and args.only not in (None, "hush"):
                continue
            (tmp / name).mkdir()
            hush, port, state = start_held_hush(tmp / name, gc_off)
            try:
                rows += await measure(name, hush, port, allowed, args, state)
            finally:
                hush.stop()
        if args.only in (None, "mitmproxy"):
            mitm, port = start_intercepting_mitmdump(tmp)
            try:
                rows += await measure("mitmproxy", mitm, port, allowed, args, None)
            finally:
                mitm.stop()
    finally:
        origin.stop()
    print(f"held requests: {'HTTPS, intercepted' if args.tls else 'plain HTTP'}; "
          f"median of {args.rounds} rounds of {args.samples} requests per row")
    print(f"{'proxy':<11} {'held':>6} {'RSS MB':>8} {'KB/held':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'p50÷base':>9} {'p99÷base':>9}  event loop (hush status)")
    base: dict[str, tuple] = {}
    for name, held, rss, (p50, p99), loop in rows:
        if held == 0:
            base[name] = (rss, p50, p99)
        idle, b50, b99 = base[name]
        per = f"{(rss - idle) * 1024 / held:.1f}" if held else "-"
        extra = (f"longest stall {loop['max_stall_ms']:.0f} ms (while measuring {loop['window_ms']:.0f} ms), "
                 f"{loop['gc_full']} full GCs, longest {loop['gc_full_max_ms']:.0f} ms") if loop else ""
        print(f"{name:<11} {held:>6} {rss:>8.1f} {per:>8} {p50 * 1000:>7.2f} {p99 * 1000:>7.2f} "
              f"{p50 / b50:>9.2f} {p99 / b99:>9.2f}  {extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="held requests are intercepted HTTPS")
    parser.add_argument("--only", choices=("hush", "hush-gc-off", "mitmproxy"))
    parser.add_argument("--gc-off", action="store_true",
                        help="also hush without freezing what survives a full collection (before issue 16)")
    parser.add_argument("--steps", type=lambda s: [int(n) for n in s.split(",")], default=list(STEPS),
                        help="held flows at each step, comma-separated (default 1000,10000)")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 10k held sockets, both ends
    start = time.monotonic()
    asyncio.run(main_async(args))
    print(f"({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
