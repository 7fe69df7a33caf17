"""Allowed flows: direct, bare mitmproxy, hush, Privoxy — in one run, alternating.

Contenders (all on 127.0.0.1, plain HTTP to a fast asyncio origin):

- direct: the client talks to the origin;
- mitmproxy: mitmdump of the same version, connection_strategy=lazy, no addons;
- hush: the shipped policies, through the Element listener (default allow; its
  preview_url rule makes hush decide every request);
- privoxy: Debian's privoxy with one allow rule (``{ -block } /``).

For each of --rounds rounds, each contender in turn: requests/s with
--concurrency keep-alive connections for --seconds, then latency of
--samples sequential requests on one keep-alive connection.  Medians over
rounds; ratios against bare mitmproxy.  Targets (issue 7): hush ≥ 0.90 ×
mitmproxy requests/s; ≤ 1 ms added p50.

Run:  .venv/bin/python bench/throughput.py [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import latencies, median, pct, start_hush, start_mitmdump, start_origin, start_privoxy, throughput

from hush.daemon import paths
from hush.daemon.cli.demo import rewrite_ports


async def run(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hush-bench-tp-"))
    origin, origin_port = start_origin()
    ports = rewrite_ports(paths.shipped_policies(), tmp / "policies")
    (tmp / "hush").mkdir()
    hush = start_hush(tmp / "hush", tmp / "policies", ports["element"],
                      config="log_level: warning\ntor:\n  mode: attach\n  control: 127.0.0.1:9\n")
    mitm, mitm_port = start_mitmdump(tmp)
    privoxy, privoxy_port = start_privoxy(tmp)
    url = f"http://127.0.0.1:{origin_port}/x"
    contenders = [("direct", origin_port, False), ("mitmproxy", mitm_port, True),
                  ("hush", ports["element"], True), ("privoxy", privoxy_port, True)]
    results = {name: {"rps": [], "p50": [], "p99": []} for name, _, _ in contenders}
    try:
        for _name, port, proxied in contenders:  # warm up
            await latencies(port, url, proxied, 50)
        for _ in range(args.rounds):
            for name, port, proxied in contenders:
                results[name]["rps"].append(await throughput(port, url, proxied, args.seconds, args.concurrency))
                lat = await latencies(port, url, proxied, args.samples)
                results[name]["p50"].append(pct(lat, 50) * 1000)
                results[name]["p99"].append(pct(lat, 99) * 1000)
    finally:
        for p in (hush, mitm, privoxy, origin):
            p.stop()
    base = {k: median(v) for k, v in results["mitmproxy"].items()}
    print(f"{'contender':<10} {'req/s':>8} {'÷ mitm':>7} {'p50 ms':>8} {'p99 ms':>8} {'p50 − mitm':>11}")
    for name, r in results.items():
        rps, p50, p99 = median(r["rps"]), median(r["p50"]), median(r["p99"])
        print(f"{name:<10} {rps:>8.0f} {rps / base['rps']:>7.2f} {p50:>8.2f} {p99:>8.2f} {p50 - base['p50']:>+11.2f}")
    print(f"(medians of {args.rounds} rounds; {args.concurrency} connections × {args.seconds:g}s for req/s; "
          f"{args.samples} sequential requests for latency)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=300)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
