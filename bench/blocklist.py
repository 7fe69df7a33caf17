"""A 100k-domain block list: hush vs Privoxy, in one run.

The same N domains become a hush policy (``hosts_from`` list file) and a
Privoxy action file (``{ +block }`` with ``.domain`` patterns: the domain and
its subdomains, as in hush).  For each: load time (start until the listener
accepts), memory (RSS after loading), and the latency of blocked requests
(plain HTTP to listed hosts, one at a time on fresh connections, so no
request ever leaves either proxy) and of allowed ones.  Target (issue 7):
hush faster than Privoxy per blocked request.

Run:  .venv/bin/python bench/blocklist.py [--domains 100000] [--samples 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, latencies, pct, rss_mb, start_hush, start_origin, start_privoxy, wait_port
from policy_lookup import domains


async def blocked_latency(port: int, hosts: list[str], n: int) -> list[float]:
    out = []
    for i in range(n):
        host = hosts[(i * 7919) % len(hosts)]
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET http://cdn.{host}/ad.js HTTP/1.1\r\nHost: cdn.{host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        if b" 403 " not in data.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"not blocked: {data[:80]!r}")
        out.append(time.perf_counter() - start)
    return out


def timed_start(start, port: int):
    t = time.perf_counter()
    proc = start()
    wait_port(port, timeout=600)
    return proc, time.perf_counter() - t


async def run(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hush-bench-bl-"))
    names = domains(args.domains)
    origin, origin_port = start_origin()
    allowed = f"http://127.0.0.1:{origin_port}/x"

    (tmp / "policies").mkdir()
    (tmp / "policies" / "blocklist.txt").write_text("".join(f"{d}\n" for d in names))
    hush_port = free_port()
    (tmp / "policies" / "b.yaml").write_text(
        f"app: b\nlisten: {hush_port}\ndefault: allow\n"
        "rules:\n  - {match: {hosts_from: blocklist.txt}, action: block}\n")
    (tmp / "hush").mkdir()
    hush, hush_load = timed_start(lambda: start_hush(tmp / "hush", tmp / "policies"), hush_port)

    actions = "{ +block{hush bench} }\n" + "".join(f".{d}\n" for d in names)
    privoxy_port_box = []

    def privoxy_start():
        proc, port = start_privoxy(tmp, actions)
        privoxy_port_box.append(port)
        return proc

    t = time.perf_counter()
    privoxy = privoxy_start()
    privoxy_port = privoxy_port_box[0]
    # Privoxy reads action files when the first request comes: time that one too
    await blocked_latency(privoxy_port, names, 1)
    privoxy_load = time.perf_counter() - t
    await blocked_latency(hush_port, names, 1)

    results = {}
    try:
        for name, port, proc, load in (("hush", hush_port, hush, hush_load),
                                       ("privoxy", privoxy_port, privoxy, privoxy_load)):
            blocked = await blocked_latency(port, names, args.samples)
            ok = await latencies(port, allowed, True, args.samples // 3, fresh=True)
            results[name] = (load, rss_mb(proc.pid), blocked, ok)
    finally:
        for p in (hush, privoxy, origin):
            p.stop()
    print(f"{args.domains} domains")
    print(f"{'proxy':<9} {'load s':>7} {'RSS MB':>7} {'blocked p50 ms':>15} {'p99':>7} {'allowed p50 ms':>15}")
    for name, (load, rss, blocked, ok) in results.items():
        print(f"{name:<9} {load:>7.2f} {rss:>7.1f} {pct(blocked, 50) * 1000:>15.2f} {pct(blocked, 99) * 1000:>7.2f} "
              f"{pct(ok, 50) * 1000:>15.2f}")
    h, p = results["hush"], results["privoxy"]
    print(f"blocked p50 ratio hush ÷ privoxy: {pct(h[2], 50) / pct(p[2], 50):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=300)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
