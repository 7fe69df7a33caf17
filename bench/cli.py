"""How long the ``hush`` command takes to start, over the bare interpreter.

For each command, in one run: the median wall time of N runs (a fresh
interpreter each, as a user's shell starts it), the same for
``python -c pass`` (the baseline), the difference and the ratio, and whether
the command imported mitmproxy (``-X importtime``).  Commands that do not
proxy must start within 0.15 s of the baseline; only ``run``, ``demo`` and
``launch`` may import mitmproxy.

Commands run as an installed hush runs: with its bytecode written once
(a warm-up run of each, without ``PYTHONDONTWRITEBYTECODE``, which would make
every start compile hush's sources again; pip compiles the dependencies when
it installs them).  Commands and baseline alternate, round by round, so a
busy machine slows both alike.

The state dir is a temporary one with a small audit database and no daemon
(``status`` and ``tor status`` then answer "not running", as fast as they can).

Run:  .venv/bin/python bench/cli.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 0.15
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def commands(state: str) -> list[list[str]]:
    return [
        ["--help"],
        ["--version"],
        ["status", "--state-dir", state],
        ["tor", "status", "--state-dir", state],
        ["audit", "tail", "--state-dir", state, "--json"],
        ["audit", "summary", "--state-dir", state, "--table"],
        ["audit", "show", "1", "--state-dir", state],
        ["policy", "check", str(ROOT / "policies")],
        ["policy", "explain", "--app", "signal", "https://example.com/", "--policies", str(ROOT / "policies")],
    ]


def seed(state: Path) -> None:
    """An audit database with a few records, written by the store itself."""
    code = (
        "import sys, time; from pathlib import Path; from hush.daemon.audit.store import AuditWriter\n"
        "w = AuditWriter(Path(sys.argv[1]) / 'audit.db')\n"
        "for i in range(20): w.submit({'ts': time.time(), 'app': 'signal', 'decision': 'block', 'host': 'example.com',"
        " 'port': 443, 'method': 'GET', 'url': 'https://example.com/', 'ip_exposed': False})\n"
        "w.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, str(state)], check=True, capture_output=True)


def once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


def imports_mitmproxy(argv: list[str]) -> bool:
    out = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=ENV).stderr
    return any(line.rstrip().endswith(" mitmproxy") for line in out.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hush-bench-cli-") as tmp:
        seed(Path(tmp))
        baseline = [sys.executable, "-c", "pass"]
        argvs = [[sys.executable, "-m", "hush.daemon.cli", *cmd] for cmd in commands(tmp)]
        for argv in argvs:
            once(argv)  # writes the bytecode, as the first start after installing does
        times: dict[int, list[float]] = {i: [] for i in range(-1, len(argvs))}
        for _ in range(args.runs):
            times[-1].append(once(baseline))
            for i, argv in enumerate(argvs):
                times[i].append(once(argv))
        bare = statistics.median(times[-1])
        print(f"python -c pass: {bare * 1000:.0f} ms (median of {args.runs})")
        print(f"{'command':<30} {'median ms':>9} {'over bare':>9} {'ratio':>6} {'mitmproxy':>9}  within budget")
        for i, (cmd, argv) in enumerate(zip(commands(tmp), argvs, strict=True)):
            t = statistics.median(times[i])
            name = " ".join(c for c in cmd if not c.startswith(("/", "--state-dir", "--policies", "https:")))
            name = name if len(name) <= 30 else name[:29] + "…"
            over = t - bare
            print(f"{name:<30} {t * 1000:>9.0f} {over * 1000:>+9.0f} {t / bare:>6.1f} "
                  f"{'yes' if imports_mitmproxy(argv) else 'no':>9}  {'yes' if over <= BUDGET_S else 'NO'}")


if __name__ == "__main__":
    main()
