"""daemon/launch/fakedns.py: names ↔ fake addresses, and the stub's answers."""

import ipaddress

import pytest
from dnslib import QTYPE, RCODE, DNSLabel, DNSQuestion, DNSRecord

from hush.daemon.launch import fakedns
from hush.daemon.launch.fakedns import FakeAddresses, answer


def ask(name: str, qtype: str = "A", table: FakeAddresses | None = None):
    table = table if table is not None else FakeAddresses()
    query = DNSRecord.question(name, qtype)
    reply, asked = answer(query.pack(), table)
    return DNSRecord.parse(reply), asked, query


def test_a_question_gets_one_stable_fake_address_per_name():
    table = FakeAddresses()
    first, asked, query = ask("Allowed.Test.", table=table)
    assert asked == "allowed.test"
    assert first.header.id == query.header.id and first.header.rcode == RCODE.NOERROR
    [rr] = first.rr
    address = str(rr.rdata)
    assert ipaddress.ip_address(address) in fakedns.FAKE_NET
    again, _, _ = ask("allowed.test", table=table)
    assert str(again.rr[0].rdata) == address
    other, _, _ = ask("other.test", table=table)
    assert str(other.rr[0].rdata) != address
    assert table.name(address) == "allowed.test"
    assert table.name("198.18.200.200") is None and table.name("203.0.113.1") is None


def test_aaaa_https_and_other_types_get_an_empty_answer():
    for qtype in ("AAAA", "HTTPS", "MX", "TXT", "PTR"):
        reply, _, _ = ask("allowed.test", qtype)
        assert reply.header.rcode == RCODE.NOERROR and reply.rr == [], qtype


def test_what_is_not_a_host_name_is_refused_and_garbage_is_dropped():
    for labels in ([b"bad name", b"test"], [b"caf\xc3\xa9", b"test"], [b"a;b", b"test"]):
        query = DNSRecord(q=DNSQuestion(DNSLabel(labels), QTYPE.A))
        reply, _ = answer(query.pack(), FakeAddresses())
        assert DNSRecord.parse(reply).header.rcode == RCODE.REFUSED, labels
    reply, _, _ = ask("with_underscore.test")  # _ is allowed (SRV-style labels)
    assert reply.header.rcode == RCODE.NOERROR
    assert answer(b"\x00\x01garbage", FakeAddresses()) == (None, None)
    assert answer(b"", FakeAddresses()) == (None, None)
    response = DNSRecord.question("allowed.test").reply().pack()  # a response, not a query
    assert answer(response, FakeAddresses()) == (None, None)


def test_localhost_is_left_to_the_hosts_file():
    reply, _, _ = ask("localhost")
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.rr == []


LOCAL_NAMES = ["localhost", "LocalHost.", "a.b.localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback",
               "localhost4", "localhost6", "localhost6.localdomain6"]


def test_names_loopback_by_definition_get_nxdomain_never_a_fake_address():
    # mapped back and dialled by the daemon, a fake address for them would reach the *host's* loopback
    table = FakeAddresses()
    for name in LOCAL_NAMES:
        for qtype in ("A", "AAAA", "ANY"):
            reply, _, _ = ask(name, qtype, table)
            assert reply.header.rcode == RCODE.NXDOMAIN and reply.rr == [], (name, qtype)
    assert len(table) == 0
    assert not fakedns.is_local_name("localhost.test") and not fakedns.is_local_name("mylocalhost")


@pytest.mark.parametrize("name, address", [
    ("127.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"),
    ("198.19.255.254", "198.19.255.254"),  # a fake address asked as a name: itself, never issued
    ("203.0.113.11", "203.0.113.11"),
])
def test_a_name_that_is_an_address_is_answered_with_the_address_itself(name, address):
    # as the system resolver answers it without DNS: the app connects to the address, decided as one
    # (a loopback one stays in the launch's namespace); no fake address maps back to it
    table = FakeAddresses()
    reply, asked, _ = ask(name, "A", table)
    assert asked == name.lower() and reply.header.rcode == RCODE.NOERROR
    assert [str(rr.rdata) for rr in reply.rr] == [address]
    aaaa, _, _ = ask(name, "AAAA", table)
    assert aaaa.header.rcode == RCODE.NOERROR and aaaa.rr == []
    assert len(table) == 0


def test_numeric_looking_names_still_get_a_fake_address():
    for name in ("1e100.net", "123.com", "0xdead.be", "8bad.cafe", "256.1.1.1"):
        reply, _, _ = ask(name)
        assert ipaddress.ip_address(str(reply.rr[0].rdata)) in fakedns.FAKE_NET, name


def test_the_table_is_bounded_and_recycles_the_least_recently_asked():
    table = FakeAddresses(capacity=3)
    a, b, c = (table.address(n) for n in ("a.test", "b.test", "c.test"))
    assert table.address("a.test") == a  # asked again: now the most recent
    d = table.address("d.test")  # full: b.test (least recent) gives its address back
    assert d == b and table.name(d) == "d.test"
    assert table.name(a) == "a.test" and table.name(c) == "c.test"
    assert len(table) == 3


def test_is_fake():
    assert fakedns.is_fake("198.18.0.1") and fakedns.is_fake("198.19.255.254")
    assert not fakedns.is_fake("198.20.0.1") and not fakedns.is_fake("allowed.test")
    assert QTYPE.A == 1


def test_a_question_dnslib_cannot_write_back_is_dropped_not_raised():
    """A 70-byte label parses but cannot be packed again: no reply, no exception
    (which would have been a traceback in the daemon's log per packet)."""
    header = bytes.fromhex("1234 0100 0001 0000 0000 0000")
    question = bytes([70]) + b"a" * 70 + bytes([4]) + b"test" + b"\x00" + bytes.fromhex("0001 0001")
    assert answer(header + question, FakeAddresses()) == (None, None)
