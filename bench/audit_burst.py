"""Audit writes under a burst, and what they cost the event loop.

In one process: an event loop with a 1 ms ticker that records how late each
tick runs (its longest stall), a producer submitting --records audit records
as flows would (a typical record, in slices of --slice per loop turn), and
the writer thread.  The baseline is the same loop and producer with the
records dropped instead of written, measured in the same run.

Targets (issue 7): ≥ 20,000 records/s; no event-loop stall over 5 ms.

Run:  .venv/bin/python bench/audit_burst.py [--records 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path

from hush.daemon.audit.store import AuditWriter, _row
from hush.daemon.run import SWITCH_INTERVAL

RECORD = {
    "ts": 0.0, "app": "signal", "listener": "regular@127.0.0.1:8102", "level": "request", "method": "GET",
    "scheme": "https", "host": "www.example.com", "port": 443, "site": "example.com",
    "url": "https://example.com/", "kind": "preview", "decision": "tor", "rule": "policies/signal.yaml:13",
    "policy_version": "1f0ad851cf8c", "status": 200, "ip_exposed": False,
    "carried": {"user_agent": "WhatsApp/2", "cookies": 2, "referer": None, "accept_language": "de",
                "range": None, "authorization": False},
    "sent": {"user_agent": "WhatsApp/2", "cookies": 2, "referer": None, "accept_language": "de",
             "range": None, "authorization": False},
    "bytes_up": 0, "bytes_down": 51234, "duration_ms": 812.5, "tor_isolation": "hush/signal",
}


async def run_once(n: int, slice_: int, sink) -> tuple[float, float, float]:
    """(records/s until all written, longest loop stall ms, p99 tick lateness ms)."""
    lateness: list[float] = []
    stop = False

    async def ticker():
        while not stop:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - t - 0.001)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    for i in range(0, n, slice_):
        for j in range(i, min(n, i + slice_)):
            sink.submit({**RECORD, "ts": start + j})
        await asyncio.sleep(0)
    while sink.pending or sink.written < n:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    stop = True
    await tick
    lateness.sort()
    return n / elapsed, lateness[-1] * 1000, lateness[int(len(lateness) * 0.99)] * 1000


class Drop:
    """The baseline sink: the same work on the loop (the record becomes a row),
    then nothing written — what remains is the writer thread's cost."""

    def __init__(self):
        self.written = 0
        self.pending = 0

    def submit(self, record):
        _row(record)
        self.written += 1


async def main_async(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hush-bench-audit-"))
    rows = []
    default = sys.getswitchinterval()
    for label, interval, freeze in (("python defaults", default, False), ("hush's settings", SWITCH_INTERVAL, True)):
        sys.setswitchinterval(interval)
        if freeze:
            gc.freeze()  # as the daemon does once its listeners are up
        base = await run_once(args.records, args.slice, Drop())
        writer = AuditWriter(tmp / f"audit-{interval}.db")
        real = await run_once(args.records, args.slice, writer)
        writer.close()
        rows += [(f"none, {label}", base), (f"sqlite, {label}", real)]
    print(f"{'sink':<34} {'records/s':>10} {'max stall ms':>13} {'p99 late ms':>12}")
    for name, r in rows:
        print(f"{name:<34} {r[0]:>10.0f} {r[1]:>13.2f} {r[2]:>12.2f}")
    print(f"({args.records} records submitted {args.slice} per loop turn; stall = how late a 1 ms timer ran; "
          f"hush's settings: GIL switch interval {SWITCH_INTERVAL * 1000:g} ms and gc.freeze() after start-up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--slice", type=int, default=10, help="records submitted per loop turn")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
