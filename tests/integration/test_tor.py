"""The tor action on a private Tor network on loopback (hush.daemon.torlab).

The path is proven by the owner of the origin's peer socket: the exit relay's
tor for flows sent through Tor, hush itself for direct ones.
"""

import json
import os
import re
import signal
import socket
import sqlite3
import time

import pytest

from .harness import NAME, curl, free_port, tor_config, wait_for, wait_tor_ready
from .procnet import children
from .wire import live_rows

pytestmark = pytest.mark.integration



def hush_tor(h) -> int:
    [pid] = children(h.proc.pid, "tor")
    return pid


def rows(h):
    conn = sqlite3.connect(h.state / "audit.db")
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute("SELECT * FROM records ORDER BY id")]


POLICY = """\
    app: {app}
    listen: {port}
    default: block
    rules:
      - match: {{host: "*.hushtest"}}
        action: tor
        {isolation}
      - match: {{host: 127.0.0.1}}
        action: allow
"""


def policy(app, port, isolation=""):
    return POLICY.format(app=app, port=port, isolation=f"isolation: {isolation}" if isolation else "")


def test_name_does_not_resolve_locally():
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(NAME, 80)


def test_flows_go_through_the_exit_and_direct_ones_do_not(hush, torlab, exit_dns, origin, tls_origin, ca_file):
    port = free_port()
    h = hush({"a": policy("a", port)}, config=tor_config(torlab))
    wait_tor_ready(h)
    proxy = ["-x", f"http://127.0.0.1:{port}"]

    # inspected (plain HTTP) flow through tor
    res = curl(*proxy, origin.url("/via-tor", host=NAME))
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"origin 127.0.0.1 /via-tor\n"
    assert origin.owners == [torlab.exit_pid]  # the exit relay made the connection
    assert NAME in exit_dns.queries  # the exit resolved the name; hush could not have

    # HTTPS passed through untouched, tunnelled through tor: curl trusts only the origin's CA
    res = curl("--cacert", str(ca_file), *proxy, tls_origin.url("/tls-via-tor", host=NAME))
    assert res.returncode == 0, res.stderr
    assert tls_origin.owners == [torlab.exit_pid]

    # a direct (allowed) flow is owned by hush itself
    res = curl(*proxy, origin.url("/direct"))
    assert res.returncode == 0, res.stderr
    assert origin.owners[-1] == h.proc.pid
    assert h.proc.pid != torlab.exit_pid

    assert h.stop() == 0
    audit = rows(h)
    http_row = next(r for r in audit if r["url"] and r["scheme"] == "http" and r["host"] == NAME)
    assert (http_row["decision"], http_row["ip_exposed"], http_row["tor_isolation"]) == ("tor", 0, "hush/a")
    assert http_row["tor_circuit"] and http_row["tor_exit"].endswith("~exit0")
    tunnel_row = next(r for r in audit if r["method"] == "CONNECT")
    assert (tunnel_row["decision"], tunnel_row["level"], tunnel_row["ip_exposed"]) == ("tor", "connect", 0)
    assert tunnel_row["tor_exit"].endswith("~exit0")
    direct_row = next(r for r in audit if r["host"] == "127.0.0.1")
    assert (direct_row["decision"], direct_row["ip_exposed"], direct_row["tor_circuit"]) == ("allow", 1, None)


def test_isolation_apps_get_their_own_circuits(hush, torlab, origin):
    pa, pb, ps = free_port(), free_port(), free_port()
    h = hush({"a": policy("a", pa), "b": policy("b", pb), "s": policy("s", ps, "site")},
             config=tor_config(torlab))
    wait_tor_ready(h)
    for port, host in ((pa, NAME), (pa, NAME), (pb, NAME), (ps, NAME), (ps, "other.hushtest")):
        res = curl("-x", f"http://127.0.0.1:{port}", origin.url("/i", host=host))
        assert res.returncode == 0, res.stderr
    # each flow's row names the circuit tor's STREAM event attached it to
    wait_for(lambda: len([r for r in live_rows(h) if r["tor_circuit"]]) == 5, message="five rows with their circuits")
    h.stop()
    circuits = [(r["app"], r["host"], r["tor_isolation"], r["tor_circuit"]) for r in rows(h)]
    (a1, a2, b, s1, s2) = circuits
    assert a1[3] and a1[3] == a2[3]  # one app, one circuit
    assert b[3] != a1[3]  # another app, another circuit
    assert s1[2] == "hush/s/site/origin.hushtest" and s2[2] == "hush/s/site/other.hushtest"
    assert s1[3] != s2[3]  # isolation: site


def test_isolation_flow_gives_each_request_of_a_keep_alive_connection_its_own_circuit(hush, torlab, origin):
    """mitmproxy would hand the second request the open connection to tor the first one made
    (same target, same tor port) and tor chooses the circuit once per connection: each flow
    must get its own connection to tor, so its own CONNECT, isolation key and circuit."""
    import http.client

    port = free_port()
    h = hush({"f": policy("f", port, "flow")}, config=tor_config(torlab))
    wait_tor_ready(h)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # one client connection, kept alive
    for path in ("/keep/first", "/keep/second", "/keep/third"):
        conn.request("GET", origin.url(path, host=NAME))
        res = conn.getresponse()
        assert res.status == 200 and res.read() == f"origin 127.0.0.1 {path}\n".encode()
        assert not res.will_close
    conn.close()
    assert len(origin.accepts) == 3 and origin.owners == [torlab.exit_pid] * 3  # three streams out of the exit
    wait_for(lambda: len([r for r in live_rows(h) if r["tor_circuit"]]) == 3, message="three rows with circuits")
    h.stop()
    audit = [r for r in rows(h) if r["host"] == NAME]
    assert len({r["tor_isolation"] for r in audit}) == 3
    assert len({r["tor_circuit"] for r in audit}) == 3, [(r["tor_isolation"], r["tor_circuit"]) for r in audit]


def test_tor_down_fails_closed_fast_and_recovers(hush, torlab, origin, tls_origin, ca_file):
    port = free_port()
    h = hush({"a": policy("a", port)}, config=tor_config(torlab))
    wait_tor_ready(h)
    proxy = ["-x", f"http://127.0.0.1:{port}"]
    assert curl(*proxy, origin.url("/before", host=NAME)).returncode == 0
    hush_pid = h.proc.pid

    os.kill(hush_tor(h), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while "tor down" not in h.log and time.monotonic() < deadline:
        time.sleep(0.05)
    results = []
    for i in range(10):  # keep sending while tor is down
        start = time.monotonic()
        res = curl("-w", "%{http_code}", "-o", "/dev/null", *proxy, origin.url(f"/down/{i}", host=NAME))
        tls = curl("--cacert", str(ca_file), *proxy, tls_origin.url(f"/down/{i}", host=NAME))
        results.append((res.stdout, tls.returncode, time.monotonic() - start))
        if "tor ready" in h.log.split("tor down")[-1]:
            break
    down = [r for r in results if r[0] == b"503"]
    assert down, (results, h.log)
    assert all(elapsed < 3 for _, _, elapsed in down)  # at once, not after tor's SocksTimeout
    assert all(tls_rc != 0 for _, tls_rc, _ in down)  # CONNECT refused too
    assert hush_pid not in origin.owners and hush_pid not in tls_origin.owners

    wait_tor_ready_again(h)
    res = curl(*proxy, origin.url("/after", host=NAME))
    assert res.returncode == 0, (res.stderr, h.log)
    assert origin.owners[-1] == torlab.exit_pid
    h.stop()
    audit = rows(h)
    unavailable = [r for r in audit if r["decision"] == "tor-unavailable"]
    assert len(unavailable) >= 2 * len(down)
    assert all(r["ip_exposed"] == 0 for r in unavailable)
    assert {r["method"] for r in unavailable} == {"GET", "CONNECT"}
    # hush says what happened to tor; stem's own chatter (each GETINFO, each closed read) stays out
    assert not re.search(r" (DEBUG|INFO) stem: ", h.log), h.log


def wait_tor_ready_again(h, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "tor ready" in h.log.split("tor down")[-1]:
            return
        time.sleep(0.2)
    raise AssertionError(f"tor did not come back:\n{h.log}")


def test_tor_status_and_newnym_commands(hush, torlab, capsys):
    from hush.daemon.cli import main

    port = free_port()
    h = hush({"a": policy("a", port)}, config=tor_config(torlab))
    wait_tor_ready(h)
    assert main(["tor", "status", "--state-dir", str(h.state), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["bootstrap"] == 100 and status["circuit_established"] is True
    assert status["pid"] == hush_tor(h)
    assert main(["tor", "newnym", "--state-dir", str(h.state)]) == 0
    assert "NEWNYM sent" in capsys.readouterr().out
    assert main(["status", "--state-dir", str(h.state), "--json"]) == 0
    tor = json.loads(capsys.readouterr().out)["tor"]
    assert (tor["state"], tor["bootstrap"], tor["ready"], tor["pid"]) == ("ready", 100, True, hush_tor(h))
    h.stop()


def test_non_tor_flows_are_served_before_tor_bootstraps(hush, tmp_path, origin):
    """hush does not wait for tor: with a tor that can never bootstrap (no
    reachable authority), direct flows work and Tor flows fail at once."""
    port = free_port()
    dead = free_port()
    config = ("tor:\n  torrc:\n    - TestingTorNetwork 1\n"
              f"    - DirAuthority dead orport={dead} no-v2 v3ident={'A' * 40} 127.0.0.1:{dead} {'B' * 40}\n")
    h = hush({"a": policy("a", port)}, config=config)
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/direct")).returncode == 0
    res = curl("-w", "%{http_code}", "-o", "/dev/null", "-x", f"http://127.0.0.1:{port}", origin.url("/t", host=NAME))
    assert res.stdout == b"503"
    assert [r.path for r in origin.requests] == ["/direct"]
    wait_for(lambda: "tor bootstrapped" in h.log, message="tor's bootstrap progress")  # none is logged once stopping
    h.stop()


def test_socks5_listener_through_tor(hush, torlab, origin, tls_origin, ca_file):
    port = free_port()
    h = hush({"t": f"app: t\nlisten: {{port: {port}, mode: socks5}}\ndefault: block\n"
                   "rules:\n  - {match: {host: '*.hushtest'}, action: tor}\n"}, config=tor_config(torlab))
    wait_tor_ready(h)
    socks = ["--socks5-hostname", f"127.0.0.1:{port}"]
    res = curl(*socks, origin.url("/socks-tor", host=NAME))
    assert res.returncode == 0, res.stderr
    res = curl("--cacert", str(ca_file), *socks, tls_origin.url("/socks-tls-tor", host=NAME))
    assert res.returncode == 0, res.stderr
    assert origin.owners == [torlab.exit_pid] and tls_origin.owners == [torlab.exit_pid]
    h.stop()
    audit = rows(h)
    # the plain-HTTP tunnel's request is read and decided on its own too (its Host header), then routed
    assert sorted((r["decision"], r["level"], r["ip_exposed"]) for r in audit) == [
        ("tor", "connect", 0), ("tor", "connect", 0), ("tor", "request", 0)]
    carried = [r for r in audit if r["level"] == "request" or r["port"] == tls_origin.port]  # what reached the exit
    assert len(carried) == 2 and all(r["tor_exit"] and r["tor_exit"].endswith("~exit0") for r in carried)


def test_tor_dies_with_flows_in_flight(hush, torlab, origin):
    import concurrent.futures

    port = free_port()
    h = hush({"a": policy("a", port)}, config=tor_config(torlab))
    wait_tor_ready(h)
    proxy = ["-x", f"http://127.0.0.1:{port}"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(curl, "-o", "/dev/null", "-w", "%{http_code}", *proxy,
                               origin.url(f"/slow/30?{i}", host=NAME)) for i in range(3)]
        deadline = time.monotonic() + 10
        while len(origin.accepts) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # all three are at the origin, through the exit
        os.kill(hush_tor(h), signal.SIGKILL)
        killed = time.monotonic()
        results = [f.result() for f in futures]
        elapsed = time.monotonic() - killed
    assert all(r.stdout in (b"502", b"503") for r in results), results
    assert elapsed < 10  # answered when tor died, not when the origin would have answered (30 s)
    assert set(origin.owners) == {torlab.exit_pid}  # and never from hush
    h.stop()
    slow = [r for r in rows(h) if r["url"] and "hushtest" in r["url"]]
    assert len(slow) == 3 and {r["decision"] for r in slow} == {"tor-unavailable"}
    assert all(r["ip_exposed"] == 0 for r in slow)
