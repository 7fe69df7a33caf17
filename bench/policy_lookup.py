"""How policy size affects load time and per-request decision cost.

For 1k, 10k and 100k block-list domains, in three shapes (one rule per
domain; one rule listing them all; one rule reading a list file with
``hosts_from``), it measures, in one run:

- load: YAML text → PolicySet (``build``), seconds
- decide: ``PolicySet.decide`` for a listed host (hit) and an unlisted one
  (miss), microseconds per call
- baseline: a linear scan of the same domains (``host == d or
  host.endswith("." + d)``, what a naive matcher does), microseconds per
  call for the miss, and the ratio baseline ÷ hush

Run:  .venv/bin/python bench/policy_lookup.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hush.daemon.policy import RequestInfo, build


def domains(n: int) -> list[str]:
    return [f"ads{i}.tracker{i % 997}.example{i % 13}.com" for i in range(n)]


def policy_one_rule_per_domain(names: list[str]) -> str:
    rules = "".join(f"  - {{match: {{host: \"*.{d}\"}}, action: block}}\n" for d in names)
    return f"app: bench\nlisten: 8101\ndefault: allow\nrules:\n{rules}"


def policy_one_list(names: list[str]) -> str:
    hosts = "".join(f"        - \"*.{d}\"\n" for d in names)
    return f"app: bench\nlisten: 8101\ndefault: allow\nrules:\n  - match:\n      host:\n{hosts}    action: block\n"


def policy_list_file(names: list[str], directory: Path) -> str:
    (directory / "blocklist.txt").write_text("".join(f"0.0.0.0 {d}\n" for d in names))
    return "app: bench\nlisten: 8101\ndefault: allow\nrules:\n  - {match: {hosts_from: blocklist.txt}, action: block}\n"


def per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def run(n: int, shape: str, text: str, directory: Path) -> dict:
    start = time.perf_counter()
    ps = build([(str(directory / "bench.yaml"), text)])
    load_s = time.perf_counter() - start
    names = domains(n)
    hit = RequestInfo.from_url(f"https://cdn.{names[n // 2]}/x.js")
    miss = RequestInfo.from_url("https://www.unlisted-site.org/page")
    calls = 20000
    hit_us = per_call(lambda: ps.decide("bench", hit), calls)
    miss_us = per_call(lambda: ps.decide("bench", miss), calls)
    assert ps.decide("bench", hit).action.name == "block"
    assert ps.decide("bench", miss).action.name == "allow"
    host = miss.host
    base_calls = max(5, 5_000_000 // n)
    base_us = per_call(lambda: any(host == d or host.endswith("." + d) for d in names), base_calls)
    return {"n": n, "shape": shape, "load_s": load_s, "hit_us": hit_us, "miss_us": miss_us,
            "baseline_us": base_us, "ratio": base_us / miss_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    print(f"{'domains':>8} {'shape':<14} {'load s':>8} {'hit µs':>8} {'miss µs':>8} "
          f"{'scan µs':>10} {'scan ÷ hush':>12}")
    directory = Path(tempfile.mkdtemp(prefix="hush-bench-"))
    for n in (int(s) for s in args.sizes.split(",")):
        names = domains(n)
        for shape, text in (("rule/domain", policy_one_rule_per_domain(names)),
                            ("one list", policy_one_list(names)),
                            ("hosts_from", policy_list_file(names, directory))):
            r = run(n, shape, text, directory)
            print(f"{r['n']:>8} {r['shape']:<14} {r['load_s']:>8.3f} {r['hit_us']:>8.2f} {r['miss_us']:>8.2f} "
                  f"{r['baseline_us']:>10.1f} {r['ratio']:>12.0f}")


if __name__ == "__main__":
    main()
