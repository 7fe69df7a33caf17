"""Connection-level tunnels: direct, Privoxy, bare mitmproxy and hush — in one run, alternating.

What a tunnel decided at connection level costs (issue 16): the app's first
bytes are a real TLS ClientHello (made by Python's ``ssl``, no SNI: the target
is an address), after which the origin answers with raw bytes — mitmproxy,
hush and Privoxy relay the tunnel untouched, so no contender decrypts
anything and the figures are the relay's alone.

Contenders (all on 127.0.0.1):

- direct: the client talks to the origin;
- privoxy: Debian's privoxy, CONNECT, one allow rule (``{ -block } /``);
- mitmproxy: mitmdump of the same version, ``connection_strategy=lazy``,
  ``ignore_hosts`` matching everything (every CONNECT relayed untouched);
- hush-connect: hush, an HTTP listener whose policy is ``default: passthrough``;
- hush-socks5: hush, a SOCKS5 listener with the same policy;
- with --no-splice, also hush-connect/mitm and hush-socks5/mitm: a second hush
  as it was before issue 16, every connection set up and relayed by mitmproxy
  (``daemon/frontdoor.py``'s ``ENABLED`` and ``addons/tunnel.py``'s ``SPLICE``
  off).

For each of --rounds rounds, each contender in turn: a bulk download of
--bulk-mb MB through a fresh tunnel (MB/s, and the CPU seconds the proxy's
process spent per GB relayed: user + system, all its threads), then
--samples fresh connections, one at a time (connect, proxy handshake,
ClientHello, the origin's first byte: p50/p90).

Then intercepted flows (every request decided on its own: hush's ``default:
allow`` with a rule on the path, against mitmdump without ``ignore_hosts``):
requests/s with --concurrency keep-alive connections for --seconds, alternating
for the same rounds.

Medians over rounds; ratios against Privoxy and bare mitmproxy.  Targets
(issue 16): hush's new-connection p50 ≤ Privoxy's + 0.5 ms; bulk ≥ Privoxy's;
intercepted requests/s ≥ 0.90 × bare mitmproxy's.

Run:  .venv/bin/python bench/tunnels.py [--rounds 3] [--bulk-mb 200] [--samples 40] [--no-splice]
Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import contextlib

from common import Proc, free_port, median, pct, start_hush, start_mitmdump, start_origin, start_privoxy, throughput

# Two listeners: LATENCY answers one byte to a ClientHello; BULK answers N bytes and half-closes.
TUNNEL_ORIGIN = r'''
import socket, sys, threading
def hello(conn):
    head = b""
    while len(head) < 5:
        chunk = conn.recv(5 - len(head))
        if not chunk:
            return False
        head += chunk
    need = int.from_bytes(head[3:5], "big")
    while need:
        chunk = conn.recv(min(need, 65536))
        if not chunk:
            return False
        need -= len(chunk)
    return True
def drain(conn):
    while conn.recv(65536):
        pass
def latency(conn):
    with conn:
        if hello(conn):
            conn.sendall(b"x")
            drain(conn)
BLOCK = memoryview(b"y" * (1 << 20))
def bulk(conn, n):
    with conn:
        if hello(conn):
            while n:
                k = min(n, len(BLOCK))
                conn.sendall(BLOCK[:k])
                n -= k
            conn.shutdown(socket.SHUT_WR)
            drain(conn)
def serve(sock, target, *args):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=target, args=(conn, *args), daemon=True).start()
lat, blk = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=512), \
    socket.create_server(("127.0.0.1", int(sys.argv[2])), backlog=64)
threading.Thread(target=serve, args=(blk, bulk, int(sys.argv[3])), daemon=True).start()
serve(lat, latency)
'''

POLICIES = {
    "tunnel.yaml": "app: tunnel\nlisten: {port: %(connect)d}\ndefault: passthrough\n",
    "tunnels.yaml": "app: tunnels\nlisten: {port: %(socks)d, mode: socks5}\ndefault: passthrough\n",
    # every request decided on its own (the path rule needs the request)
    "web.yaml": "app: web\nlisten: {port: %(web)d}\ndefault: allow\n"
                "rules:\n  - {match: {path: '/never*'}, action: block}\n",
}


def _hello_bytes() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    tls = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


HELLO = _hello_bytes()


def _read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"proxy closed: {head[:60]!r}")
        head += chunk
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        raise RuntimeError(head[:60])
    return head


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("closed")
        data += chunk
    return data


def open_tunnel(kind: str, proxy: int, port: int) -> socket.socket:
    """A connection to 127.0.0.1:port: direct, through an HTTP proxy's CONNECT, or SOCKS5."""
    sock = socket.create_connection(("127.0.0.1", proxy if kind != "direct" else port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind == "connect":
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        _read_head(sock)
    elif kind == "socks5":
        sock.sendall(b"\x05\x01\x00")
        if _exactly(sock, 2) != b"\x05\x00":
            raise RuntimeError("SOCKS5 greeting refused")
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big"))
        reply = _exactly(sock, 10)
        if reply[1] != 0:
            raise RuntimeError(f"SOCKS5 refused: {reply[1]}")
    sock.sendall(HELLO)
    return sock


def new_connection(kind: str, proxy: int, port: int) -> float:
    start = time.perf_counter()
    sock = open_tunnel(kind, proxy, port)
    try:
        _exactly(sock, 1)
        return time.perf_counter() - start
    finally:
        sock.close()


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bulk(kind: str, proxy: int, port: int, size: int, pid: int | None) -> tuple[float, float]:
    """(MB/s, the proxy's CPU seconds per GB) for one download of ``size`` bytes."""
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    sock = open_tunnel(kind, proxy, port)
    got = 0
    buf = bytearray(1 << 20)
    try:
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            got += n
    finally:
        sock.close()
    took = time.perf_counter() - start
    if got != size:
        raise RuntimeError(f"{kind} via {proxy}: {got} bytes, not {size}")
    return size / took / 1e6, (cpu_seconds(pid) - cpu) / (size / 1e9)


def start_tunnel_origin(size: int) -> tuple[Proc, int, int]:
    lat, blk = free_port(), free_port()
    proc = Proc([sys.executable, "-c", TUNNEL_ORIGIN, str(lat), str(blk), str(size)], lat)
    return proc, lat, blk


# hush as it was before issue 16: every connection set up and relayed by mitmproxy (no front door,
# no splice relay)
NO_SPLICE = """
import sys
from hush.addons import tunnel
from hush.daemon import frontdoor
tunnel.SPLICE = False
frontdoor.ENABLED = False
from hush.daemon.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def start_tunnel_hush(tmp: Path, splice: bool = True) -> tuple[Proc, dict[str, int]]:
    ports = {"connect": free_port(), "socks": free_port(), "web": free_port()}
    (tmp / "policies").mkdir(parents=True)
    for name, text in POLICIES.items():
        (tmp / "policies" / name).write_text(text % ports)
    if splice:
        return start_hush(tmp, tmp / "policies", ports["web"]), ports
    (tmp / "config.yaml").write_text("log_level: warning\n")
    proc = Proc([sys.executable, "-c", NO_SPLICE, "run", "--policies", str(tmp / "policies"), "--state-dir",
                 str(tmp / "state"), "--config", str(tmp / "config.yaml")], ports["web"], tmp / "hush.log")
    return proc, ports


def load_note() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


async def run(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hush-bench-tunnels-"))
    size = args.bulk_mb * 1_000_000
    origin, lat_port, bulk_port = start_tunnel_origin(size)
    http_origin, http_port = start_origin()
    hush, ports = start_tunnel_hush(tmp / "hush")
    (tmp / "m1").mkdir()
    (tmp / "m2").mkdir()
    mitm, mitm_port = start_mitmdump(tmp / "m1", "--set", "ignore_hosts=.*")
    mitm_http, mitm_http_port = start_mitmdump(tmp / "m2")
    privoxy, privoxy_port = start_privoxy(tmp)
    extra = []
    if args.no_splice:
        plain, plain_ports = start_tunnel_hush(tmp / "hush-no-splice", splice=False)
        extra = [("hush-connect/mitm", "connect", plain_ports["connect"], plain.pid),
                 ("hush-socks5/mitm", "socks5", plain_ports["socks"], plain.pid)]
    contenders = [("direct", "direct", 0, None), ("privoxy", "connect", privoxy_port, privoxy.pid),
                  ("mitmproxy", "connect", mitm_port, mitm.pid),
                  ("hush-connect", "connect", ports["connect"], hush.pid),
                  ("hush-socks5", "socks5", ports["socks"], hush.pid), *extra]
    res: dict[str, dict[str, list[float]]] = {c[0]: {"mbs": [], "cpu": [], "p50": [], "p90": []} for c in contenders}
    url = f"http://127.0.0.1:{http_port}/x"
    inter = {"mitmproxy": (mitm_http_port, []), "hush": (ports["web"], [])}
    loads = [load_note()]
    try:
        for _name, kind, proxy, _pid in contenders:  # warm up (imports, first-connection paths)
            for _ in range(5):
                new_connection(kind, proxy, lat_port)
        for port, _ in inter.values():
            await throughput(port, url, True, 0.5, 2)
        for _ in range(args.rounds):
            for name, kind, proxy, pid in contenders:
                mbs, cpu = bulk(kind, proxy, bulk_port, size, pid)
                res[name]["mbs"].append(mbs)
                res[name]["cpu"].append(cpu)
                lat = [new_connection(kind, proxy, lat_port) for _ in range(args.samples)]
                res[name]["p50"].append(pct(lat, 50) * 1000)
                res[name]["p90"].append(pct(lat, 90) * 1000)
            for _name, (port, out) in inter.items():
                out.append(await throughput(port, url, True, args.seconds, args.concurrency))
            loads.append(load_note())
    finally:
        for p in (hush, mitm, mitm_http, privoxy, origin, http_origin):
            p.stop()
        if args.no_splice:
            plain.stop()
    m = {name: {k: median(v) for k, v in r.items()} for name, r in res.items()}
    pv, mi = m["privoxy"], m["mitmproxy"]
    print(f"{'contender':<17} {'bulk MB/s':>9} {'÷privoxy':>8} {'÷mitm':>6} {'CPU s/GB':>9} "
          f"{'p50 ms':>7} {'p90 ms':>7} {'p50−privoxy':>11} {'p50−mitm':>9}")
    for name, r in m.items():
        cpu = f"{r['cpu']:>9.2f}" if name != "direct" else f"{'-':>9}"
        print(f"{name:<17} {r['mbs']:>9.0f} {r['mbs'] / pv['mbs']:>8.2f} {r['mbs'] / mi['mbs']:>6.2f} {cpu} "
              f"{r['p50']:>7.2f} {r['p90']:>7.2f} {r['p50'] - pv['p50']:>+11.2f} {r['p50'] - mi['p50']:>+9.2f}")
    rps = {name: median(out) for name, (_, out) in inter.items()}
    print(f"intercepted flows: hush {rps['hush']:.0f} req/s, bare mitmproxy {rps['mitmproxy']:.0f} req/s, "
          f"ratio {rps['hush'] / rps['mitmproxy']:.2f}")
    print(f"(medians of {args.rounds} rounds; bulk {args.bulk_mb} MB per round; {args.samples} fresh connections "
          f"per round; intercepted: {args.concurrency} connections × {args.seconds:g}s)")
    print("; ".join(loads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bulk-mb", type=int, default=200)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-splice", action="store_true",
                        help="also hush with its tunnels relayed by mitmproxy (no splice relay), same run")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
