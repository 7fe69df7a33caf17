"""Tor flows on a private Tor network: first-byte latency vs direct, and
circuit reuse per isolation group — in one run.

Starts hush.daemon.torlab's private Tor network (3 authorities, one exit, on 127.0.0.1; ~15 s), an
origin, and hush with two apps whose policies send ``*.hushtest`` through
Tor (isolation: app) and allow 127.0.0.1 directly.  Then, alternating, N
requests each (fresh connections): direct, app A through Tor, app B through
Tor.  Prints first-byte latency p50/p99, the ratio Tor ÷ direct, and how many
distinct circuits each app's Tor flows used (from hush's audit).

Run:  .venv/bin/python bench/tor_flows.py [--requests 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import free_port, pct, start_hush, start_origin  # noqa: E402

from hush.daemon.torlab import ExitDNS, TorLab  # noqa: E402

NAME = "origin.hushtest"


async def first_byte(proxy: int, url: str) -> float:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    authority = url.split("/")[2]  # the Host names the URL's host: hush blocks a Host naming another
    writer.write(f"GET {url} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    first = await reader.read(1)
    elapsed = time.perf_counter() - start
    rest = await reader.read()
    writer.close()
    if not (first + rest).startswith(b"HTTP/1.1 200"):
        raise RuntimeError((first + rest)[:400])
    return elapsed


async def run(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hush-bench-tor-"))
    dns = ExitDNS({NAME: "127.0.0.1"})
    lab = TorLab(tmp / "lab", dns.port).start()
    origin, origin_port = start_origin()
    pa, pb = free_port(), free_port()
    (tmp / "policies").mkdir()
    for app, port in (("a", pa), ("b", pb)):
        (tmp / "policies" / f"{app}.yaml").write_text(
            f"app: {app}\nlisten: {port}\ndefault: block\nrules:\n"
            "  - {match: {host: '*.hushtest'}, action: tor}\n  - {match: {host: 127.0.0.1}, action: allow}\n")
    torrc = "\n".join(f"    - {json.dumps(line)}" for line in lab.client_torrc())
    (tmp / "hush").mkdir()
    hush = start_hush(tmp / "hush", tmp / "policies", pa, config=f"log_level: info\ntor:\n  torrc:\n{torrc}\n")
    log = tmp / "hush" / "hush.log"
    deadline = time.monotonic() + 90
    while "tor ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    direct_url = f"http://127.0.0.1:{origin_port}/x"
    tor_url = f"http://{NAME}:{origin_port}/x"
    samples = {"direct": [], "tor (app a)": [], "tor (app b)": []}
    try:
        await first_byte(pa, tor_url)  # warm: the first stream builds the circuit
        await first_byte(pb, tor_url)
        for _ in range(args.requests):
            samples["direct"].append(await first_byte(pa, direct_url))
            samples["tor (app a)"].append(await first_byte(pa, tor_url))
            samples["tor (app b)"].append(await first_byte(pb, tor_url))
        await asyncio.sleep(1)
    finally:
        hush.stop()
        origin.stop()
        lab.stop()
        dns.close()
    conn = sqlite3.connect(tmp / "hush" / "state" / "audit.db")
    circuits = dict(conn.execute("SELECT app, COUNT(DISTINCT tor_circuit) FROM records "
                                 "WHERE decision = 'tor' GROUP BY app").fetchall())
    flows = dict(conn.execute("SELECT app, COUNT(*) FROM records WHERE decision = 'tor' GROUP BY app").fetchall())
    base = pct(samples["direct"], 50)
    print(f"{'path':<13} {'first byte p50 ms':>18} {'p99 ms':>8} {'p50 ÷ direct':>13}")
    for name, values in samples.items():
        print(f"{name:<13} {pct(values, 50) * 1000:>18.2f} {pct(values, 99) * 1000:>8.2f} "
              f"{pct(values, 50) / base:>13.1f}")
    for app in ("a", "b"):
        print(f"app {app}: {flows.get(app, 0)} Tor flows on {circuits.get(app, 0)} circuit(s)")
    print(f"({args.requests} requests per path, fresh connections, alternating; private network on loopback)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
