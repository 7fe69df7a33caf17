"""Issue 11, item 2: IPv6 zone ids.

``::1%1`` is ::1 to the kernel (the zone picks an interface, and for ::1
none matters), but a canonical form that keeps ``%1`` matches no rule on
``::1``.  hush refuses any destination or authority with a zone id, whatever
the policy says (docs/policy.md says why refusing is safer than dropping the
zone): answered 400, nothing sent, audited ``block`` with a ``refused:`` note.
"""

import pytest

from .harness import free_port
from .hostile import CountingOrigin, connect, exchange, policy, socks5_reply, status, wait_for

pytestmark = pytest.mark.integration

LOOPBACK = ("  - {match: {net: [127.0.0.0/8, '::1/128']}, action: block, status: 451}\n"
            "          - {match: {host: [localhost, 127.0.0.1, '::1']}, action: block}")
ZONED = ["::1%1", "::1%251", "::1%25", "::1%lo", "::%1", "::ffff:127.0.0.1%1", "0:0::1%0", "fe80::1%1"]


@pytest.fixture
def v6():
    origin = CountingOrigin("::1")
    yield origin
    origin.close()


@pytest.fixture
def v4():
    origin = CountingOrigin("127.0.0.1")
    yield origin
    origin.close()


def test_the_zone_reaches_loopback_all_the_same(v6):
    # why it matters: the kernel ignores the zone of ::1 (measured here)
    import socket

    with socket.create_connection(("::1%1", v6.port), timeout=10):
        pass
    with socket.create_connection(("::1%251", v6.port), timeout=10):
        pass
    assert wait_for(lambda: len(v6.accepts) == 2)


@pytest.mark.parametrize("rules", [LOOPBACK, ""], ids=["loopback-blocked", "everything-allowed"])
def test_a_zone_id_is_refused_on_every_way_in(hush, v6, v4, rules):
    port, socks = free_port(), free_port()
    h = hush({"t": policy(port, rules), "s": policy(socks, rules, mode="socks5").replace("testapp", "socksapp")})
    answers, socks_answers = {}, {}
    for zoned in ZONED:
        origin = v4 if "ffff" in zoned else v6
        s, head = connect(port, f"[{zoned}]:{origin.port}")
        s.close()
        answers[("CONNECT", zoned)] = status(head)
        url = f"http://[{zoned.replace('%', '%25')}]:{origin.port}/x"  # RFC 6874's spelling in a URL
        answers[("GET", zoned)] = status(exchange(port, f"GET {url} HTTP/1.1", f"Host: [{zoned}]:{origin.port}"))
        raw = f"http://[{zoned}]:{origin.port}/x"  # and the zone written as it is
        answers[("GET raw", zoned)] = status(exchange(port, f"GET {raw} HTTP/1.1", "Host: localhost"))
        socks_answers[zoned] = socks5_reply(socks, zoned, origin.port)
        socks_answers[f"[{zoned}]"] = socks5_reply(socks, f"[{zoned}]", origin.port)
    # 400: refused by hush (mitmproxy parses them all and hands them to the hooks); on the SOCKS5
    # listener, refused on the destination: reply 0x02, not allowed by ruleset
    assert answers == {k: 400 for k in answers} and socks_answers == {k: 2 for k in socks_answers}
    answers.update(socks_answers)
    assert v6.accepts == [] and v4.accepts == []
    h.stop()
    rows = h.audit()
    assert len(rows) == len(answers), [(r["method"], r["url"]) for r in rows]
    assert all(r["decision"] == "block" and r["ip_exposed"] == 0 and r["status"] in (400, None)
                        for r in rows)
    assert all(r["note"].startswith("refused: ") and "zone id" in r["note"] for r in rows)
    # every SOCKS5 attempt reached hush's decision (mitmproxy does not parse SOCKS5 domains)
    assert len([r for r in rows if r["app"] == "socksapp"]) == 2 * len(ZONED)
