"""The DNS stub of a launch: names answered with fake addresses, mapped back on connect.

An app started with ``hush launch`` asks its DNS questions here (nftables in
its namespace sends every UDP and TCP packet to port 53, whatever the server
address, to this stub).  An A question is answered with an address from
198.18.0.0/15 (RFC 2544's benchmarking range, never routed), one per name per
launch; the app then connects to that address, and hush maps it back to the
*name* — so the decision is made on the name, exactly as for a SOCKS5 client
that lets the proxy resolve (``socks5h``), and a name the policy sends
through Tor or blocks is never resolved on this machine.

AAAA, HTTPS, SVCB and every other type get an empty answer (NOERROR, no
records): the app falls back to the A address.

No fake address is ever given out for what would reach *this machine* once
mapped back and dialled by the daemon:

- a name that is an IPv4 address in any spelling inet_aton reads
  (``127.0.0.1``, ``127.1``, ``2130706433``, ``0``, ``198.19.255.254``): the
  answer is the address itself, as the system resolver would give it without
  asking DNS.  The app then connects to that address and it is decided on the
  address, like any literal: a loopback one stays in the launch's namespace
  (its own loopback, never the host's), a fake one no name has is refused;
- a name that is loopback by definition (:func:`is_local_name`:
  ``localhost``, ``*.localhost``, ``localhost.localdomain``,
  ``ip6-localhost``, ``ip6-loopback`` and their kin): NXDOMAIN, so the app
  finds them in the namespace's ``/etc/hosts`` (localhost only), i.e. its own
  loopback.

A name that only *resolves* to a loopback address (the machine's host name,
127.0.1.1 in Debian's /etc/hosts; a public name pointing at 127.0.0.1) gets a
fake address like any other; the daemon refuses to dial it when it resolves
it (``hush.addons.act``).  Nothing here touches the
network or blocks; the table is bounded (the least recently used name gives
its address back when the range runs out).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord
from dnslib.label import DNSLabelError

from hush.daemon.policy.hosts import address_of, normalize

# RFC 2544: 198.18.0.0/15 is for benchmarking, never on the internet.
FAKE_NET = ipaddress.IPv4Network("198.18.0.0/15")
TTL = 60  # seconds; short, so a long-running app re-asks after a restart of the launch
MAX_NAME = 253


# loopback by definition (RFC 6761's localhost and its subdomains) or in every
# distribution's /etc/hosts as loopback (Debian's ip6-*, Red Hat's localhost4/6)
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "localhost4", "localhost4.localdomain4",
                         "localhost6", "localhost6.localdomain6", "ip6-localhost", "ip6-loopback"})


def is_local_name(name: str) -> bool:
    """A name that is this machine's loopback by definition (lower-case, no trailing dot)."""
    return name in LOCAL_NAMES or name.endswith(".localhost")


def literal(name: str) -> str | None:
    """The address a name *is* (an IP address in any spelling the system
    resolver reads without DNS, canonical: ``127.1`` → ``127.0.0.1``), or None."""
    host = normalize(name)
    return host if address_of(host) is not None else None


def is_fake(address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in FAKE_NET
    except ValueError:
        return False


class FakeAddresses:
    """name ↔ fake address, for one launch.  ``capacity`` bounds the table."""

    def __init__(self, network: ipaddress.IPv4Network = FAKE_NET, capacity: int | None = None):
        self._first = int(network.network_address) + 1  # skip the network address
        self._size = min(network.num_addresses - 2, capacity or network.num_addresses)
        self._next = 0
        self._by_name: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._by_address: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def address(self, name: str) -> str:
        """The fake address for ``name`` (lower-case, no trailing dot)."""
        number = self._by_name.get(name)
        if number is not None:
            self._by_name.move_to_end(name)
            return str(ipaddress.IPv4Address(number))
        if self._next < self._size:
            number = self._first + self._next
            self._next += 1
        else:  # full: the least recently asked name gives its address back
            _, number = self._by_name.popitem(last=False)
            del self._by_address[number]
        self._by_name[name] = number
        self._by_address[number] = name
        return str(ipaddress.IPv4Address(number))

    def name(self, address: str) -> str | None:
        """The name a fake address stands for, or None if no name has it."""
        try:
            number = int(ipaddress.IPv4Address(address))
        except ValueError:
            return None
        return self._by_address.get(number)


def qname(record: DNSRecord) -> str | None:
    """The question's name as hush decides on it, or None if it cannot be a host name."""
    name = str(record.q.qname).rstrip(".").lower()
    if not name or len(name) > MAX_NAME or any(not label or len(label) > 63 for label in name.split(".")):
        return None
    if not all(c.isalnum() or c in "-_." for c in name) or not name.isascii():
        return None
    return name


def answer(query: bytes, table: FakeAddresses) -> tuple[bytes | None, str | None]:
    """(the reply to send, the name asked for).  A reply of None: drop the packet
    (it is not a DNS query at all)."""
    try:
        record = DNSRecord.parse(query)
    except (DNSError, struct.error, IndexError, ValueError):
        return None, None
    if record.header.qr or not record.questions:
        return None, None
    try:
        return _reply(record, table)
    except (DNSError, DNSLabelError):  # a question dnslib can parse but not write back (a 64+ byte label)
        return None, None


def _reply(record: DNSRecord, table: FakeAddresses) -> tuple[bytes, str | None]:
    reply = record.reply()  # same id and question, QR and RA set
    reply.header.aa = 1
    name = qname(record)
    if name is None or len(record.questions) != 1 or record.header.opcode != 0:
        reply.header.rcode = RCODE.REFUSED
        return reply.pack(), name
    if is_local_name(name):
        reply.header.rcode = RCODE.NXDOMAIN  # /etc/hosts answers these inside the namespace: its own loopback
        return reply.pack(), name
    address = literal(name)
    if address is not None:  # the address itself, decided as one when the app connects to it
        if record.q.qtype in (QTYPE.A, QTYPE.ANY) and ":" not in address:
            reply.add_answer(RR(record.q.qname, QTYPE.A, rdata=A(address), ttl=TTL))
        return reply.pack(), name
    if record.q.qtype in (QTYPE.A, QTYPE.ANY):
        reply.add_answer(RR(record.q.qname, QTYPE.A, rdata=A(table.address(name)), ttl=TTL))
    return reply.pack(), name
