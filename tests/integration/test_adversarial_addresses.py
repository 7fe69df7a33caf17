"""Issue 11, item 1: the unspecified address is loopback.

On Linux a connection to 0.0.0.0 reaches 127.0.0.1 and one to :: reaches ::1
(an IPv4-mapped ::ffff:0.0.0.0 reaches 127.0.0.1).  A policy that blocks the
loopback networks must block every spelling of them, over every way an app
can name a destination: a plain request through the HTTP listener, a CONNECT,
and a SOCKS5 connection given an address or a domain.  The origins listen on
127.0.0.1 and ::1, where those connections would land.
"""

import pytest

from .harness import free_port
from .hostile import CountingOrigin, connect, exchange, policy, socks5_reply, status

pytestmark = pytest.mark.integration

# the policy: loopback blocked by network and by name; everything else allowed
LOOPBACK = ("  - {match: {net: [127.0.0.0/8, '::1/128']}, action: block, status: 451}\n"
            "          - {match: {host: [localhost, 127.0.0.1, '::1']}, action: block}")

V4 = ["0.0.0.0", "0", "0.0", "0.0.0", "0x0", "00", "0x00000000", "000.00.0.0", "0.0.0.0."]
V6 = ["::", "0:0::0", "0:0:0:0:0:0:0:0", "::0", "::0.0.0.0"]
MAPPED = ["::ffff:0.0.0.0", "::ffff:0:0", "::FFFF:0000:0000"]  # IPv4-mapped: the kernel connects to 127.0.0.1


@pytest.fixture
def origins():
    v4, v6 = CountingOrigin("127.0.0.1"), CountingOrigin("::1")
    yield v4, v6
    v4.close()
    v6.close()


def authority(spelling: str, port: int) -> str:
    return f"[{spelling}]:{port}" if ":" in spelling else f"{spelling}:{port}"


def test_the_origins_are_reachable_by_these_spellings_when_allowed(hush, origins):
    # the control: with nothing blocked, the kernel really delivers each spelling to loopback,
    # so the blocked runs below would have reached an origin
    v4, v6 = origins
    port = free_port()
    h = hush({"t": policy(port)})
    for spelling, origin in (("0.0.0.0", v4), ("0x0", v4), ("::", v6), ("::ffff:0.0.0.0", v4)):
        where = authority(spelling, origin.port)
        assert status(exchange(port, f"GET http://{where}/ok HTTP/1.1", f"Host: {where}")) == 200, spelling
    assert (len(v4.accepts), len(v6.accepts)) == (3, 1)
    h.stop()
    assert {r["host"] for r in h.audit()} == {"127.0.0.1", "::1"}  # audited as the address reached


def test_plain_http_to_the_unspecified_address_is_blocked(hush, origins):
    v4, v6 = origins
    port = free_port()
    h = hush({"t": policy(port, LOOPBACK)})
    answers = {}
    for spelling in V4 + V6 + MAPPED:
        origin = v6 if spelling in V6 else v4
        where = authority(spelling, origin.port)
        answers[spelling] = status(exchange(port, f"GET http://{where}/x HTTP/1.1", f"Host: {where}",
                                            "Connection: close"))
    assert answers == {k: 451 for k in answers}
    assert v4.accepts == [] and v6.accepts == []
    h.stop()
    rows = h.audit()
    assert len(rows) == len(answers)
    assert all(r["decision"] == "block" and r["status"] == 451 and r["ip_exposed"] == 0 for r in rows)
    assert {r["host"] for r in rows} == {"127.0.0.1", "::1"}


def test_connect_to_the_unspecified_address_is_refused(hush, origins):
    v4, v6 = origins
    port = free_port()
    h = hush({"t": policy(port, LOOPBACK)})
    answers = {}
    for spelling in V4 + V6 + MAPPED:
        origin = v6 if spelling in V6 else v4
        s, head = connect(port, authority(spelling, origin.port))
        with s:
            answers[spelling] = status(head)
            if answers[spelling] == 200:  # it would have opened: show what reaches the far side
                s.sendall(b"GET /through HTTP/1.1\r\nHost: x\r\n\r\n")
                s.recv(100)
    assert answers == {k: 451 for k in answers}
    assert v4.accepts == [] and v6.accepts == []
    h.stop()
    rows = h.audit()
    assert [(r["method"], r["level"], r["decision"], r["ip_exposed"]) for r in rows] == [
        ("CONNECT", "connect", "block", 0)] * len(answers)
    assert {r["host"] for r in rows} == {"127.0.0.1", "::1"}


def test_socks5_to_the_unspecified_address_is_blocked(hush, origins):
    v4, v6 = origins
    port = free_port()
    h = hush({"t": policy(port, LOOPBACK, mode="socks5")})
    answers = {}
    for spelling, origin, domain in ([("0.0.0.0", v4, False), ("::", v6, False), ("::ffff:0.0.0.0", v4, False)]
                                     + [(s, v4, True) for s in V4 + MAPPED]
                                     + [(s, v6, True) for s in [*V6, "[::]"]]):
        answers[(spelling, domain)] = socks5_reply(port, spelling, origin.port, domain=domain)
    assert answers == {k: 2 for k in answers}  # SOCKS5 0x02, not allowed by ruleset: refused on the destination
    assert v4.accepts == [] and v6.accepts == []
    h.stop()
    rows = h.audit()
    assert len(rows) == len(answers)
    assert all(r["decision"] == "block" and r["ip_exposed"] == 0 for r in rows)
    assert {r["host"] for r in rows} == {"127.0.0.1", "::1"}


def test_the_rest_of_0_0_0_0_8_is_not_loopback(hush, origins):
    # 0.0.0.1 is routed to the default gateway, not to this host: decided as itself (a rule on
    # 127.0.0.0/8 does not apply), and with a rule of its own it is blocked like any address
    v4, _ = origins
    port = free_port()
    rules = "  - {match: {net: 0.0.0.0/8}, action: block, status: 403}\n          " + LOOPBACK.strip()
    h = hush({"t": policy(port, rules)})
    assert status(exchange(port, f"GET http://0.0.0.1:{v4.port}/ HTTP/1.1", f"Host: 0.0.0.1:{v4.port}")) == 403
    assert status(exchange(port, f"GET http://0.0.0.0:{v4.port}/ HTTP/1.1", f"Host: 0.0.0.0:{v4.port}")) == 451
    assert v4.accepts == []
    h.stop()
    assert [r["host"] for r in h.audit()] == ["0.0.0.1", "127.0.0.1"]


NAT64 = ["64:ff9b::7f00:1", "::7f00:1", "64:ff9b::127.0.0.1"]  # RFC 6052 NAT64 and IPv4-compatible: 127.0.0.1


def test_socks5_to_nat64_and_ipv4_compatible_forms_is_decided_as_the_ipv4_address(hush, origins):
    # on an IPv6-only network with NAT64, 64:ff9b::7f00:1 reaches 127.0.0.1 (of the translator): a rule
    # on 127.0.0.1 must decide it, as an address and as a domain; 64:ff9b:1::/48 (RFC 8215, local-use,
    # its IPv4 address at a place hush cannot know) is refused outright
    v4, _ = origins
    port = free_port()
    h = hush({"t": policy(port, "  - {match: {host: 127.0.0.1}, action: block}", mode="socks5")})
    answers = {(spelling, domain): socks5_reply(port, spelling, v4.port, domain=domain)
               for spelling in NAT64 for domain in (False, True)}
    answers[("64:ff9b:1::7f00:1", False)] = socks5_reply(port, "64:ff9b:1::7f00:1", v4.port, domain=False)
    assert all(code != 0 for code in answers.values()), answers
    assert v4.accepts == []
    h.stop()
    rows = h.audit()
    assert len(rows) == len(answers)
    assert all(r["decision"] == "block" and r["ip_exposed"] == 0 for r in rows), rows
    assert sorted(r["host"] for r in rows) == ["127.0.0.1"] * (len(answers) - 1) + ["64:ff9b:1::7f00:1"]
