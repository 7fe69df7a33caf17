"""``hush launch`` against hush's SOCKS5 listener: connection set-up and request
latency of one client, in one run, alternating; and namespace set-up time.

Everything runs in a network namespace of the benchmark's own (the world of
tests/launch/world.py, so it needs root): a fast asyncio origin on 203.0.113.10
(an address on the world's ``lo``), hush (``hush run``) as nobody with one policy,
``bench``, that allows the origin and also listens for SOCKS5.  The same client
program makes --requests sequential requests, a fresh TCP connection each:

- launch: started with ``hush launch --app bench`` and no proxy setting; it
  connects to the origin (nftables redirects it to hush);
- socks5: started in the world as the same user, it speaks SOCKS5 to hush's
  listener (destination given as the address, or as the name: ``socks5h``).

Both are run with the origin's address (``ip``) and with its name (``name``: in
the launch the client resolves it through hush's DNS stub first, each request —
a fake address, decided on the name; over SOCKS5 hush resolves it).  ``setup``
is the time until the client may send its request (TCP connect; plus the SOCKS5
greeting and reply); ``request`` is from before connect to the whole response.
Rounds alternate which path goes first; the figures are medians over rounds of
each round's p50/p90.  Target (issue 12): launch adds ≤ 1 ms p50 over SOCKS5.

Namespace set-up: wall time from starting ``hush launch -- date +%s.%N`` to the
time ``date`` prints (its first instruction, give or take an exec), against the
same for ``unshare -rn date`` (a bare user + network namespace), for the venv's
``python -c pass`` (the interpreter start that ``hush launch`` pays anyway) and for
``python -c 'import hush.daemon.cli.main'`` (what the command line costs before it starts).

Run (as root):  .venv/bin/python bench/launch.py [--rounds 5] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from common import median, pct

from tests.launch.world import ALLOWED_IP, PYTHON, World, WorldHush, until

ORIGIN = r'''
import asyncio, sys
BODY = b"x" * 512
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 512\r\nContent-Type: text/plain\r\n\r\n" + BODY
async def handle(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESP)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]), backlog=1024)
    async with server:
        await server.serve_forever()
asyncio.run(main())
'''

CLIENT = r'''
import json, socket, struct, sys, time
mode, host, port, n, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
proxy = (sys.argv[6], int(sys.argv[7])) if mode == "socks5" else None
line = f"GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

def recv_exact(s, k):
    data = b""
    while len(data) < k:
        chunk = s.recv(k - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data

def one():
    start = time.perf_counter()
    if proxy:
        s = socket.create_connection(proxy)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"\x05\x01\x00")
        assert recv_exact(s, 2) == b"\x05\x00"
        try:
            dest = b"\x01" + socket.inet_aton(host)
        except OSError:
            dest = b"\x03" + bytes([len(host)]) + host.encode()
        s.sendall(b"\x05\x01\x00" + dest + struct.pack(">H", port))
        head = recv_exact(s, 4)
        assert head[1] == 0, head
        if head[3] == 1:
            recv_exact(s, 4 + 2)
        elif head[3] == 4:
            recv_exact(s, 16 + 2)
        else:
            recv_exact(s, recv_exact(s, 1)[0] + 2)
    else:
        s = socket.create_connection((host, port))  # a name: resolved now, through the stub
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    setup = time.perf_counter()
    s.sendall(line)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("short body")
        body += chunk
    end = time.perf_counter()
    s.close()
    return setup - start, end - start

for _ in range(warm):
    one()
print(json.dumps([one() for _ in range(n)]))
'''

POLICY = """\
app: bench
listen: {{port: {port}, mode: socks5, host: 127.0.0.1}}
default: block
rules:
  - {{match: {{host: {ip}}}, action: allow}}
  - {{match: {{host: allowed.test}}, action: allow}}
"""


def run_client(world: World, hush: WorldHush, path: str, target: str, origin_port: int, socks_port: int,
               n: int, warm: int) -> list[tuple[float, float]]:
    args = ["launch" if path == "launch" else "socks5", target, str(origin_port), str(n), str(warm)]
    if path == "launch":
        res = hush.launch("bench", PYTHON, "-c", CLIENT, *args, timeout=600)
    else:
        res = world.run([PYTHON, "-c", CLIENT, *args, "127.0.0.1", str(socks_port)], capture_output=True,
                        timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"{path} client failed ({res.returncode}): {res.stderr.decode()[-2000:]}")
    return json.loads(res.stdout)


def startup_ms(world: World, argv: list[str], hush_launch: WorldHush | None = None) -> float:
    """Milliseconds from starting ``argv … date +%s.%N`` in the world to the time date prints."""
    cmd = [*argv, "date", "+%s.%N"]
    start = time.time()
    res = hush_launch.launch("bench", "date", "+%s.%N") if hush_launch else world.run(cmd, capture_output=True)
    assert res.returncode == 0, res.stderr
    return (float(res.stdout.decode().strip()) - start) * 1000


def python_ms(world: World, imports: str = "") -> float:
    start = time.time()
    res = world.run([PYTHON, "-c", f"{imports}import time; print(repr(time.time()))"], capture_output=True)
    assert res.returncode == 0, res.stderr
    return (float(res.stdout.decode()) - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--startups", type=int, default=15, help="namespace set-up samples of each kind")
    args = parser.parse_args()

    world = World().start()
    try:
        origin_port = world.free_port(ALLOWED_IP)
        world.popen([PYTHON, "-c", ORIGIN, ALLOWED_IP, str(origin_port)], user=False)
        socks_port = world.free_port()
        hush = WorldHush(world, {"bench": POLICY.format(port=socks_port, ip=ALLOWED_IP)},
                         config="log_level: warning\n")
        until(lambda: hush.proc.poll() is not None or world.run(
            [PYTHON, "-c", f"import socket; socket.create_connection(('127.0.0.1', {socks_port}), 1)"],
            capture_output=True).returncode == 0, 60, "hush listening")
        assert hush.proc.poll() is None, hush.log

        variants = [("ip", ALLOWED_IP), ("name", "allowed.test")]
        results = {(path, v): {"setup50": [], "setup90": [], "req50": [], "req90": []}
                   for path in ("socks5", "launch") for v, _ in variants}
        for r in range(args.rounds):
            order = ("socks5", "launch") if r % 2 == 0 else ("launch", "socks5")
            for v, target in variants:
                for path in order:
                    samples = run_client(world, hush, path, target, origin_port, socks_port, args.requests,
                                         args.warmup)
                    setups = [s * 1000 for s, _ in samples]
                    reqs = [q * 1000 for _, q in samples]
                    res = results[(path, v)]
                    res["setup50"].append(pct(setups, 50))
                    res["setup90"].append(pct(setups, 90))
                    res["req50"].append(pct(reqs, 50))
                    res["req90"].append(pct(reqs, 90))

        launch_ms = [startup_ms(world, [], hush) for _ in range(args.startups)]
        unshare_ms = [startup_ms(world, ["unshare", "-rn"]) for _ in range(args.startups)]
        py_ms = [python_ms(world) for _ in range(args.startups)]
        cli_ms = [python_ms(world, "import hush.daemon.cli.main; ") for _ in range(args.startups)]
        hush.stop()
    finally:
        world.close()

    print(f"{'path':<14} {'setup p50':>10} {'setup p90':>10} {'request p50':>12} {'request p90':>12}   (ms)")
    med = {k: {m: median(v) for m, v in r.items()} for k, r in results.items()}
    for v, _ in variants:
        for path in ("socks5", "launch"):
            m = med[(path, v)]
            print(f"{path + ' (' + v + ')':<14} {m['setup50']:>10.3f} {m['setup90']:>10.3f} {m['req50']:>12.3f} "
                  f"{m['req90']:>12.3f}")
    for v, _ in variants:
        s, la = med[("socks5", v)], med[("launch", v)]
        print(f"launch − socks5 ({v}): request p50 {la['req50'] - s['req50']:+.3f} ms "
              f"(× {la['req50'] / s['req50']:.2f}), p90 {la['req90'] - s['req90']:+.3f} ms "
              f"(× {la['req90'] / s['req90']:.2f}); "
              f"setup p50 {la['setup50'] - s['setup50']:+.3f} ms")
    print(f"(medians over {args.rounds} alternating rounds of {args.requests} sequential requests, "
          f"a fresh connection each, after {args.warmup} warm-up requests; target: launch ≤ socks5 + 1 ms p50)")
    print(f"namespace set-up, start → the command's first instruction (median / min of {args.startups}):")
    for name, values in (("hush launch", launch_ms), ("unshare -rn", unshare_ms), ("python -c (venv)", py_ms),
                         ("import hush's cli", cli_ms)):
        print(f"  {name:<18} {statistics.median(values):8.1f} ms  {min(values):8.1f} ms")


if __name__ == "__main__":
    main()
