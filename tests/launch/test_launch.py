"""``hush launch``: every byte of one app goes through hush, with no setting in the app.

Everything runs in the tests' world (tests/launch/world.py): hush as nobody, the
launched command in its own namespaces inside the world as the same uid, the
origins and sinks on the world's addresses.  The assertions are on the far side:
what the origins accepted and received, what reached the sinks, what the world's
resolver was asked, and the audit rows.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import textwrap

import pytest

from .world import (
    ALLOWED_IP,
    ALLOWED_IP6,
    BLOCKED_IP,
    CURL_ARGS,
    NOBODY,
    PUBLIC_DNS,
    PYTHON,
    QUIC_IP,
    TOR_NAME,
    UNISSUED_FAKE_IP,
    is_static,
    tor_config,
    until,
)

pytestmark = pytest.mark.integration

FAKE = ipaddress.ip_network("198.18.0.0/15")
CHROMIUM = "/usr/bin/chromium"
BUSYBOX = "/bin/busybox"

POLICY = """\
    app: x
    default: block
    rules:
      - {match: {host: allowed.test}, action: allow}
      - {match: {host: dns-allowed.test}, action: allow}
      - {match: {host: quic.test}, action: allow}
      - {match: {host: 203.0.113.10}, action: allow}
      - {match: {host: "2001:db8::10"}, action: allow}
"""
TOR_POLICY = POLICY + f"""\
      - {{match: {{host: {TOR_NAME}}}, action: tor}}
"""


def launch_rows(h, app="x"):
    return [r for r in h.audit() if (r["listener"] or "").startswith(f"launch:{app}:")]


def row_for(h, host, timeout=30, complete=False):
    """The (first) launch audit row for ``host``, once written — with ``complete``, once its
    connection has closed too: a connection's row is written at open and completed at its close
    (its tor exit, its bytes), and the writer batches rows for up to 20 ms, so a row read as soon as
    it appears may still be the one written at open."""
    def first():
        return next((r for r in launch_rows(h) if r["host"] == host), None)

    h.wait_rows(lambda r: r["host"] == host and (r["listener"] or "").startswith("launch:"), timeout,
                f"an audit row for {host}")
    if complete:
        return until(lambda: (row := first()) is not None and row["ended"] is not None and row, timeout,
                     f"the audit row for {host} completed", interval=0.05)
    return first()


def curl(h, url, *args, app="x"):
    return h.launch(app, "curl", *CURL_ARGS, *args, url)


def script(text: str) -> list[str]:
    return [PYTHON, "-c", textwrap.dedent(text)]


# -- curl: names, literals, blocked, Tor ------------------------------------------------

def test_curl_name_and_ip_literals_are_allowed_and_delivered(world, far, whush):
    v4, v6 = far.origin(ALLOWED_IP), far.origin(ALLOWED_IP6)
    h = whush({"x": POLICY})
    cases = [(v4, v4.url("/by-name", host="allowed.test"), "allowed.test"),
             (v4, v4.url("/by-ipv4"), ALLOWED_IP),
             (v6, v6.url("/by-ipv6"), ALLOWED_IP6),
             (v4, v4.url("/by-world-dns", host="dns-allowed.test"), "dns-allowed.test")]
    for origin, url, _ in cases:
        res = curl(h, url)
        assert res.returncode == 0, (url, res.stderr, h.log[-3000:])
        assert res.stdout.decode() == f"origin {origin.host} {url.split(str(origin.port))[1]}\n"
    assert v4.paths == ["/by-name", "/by-ipv4", "/by-world-dns"] and v6.paths == ["/by-ipv6"]
    assert v4.requests[0].headers["host"] == f"allowed.test:{v4.port}"  # the name, as the app wrote it
    assert set(v4.owners + v6.owners) == {h.pid}  # every connection made by hush itself
    assert "dns-allowed.test" in world.dns.queries  # an allowed name is resolved by hush, in the world
    for _, _, host in cases:
        row = row_for(h, host)
        assert (row["app"], row["decision"], row["ip_exposed"]) == ("x", "allow", 1), row
        assert row["listener"].startswith("launch:x:")


def test_blocked_name_costs_the_origin_nothing_and_is_never_resolved(world, far, whush):
    blocked = far.origin(BLOCKED_IP)
    h = whush({"x": POLICY})
    for name in ("blocked.test", "hosts-blocked.test", BLOCKED_IP):
        res = curl(h, blocked.url(f"/{name}", host=name))
        assert b"origin" not in res.stdout, res
        row = row_for(h, name)
        assert (row["app"], row["decision"], row["ip_exposed"]) == ("x", "block", 0), row
        assert row["listener"].startswith("launch:x:")
    assert blocked.accepts == [] and blocked.requests == []
    assert "blocked.test" not in world.dns.queries  # the world's resolver was never asked


def test_tor_routed_name_reaches_the_origin_from_the_exit_and_is_never_resolved(
        world, far, whush, world_torlab, world_exit_dns):
    origin = far.origin("127.0.0.1")
    world_exit_dns.queries.clear()
    h = whush({"x": TOR_POLICY}, config=tor_config(world_torlab))
    h.wait_tor_ready()
    res = curl(h, origin.url("/via-tor", host=TOR_NAME))
    assert res.returncode == 0, (res.stderr, h.log[-3000:])
    assert res.stdout == b"origin 127.0.0.1 /via-tor\n"
    assert origin.owners == [world_torlab.exit_pid]  # the private network's exit connected
    assert TOR_NAME in world_exit_dns.queries  # the exit resolved it ...
    assert TOR_NAME not in world.dns.queries  # ... and nothing in the world did
    row = row_for(h, TOR_NAME, complete=True)  # its tor exit is known at its close
    assert (row["app"], row["decision"], row["ip_exposed"]) == ("x", "tor", 0), row
    assert row["listener"].startswith("launch:x:") and (row["tor_exit"] or "").endswith("~exit0")


SILENT_THEN_FRONTED = """\
    import socket, ssl, sys, time
    name, port = sys.argv[1], int(sys.argv[2])
    s = socket.create_connection((name, port), timeout=20)
    time.sleep(1.5)  # say nothing first: hush is asked about the connection before its first byte
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        t = ctx.wrap_socket(s, server_hostname="blocked.test")  # then name a blocked host
        t.sendall(b"GET /fronted HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n")
        print("answered", t.recv(200))
    except OSError as e:
        print("failed", e)
"""


def test_a_silent_tor_routed_connection_is_not_relayed_before_its_clienthello_is_checked(
        world, far, whush, world_torlab, world_exit_dns, tls_ctx):
    """A transparent (launch) connection is asked about before any byte: that is not "not TLS". A
    connection to a Tor-routed name that waits, then sends a ClientHello naming a blocked host, must
    be refused on that name, not relayed through the exit unchecked."""
    origin = far.origin("127.0.0.1", tls=tls_ctx)
    h = whush({"x": TOR_POLICY}, config=tor_config(world_torlab))
    h.wait_tor_ready()
    res = h.launch("x", *script(SILENT_THEN_FRONTED), TOR_NAME, str(origin.port))
    assert res.stdout.startswith(b"failed"), (res.stdout, res.stderr, h.log[-3000:])
    assert origin.accepts == []  # nothing came out of the exit
    rows = h.wait_rows(lambda r: "blocked.test" in (r["error"] or ""), 30, "the tunnel refused on its TLS name")
    assert all(r["ip_exposed"] == 0 for r in rows)


# -- UDP, DNS, static and renamed clients ------------------------------------------------

UDP_PROBE = """\
    import errno, json, socket, sys, time
    out = []
    for family, host, port in json.loads(sys.argv[1]):
        s = socket.socket(getattr(socket, family), socket.SOCK_DGRAM)
        s.settimeout(15)
        start = time.monotonic()
        try:
            s.connect((host, port))
            s.send(b"hello over udp")
            s.recv(100)
            result = "answered"
        except socket.timeout:
            result = "timeout"
        except OSError as e:
            result = errno.errorcode.get(e.errno, str(e.errno))
        out.append([host, port, result, round(time.monotonic() - start, 3)])
    print(json.dumps(out))
"""


def test_udp_to_any_address_fails_at_once(world, far, whush):
    h = whush({"x": POLICY})
    targets = [("AF_INET", ALLOWED_IP, 9999), ("AF_INET", PUBLIC_DNS, 123), ("AF_INET6", ALLOWED_IP6, 9999),
               ("AF_INET", QUIC_IP, 443)]
    sinks = [far.udp(host, port) for _, host, port in targets]
    res = h.launch("x", *script(UDP_PROBE), json.dumps(targets))
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)
    for host, port, result, elapsed in results:
        assert result not in ("answered", "timeout"), (host, port, results)  # an error, not silence
        assert elapsed < 5, (host, port, results)  # at once (the probe waits up to 15 s)
    assert all(s.datagrams == [] for s in sinks)


DNS_PROBE = """\
    import json, sys
    from dnslib import DNSRecord
    out = {}
    for key, server, name, qtype, tcp in json.loads(sys.argv[1]):
        reply = DNSRecord.parse(DNSRecord.question(name, qtype).send(server, 53, tcp=tcp, timeout=10,
                                                                     ipv6=":" in server))
        out[key] = [str(rr.rdata) for rr in reply.rr]
    print(json.dumps(out))
"""


def test_dns_to_a_public_server_is_answered_by_the_stub(world, far, whush):
    h = whush({"x": POLICY})
    sinks = [far.udp(PUBLIC_DNS, 53), far.tcp(PUBLIC_DNS, 53), far.udp(ALLOWED_IP6, 53)]
    queries = [["a", PUBLIC_DNS, "allowed.test", "A", False],
               ["a-tcp", PUBLIC_DNS, "allowed.test", "A", True],
               ["a-v6-server", ALLOWED_IP6, "allowed.test", "A", False],
               ["aaaa", PUBLIC_DNS, "allowed.test", "AAAA", False],
               ["blocked", PUBLIC_DNS, "blocked.test", "A", False],
               ["tor", PUBLIC_DNS, TOR_NAME, "A", False],
               ["unknown", PUBLIC_DNS, "nowhere.example", "A", False]]
    res = h.launch("x", *script(DNS_PROBE), json.dumps(queries))
    assert res.returncode == 0, (res.stderr, h.log[-3000:])
    answers = json.loads(res.stdout)
    for key in ("a", "a-tcp", "a-v6-server", "blocked", "tor", "unknown"):
        [address] = answers[key]
        assert ipaddress.ip_address(address) in FAKE, answers
    assert answers["a"] == answers["a-tcp"] == answers["a-v6-server"]  # one address per name per launch
    assert len({answers[k][0] for k in ("a", "blocked", "tor", "unknown")}) == 4
    assert answers["aaaa"] == []
    assert sinks[0].datagrams == [] and sinks[1].accepts == [] and sinks[2].datagrams == []
    assert not {"blocked.test", TOR_NAME, "nowhere.example"} & set(world.dns.queries)  # nothing resolved in the world


def test_static_busybox_wget_is_captured(world, far, whush):
    assert os.path.exists(BUSYBOX), "busybox-static is not installed (.ci/run installs it)"
    assert is_static(BUSYBOX), f"{BUSYBOX} is not statically linked (Debian's busybox-static is)"
    origin, blocked = far.origin(ALLOWED_IP), far.origin(BLOCKED_IP)
    h = whush({"x": POLICY})
    res = h.launch("x", BUSYBOX, "wget", "-q", "-O", "-", origin.url("/busybox", host="allowed.test"))
    assert res.returncode == 0, (res.stderr, h.log[-3000:])
    assert res.stdout == b"origin 203.0.113.10 /busybox\n"
    assert origin.owners == [h.pid]
    row = row_for(h, "allowed.test")  # decided on the name: its DNS went to the stub
    assert (row["app"], row["decision"]) == ("x", "allow")
    h.launch("x", BUSYBOX, "wget", "-q", "-O", "-", blocked.url("/busybox", host="blocked.test"))
    assert row_for(h, "blocked.test")["decision"] == "block"
    assert blocked.accepts == []


RENAMED = """\
    import ctypes, os, sys, urllib.request
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(15, b"signal-desktop", 0, 0, 0)  # PR_SET_NAME
        assert open("/proc/self/comm").read().strip() == "signal-desktop"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for url in sys.argv[1:]:
            try:
                print(opener.open(url, timeout=20).read().decode(), end="")
            except OSError as e:
                print("failed", url, e)
        sys.stdout.flush()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_child_that_renames_itself_is_captured_as_the_launched_app(world, far, whush):
    origin, blocked = far.origin(ALLOWED_IP), far.origin(BLOCKED_IP)
    other = "app: signal\ndefault: allow\n"  # another app, which the name would claim
    h = whush({"x": POLICY, "signal": other})
    res = h.launch("x", *script(RENAMED), origin.url("/renamed", host="allowed.test"),
                   blocked.url("/renamed", host="blocked.test"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().startswith("origin 203.0.113.10 /renamed\nfailed"), res.stdout
    assert origin.paths == ["/renamed"] and blocked.accepts == []
    rows = [r for r in h.audit() if r["host"] in ("allowed.test", "blocked.test")]
    assert rows and {r["app"] for r in rows} == {"x"}
    assert not any((r["process"] or "") == "signal-desktop" and r["app"] == "signal" for r in h.audit())


# -- chromium ----------------------------------------------------------------------------

def chromium(h, profile, *args, app="x"):
    assert os.path.exists(CHROMIUM), "chromium is not installed (.ci/run installs it)"
    return h.launch(app, CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-dev-shm-usage", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", *args, timeout=180)


def test_headless_chromium_loads_a_page_with_no_proxy_flags(world, far, whush):
    origin = far.origin(ALLOWED_IP)
    h = whush({"x": POLICY})
    res = chromium(h, world.dir("profile"), "--virtual-time-budget=5000", "--dump-dom",
                   origin.url("/page.html", host="allowed.test"))
    assert "origin 203.0.113.10 /page.html" in res.stdout.decode(errors="replace"), (
        res.stderr.decode(errors="replace")[-3000:], h.log[-3000:])
    assert "/page.html" in origin.paths and set(origin.owners) == {h.pid}
    row = row_for(h, "allowed.test")
    assert (row["app"], row["decision"]) == ("x", "allow")


def test_chromium_with_quic_forced_falls_back_to_tcp_or_fails_and_no_udp_leaves(world, far, whush, tls_ctx):
    tcp = far.origin(QUIC_IP, 443, tls=tls_ctx)
    udp = far.udp(QUIC_IP, 443)
    h = whush({"x": POLICY})
    res = chromium(h, world.dir("profile"), "--enable-quic", "--origin-to-force-quic-on=quic.test:443",
                   "--ignore-certificate-errors", "--virtual-time-budget=5000", "--dump-dom",
                   "https://quic.test/page.html")
    loaded = "origin 203.0.113.12 /page.html" in res.stdout.decode(errors="replace")
    assert udp.datagrams == []  # no QUIC packet left the launch
    if loaded:  # fell back to TCP, through hush
        assert set(tcp.owners) == {h.pid}
        assert row_for(h, "quic.test")["decision"] == "allow"
    else:  # failed: chromium ran and tried QUIC (its own words), and nothing reached the origin's address
        # chromium up to ~140 logs "Page load failed: net::ERR_QUIC_…"; 150 dumps its error page,
        # which names the error (ERR_QUIC_HANDSHAKE_FAILED)
        said = res.stderr.decode(errors="replace")
        assert "Page load failed: net::ERR_QUIC" in said or re.search(
            r"\bERR_QUIC_[A-Z_]+", res.stdout.decode(errors="replace")), (said[-3000:], h.log[-3000:])
        assert tcp.requests == []
    print("chromium with QUIC forced:", "fell back to TCP" if loaded else "failed")


# -- fail closed -------------------------------------------------------------------------

SURVIVOR = """\
    import http.client, json, os, sys, time, urllib.parse
    out, urls = sys.argv[1], sys.argv[2:]
    def get(url):
        u = urllib.parse.urlsplit(url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
        try:
            c.request("GET", u.path)
            return c.getresponse().read().decode()
        finally:
            c.close()
    with open(os.path.join(out, "first.tmp"), "w") as f:
        f.write(get(urls[0]))
    os.rename(os.path.join(out, "first.tmp"), os.path.join(out, "first"))
    deadline = time.monotonic() + 300  # never outlive a failed test for long
    while not os.path.exists(os.path.join(out, "go")) and time.monotonic() < deadline:
        time.sleep(0.02)  # the test kills the daemon, then says go
    results = []
    for url in urls[1:]:
        start = time.monotonic()
        try:
            results.append([url, "ok " + get(url), 0])
        except Exception as e:
            results.append([url, type(e).__name__, round(time.monotonic() - start, 3)])
    with open(os.path.join(out, "after.tmp"), "w") as f:
        json.dump(results, f)
    os.rename(os.path.join(out, "after.tmp"), os.path.join(out, "after"))
"""


def test_daemon_killed_while_the_app_runs_its_next_connections_fail(world, far, whush):
    origin, v6 = far.origin(ALLOWED_IP), far.origin(ALLOWED_IP6)
    h = whush({"x": POLICY})
    out = world.dir("out")
    after = [origin.url("/after-name", host="allowed.test"), origin.url("/after-fresh-name", host="other.test"),
             origin.url("/after-ipv4"), v6.url("/after-ipv6")]
    app = h.launch_popen("x", *script(SURVIVOR), out, origin.url("/before", host="allowed.test"), *after,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        until(lambda: (out / "first").exists() or app.poll() is not None, 60, "the app's first request")
        assert (out / "first").read_text() == "origin 203.0.113.10 /before\n", app.communicate(timeout=5)
        assert h.kill() == -signal.SIGKILL
        before = (len(origin.accepts), len(v6.accepts))
        (out / "go").touch()
        until(lambda: (out / "after").exists() or app.poll() is not None, 120, "the app's later connections")
        if (out / "after").exists():  # the app lives on: each of its connections failed, quickly
            results = json.loads((out / "after").read_text())
            print("after the daemon died:", results)
            for url, result, _elapsed in results:
                assert not result.startswith("ok"), (url, results)
                assert result != "TimeoutError", (url, results)  # refused, not left hanging
        else:  # hush launch ended the app: nothing it could have sent
            assert app.returncode != 0
            print("after the daemon died: the app was ended,", app.returncode)
        assert (len(origin.accepts), len(v6.accepts)) == before == (1, 0)
        assert origin.paths == ["/before"]
    finally:
        world.kill_tree(app)
    # the daemon is gone, its launch.sock stale: a new launch refuses to start
    marker = out / "ran"
    res = world.run(h.launch_argv("x", ["touch", marker]), capture_output=True, text=True)
    assert res.returncode == 7, res
    assert not marker.exists()


def test_launch_without_a_daemon_exits_7_and_never_runs_the_command(world):
    out = world.dir("out")
    for state in (world.dir("state-empty"), out / "does-not-exist"):
        marker = out / "ran"
        argv = [PYTHON, "-m", "hush.daemon.cli", "launch", "--state-dir", str(state), "--app", "x", "--",
                "touch", str(marker)]
        res = world.run(argv, capture_output=True, text=True)
        assert res.returncode == 7, res
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not marker.exists()


def test_unknown_app_exits_6_and_never_runs_the_command(world, whush):
    h = whush({"x": POLICY})
    out = world.dir("out")
    res = world.run(h.launch_argv("nosuchapp", ["touch", out / "ran"]), capture_output=True, text=True)
    assert res.returncode == 6, res
    assert not (out / "ran").exists()


def test_exit_status_passes_through(world, whush):
    h = whush({"x": POLICY})
    assert h.launch("x", "sh", "-c", "exit 3").returncode == 3
    assert h.launch("x", "sh", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM
    ran = h.launch("x", "sh", "-c", "id -u; cat /proc/self/status | grep CapEff; ip -o link")
    assert ran.returncode == 0, ran.stderr
    uid, caps, *links = ran.stdout.decode().splitlines()
    assert uid == str(NOBODY)  # the caller's uid, no capabilities, only lo
    assert caps.split()[1] == "0000000000000000"
    assert [link.split(":")[1].strip() for link in links] == ["lo"]


def test_status_lists_the_running_launch(world, far, whush):
    origin = far.origin(ALLOWED_IP)
    h = whush({"x": POLICY})
    out = world.dir("out")
    app = h.launch_popen("x", "sh", "-c", f'curl -sS --max-time 20 {origin.url("/s", host="allowed.test")} '
                                          f'> {out}/got; touch {out}/started; i=0; '
                                          f'while [ ! -e {out}/go ] && [ $i -lt 6000 ]; '
                                          f'do sleep 0.05; i=$((i+1)); done')
    try:
        until(lambda: (out / "started").exists(), 60, "the launched command started")
        launches = until(lambda: h.status().get("launches"), 30, "hush status lists the launch")
        [entry] = launches
        assert entry["app"] == "x" and entry["pid"] > 0 and entry["since"] > 0
        assert entry["connections"] >= 1 and "id" in entry
        (out / "go").touch()
        assert app.wait(60) == 0
        until(lambda: h.status().get("launches") == [], 30, "the ended launch leaves hush status")
    finally:
        world.kill_tree(app)


# -- what the app cannot do ------------------------------------------------------------

def test_tls_naming_a_blocked_host_on_an_allowed_name_is_refused(world, far, whush, tls_ctx):
    """Domain fronting from inside: curl resolves allowed.test (a fake address, decided on that
    name) but its TLS names blocked.test. The stricter decision applies, before any connection."""
    origin = far.origin(ALLOWED_IP, tls=tls_ctx)
    h = whush({"x": POLICY})
    ok = curl(h, origin.url("/ok", host="allowed.test"), "-k")
    assert ok.returncode == 0 and ok.stdout == b"origin 203.0.113.10 /ok\n", ok.stderr
    assert len(origin.accepts) == 1
    fronted = curl(h, origin.url("/fronted", host="blocked.test"), "-k",
                   "--connect-to", f"blocked.test:{origin.port}:allowed.test:{origin.port}")
    assert fronted.returncode != 0, fronted.stdout
    assert len(origin.accepts) == 1 and origin.paths == ["/ok"]  # nothing more reached the origin
    rows = h.wait_rows(lambda r: "blocked.test" in ((r["host"] or "") + (r["error"] or "")) and r["ip_exposed"] == 0,
                       30, "the fronted tunnel audited as refused")
    assert all(r["app"] == "x" for r in rows)


def test_a_fake_address_never_given_out_is_refused(world, far, whush):
    """Decided on the address, an unissued fake address would be allowed here (default allow):
    it must be refused instead, and a sink on that address in the world sees nothing."""
    sink = far.tcp(UNISSUED_FAKE_IP, 80)
    h = whush({"x": "app: x\ndefault: allow\n"})
    res = curl(h, f"http://{UNISSUED_FAKE_IP}:80/unissued")
    assert res.returncode != 0, res.stdout
    assert sink.accepts == []
    [row] = [r for r in h.wait_rows(lambda r: r["host"] == UNISSUED_FAKE_IP, 30, "the refused connection audited")
             if r["host"] == UNISSUED_FAKE_IP]
    assert row["decision"] == "block" and row["ip_exposed"] == 0 and row["app"] == "x"
    assert "no name was given out" in row["note"] and row["listener"].startswith("launch:x:")


def test_loopback_inside_a_launch_is_its_own(world, far, whush):
    """127.0.0.1 and ::1 inside the launch are the namespace's: the world's loopback origin is not reached."""
    origin, origin6 = far.origin("127.0.0.1"), far.origin("::1")
    h = whush({"x": "app: x\ndefault: allow\n"})
    for url in (origin.url("/lo"), origin.url("/lo", host="localhost"), origin6.url("/lo6")):
        res = curl(h, url)
        assert res.returncode != 0, (url, res.stdout)
    assert origin.accepts == [] and origin6.accepts == []


def test_the_app_cannot_undo_the_namespace(world, far, whush):
    """No capability over the launch's network namespace, not even as root of a user namespace of its own."""
    blocked = far.origin(BLOCKED_IP)
    udp = far.udp(ALLOWED_IP, 9999)
    h = whush({"x": POLICY})
    attempts = ["nft flush ruleset", "ip route del local default dev lo", "ip link add d0 type dummy",
                "unshare -r nft flush ruleset", "unshare -r ip route del local default dev lo"]
    sh = "; ".join(f"if {a} 2>/dev/null; then echo 'UNDONE: {a}'; fi" for a in attempts)
    sh += f"; curl -sS --max-time 10 {blocked.url('/after-undo', host=BLOCKED_IP)}"
    sh += f"; {PYTHON} -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
          f"s.sendto(b'x', ('{ALLOWED_IP}', 9999))\" 2>/dev/null; true"
    res = h.launch("x", "sh", "-c", sh)
    assert b"UNDONE" not in res.stdout, res.stdout
    assert blocked.accepts == [] and udp.datagrams == []


ESCAPE = """\
    import ctypes, os, subprocess, sys
    state, daemon, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
    for pid in (os.getppid(), daemon):  # hush launch on the host side, and the daemon
        if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH: their network is the world's
            print("ESCAPED: ptrace", pid)
            os.waitpid(pid, 0x40000000)
            libc.ptrace(17, pid, None, None)
    for where in (state, f"/proc/{daemon}/root{state}", f"/proc/{os.getppid()}/root{state}"):
        done = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "launch", "--state-dir", where,
                               "--app", "open", "--", *argv], capture_output=True)
        if done.returncode == 0:
            print("ESCAPED: launched as another app via", where)
"""


def test_the_app_cannot_relaunch_itself_as_another_app(world, far, whush):
    """hush's sockets are out of the launched app's reach (its state dir, or through /proc), and it
    cannot ptrace the processes that live outside its namespaces."""
    blocked = far.origin(BLOCKED_IP)
    h = whush({"x": POLICY, "open": "app: open\ndefault: allow\n"})
    res = h.launch("x", *script(ESCAPE), str(h.state), str(h.pid),
                   "curl", *CURL_ARGS, blocked.url("/escape", host="blocked.test"))
    assert res.returncode == 0, res.stderr
    assert b"ESCAPED" not in res.stdout, res.stdout
    assert blocked.accepts == []
    assert not [r for r in h.audit() if r["app"] == "open"]


def test_concurrent_launches_are_each_their_own_app(world, far, whush):
    """Two launches at once, of apps with opposite policies: each connection is decided by its own launch."""
    blocked = far.origin(BLOCKED_IP)
    h = whush({"x": POLICY, "open": "app: open\ndefault: allow\n"})
    out = world.dir("out")
    gate = f"i=0; while [ ! -e {out}/go ] && [ $i -lt 6000 ]; do sleep 0.05; i=$((i+1)); done"
    apps = {app: h.launch_popen(app, "sh", "-c", f"touch {out}/{app}; {gate}; curl -sS --max-time 20 "
                                                 f"{blocked.url('/' + app, host='blocked.test')}",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for app in ("x", "open")}
    try:
        until(lambda: (out / "x").exists() and (out / "open").exists(), 60, "both launches running")
        assert len(h.status()["launches"]) == 2
        (out / "go").touch()  # both connect now
        outputs = {app: p.communicate(timeout=60)[0] for app, p in apps.items()}
    finally:
        for p in apps.values():
            world.kill_tree(p)
    assert outputs["open"] == b"origin 203.0.113.11 /open\n" and b"origin" not in outputs["x"], outputs
    assert blocked.paths == ["/open"]
    h.wait_rows(lambda r: r["app"] == "open" and r["host"] == "blocked.test", 30, "the open app's row")
    rows = h.wait_rows(lambda r: r["app"] == "x" and r["host"] == "blocked.test", 30, "x's row")  # not one batch
    decided = {(r["app"], r["decision"]) for r in rows if r["host"] == "blocked.test"}
    assert decided == {("x", "block"), ("open", "allow")}, decided
