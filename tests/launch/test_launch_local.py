"""``hush launch`` cannot reach the host's loopback through the DNS stub.

A name the stub answered with a fake address is dialled by the daemon, on the
host's network.  Names that are addresses (``127.0.0.1``, ``127.1``,
``2130706433``, ``0``), names that are loopback by definition (``localhost``,
``ip6-localhost``, ``localhost.localdomain``…), and names that merely resolve
to a loopback address daemon-side (the machine's host name at 127.0.1.1 as in
Debian's /etc/hosts, a public name pointing at 127.0.0.1 like localtest.me)
must never reach an origin on the world's 127.0.0.1, 127.0.1.1 or ::1 — with a
policy that allows everything.  Asserted at the far side: no accept, no
request; and a refusal that reaches hush is audited with a note saying why.
"""

from __future__ import annotations

import json
import socket
import textwrap

import pytest

from .world import ALLOWED_IP, CURL_ARGS, PYTHON, UNISSUED_FAKE_IP, World

pytestmark = pytest.mark.integration

HOSTNAME = socket.gethostname().lower()  # the world shares the host's UTS namespace
OPEN = "app: x\ndefault: allow\n"

# names the daemon's resolver (the world's /etc/hosts and DNS server) maps to this machine
LOOPBACK_HOSTS = {"localhost.localdomain": "127.0.0.1", "ip6-loopback": "::1", HOSTNAME: "127.0.1.1",
                  "lo-hosts.test": "127.0.0.1"}
LOOPBACK_DNS = {"localtest.me": "127.0.0.1"}

LITERALS = ["127.0.0.1", "127.1", "2130706433", "0", "0x7f.1"]
BY_DEFINITION = ["localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "sub.localhost"]
RESOLVING = [HOSTNAME, "localtest.me", "lo-hosts.test"]  # get a fake address; refused when the daemon resolves them


@pytest.fixture(scope="module")
def world():
    """The tests' world, with names that resolve to the loopback on the daemon's side."""
    w = World(hosts=LOOPBACK_HOSTS, dns_names=LOOPBACK_DNS).start()
    yield w
    w.close()


@pytest.fixture
def local(world, far):
    """Origins on the world's loopback addresses, all on one port (what every name is asked on)."""
    port = world.free_port("127.0.0.1")
    return port, [far.origin(host, port) for host in ("127.0.0.1", "127.0.1.1", "::1")]


PROBE = """\
    import json, socket, sys
    from dnslib import DNSRecord
    out = {}
    port = int(sys.argv[1])
    for name in json.loads(sys.argv[2]):
        try:
            reply = DNSRecord.parse(DNSRecord.question(name, "A").send("127.0.0.1", 53, timeout=10))
        except Exception as e:
            out[name] = ["dns failed " + repr(e), None]
            continue
        answers = [str(rr.rdata) for rr in reply.rr]
        result = None
        for address in answers:
            try:
                with socket.create_connection((address, port), timeout=10) as s:
                    s.sendall(b"GET /" + name.encode() + b" HTTP/1.1\\r\\nHost: " + name.encode() + b"\\r\\n\\r\\n")
                    result = s.recv(200).decode(errors="replace") or "closed"
            except OSError as e:
                result = type(e).__name__
        out[name] = [reply.header.rcode, answers, result]
    print(json.dumps(out))
"""


def probe(h, port, names):
    res = h.launch("x", PYTHON, "-c", textwrap.dedent(PROBE), str(port), json.dumps(names))
    assert res.returncode == 0, (res.stderr, h.log[-3000:])
    return json.loads(res.stdout)


def untouched(origins):
    for origin in origins:
        assert origin.accepts == [] and origin.requests == [], (origin.host, origin.paths)


def test_names_that_are_addresses_get_the_address_itself_and_stay_in_the_namespace(world, far, whush, local):
    port, origins = local
    h = whush({"x": OPEN})
    results = probe(h, port, LITERALS)
    for name in LITERALS:
        rcode, answers, result = results[name]
        assert (rcode, answers) == (0, ["127.0.0.1"]), results  # never a fake address: the address itself
        assert result == "ConnectionRefusedError", results  # the namespace's own loopback: nothing listens
    untouched(origins)
    assert not [r for r in h.audit() if r["host"] in (*LITERALS, "127.0.0.1")]  # nothing reached hush


def test_a_fake_address_asked_as_a_name_is_not_given_out(world, far, whush):
    sink = far.tcp(UNISSUED_FAKE_IP, 80)
    h = whush({"x": OPEN})
    results = probe(h, 80, [UNISSUED_FAKE_IP])
    assert results[UNISSUED_FAKE_IP][1] == [UNISSUED_FAKE_IP], results
    assert sink.accepts == []
    row = h.wait_rows(lambda r: r["host"] == UNISSUED_FAKE_IP, 30, "the unissued fake address refused")[-1]
    assert row["decision"] == "block" and "no name was given out" in row["note"], row


def test_names_loopback_by_definition_get_nxdomain(world, far, whush, local):
    port, origins = local
    h = whush({"x": OPEN})
    results = probe(h, port, BY_DEFINITION)
    for name in BY_DEFINITION:
        rcode, answers, result = results[name]
        assert (rcode, answers, result) == (3, [], None), results  # NXDOMAIN
    # as apps resolve them (glibc: the namespace's /etc/hosts holds localhost only, the rest asks the stub)
    for name in BY_DEFINITION:
        res = h.launch("x", "curl", *CURL_ARGS, f"http://{name}:{port}/curl")
        assert res.returncode != 0 and b"origin" not in res.stdout, (name, res)
    untouched(origins)
    assert not [r for r in h.audit() if r["host"] in BY_DEFINITION]


def test_names_resolving_to_the_loopback_are_refused_before_any_connection(world, far, whush, local):
    port, origins = local
    h = whush({"x": OPEN})
    results = probe(h, port, RESOLVING)
    for name in RESOLVING:
        rcode, answers, result = results[name]
        assert rcode == 0 and len(answers) == 1 and answers[0].startswith("198.1"), results  # a fake address
        assert not (result or "").startswith("HTTP/1.1 200"), results
    res = h.launch("x", "curl", *CURL_ARGS, f"http://{HOSTNAME}:{port}/curl")
    assert not res.stdout.startswith(b"origin") and b"resolves to 127.0.1.1" in res.stdout, res  # hush's 502
    untouched(origins)  # not even a TCP connect
    for name in RESOLVING:
        rows = h.wait_rows(lambda r, n=name: r["host"] == n and "resolves to" in (r["error"] or ""), 30,
                           f"the refusal of {name} audited")
        row = next(r for r in rows if r["host"] == name)
        assert row["listener"].startswith("launch:x:") and row["ip_exposed"] == 0, row
        assert "the host's own services" in row["error"] and "loopback" in row["error"], row


def test_a_legit_name_still_works(world, far, whush, local):
    _, origins = local
    site = far.origin(ALLOWED_IP)
    h = whush({"x": OPEN})
    res = h.launch("x", "curl", *CURL_ARGS, site.url("/fine", host="allowed.test"))
    assert res.returncode == 0 and res.stdout == b"origin 203.0.113.10 /fine\n", (res.stderr, h.log[-3000:])
    assert site.owners == [h.pid]
    row = h.wait_rows(lambda r: r["host"] == "allowed.test", 30, "allowed.test audited")[-1]
    assert row["decision"] == "allow" and not row["error"], row
    untouched(origins)
