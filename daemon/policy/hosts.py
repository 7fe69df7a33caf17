"""Host names: normalisation, registrable domains, and an O(1) rule index.

``site_of`` uses tldextract's bundled Public Suffix List snapshot only
(:mod:`hush.daemon.policy.psl`): no download, no cache directory (by default
tldextract fetches the list on first use and caches it on disk: which site a
host belongs to would then depend on the network and on a writable home
directory).

    >>> site_of("a.b.example.co.uk")
    'example.co.uk'
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections import defaultdict
from collections.abc import Iterable, Mapping

from hush.daemon.policy.psl import registrable

_NAME = re.compile(r"^(?:(?!-)[a-z0-9_-]{1,63}(?<!-)\.)*(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NUMERIC = frozenset("0123456789abcdefx.")  # what an address in inet_aton's spellings is made of


def normalize(host: str) -> str:
    """Lower-case, without brackets around IPv6 or a trailing dot; an
    internationalised name in its ``xn--`` form, the one apps send and
    policies are written in (mitmproxy hands hooks the Unicode form it decoded
    with Python's ``idna`` codec, so encoding back with it restores what the
    app sent); an address in its one canonical spelling (see
    :func:`canonical_address`)."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.rstrip(".")
    if not host.isascii():
        host = _ascii_form(host)
    if host and (":" in host or (host[0].isdigit() and _NUMERIC.issuperset(host))):
        return canonical_address(host)
    return host


def _ascii_form(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host  # no ASCII form: no rule can name it, the default decides


# What Linux connects to when asked for the unspecified address (no source
# address bound, as mitmproxy binds none): tcp_v4_connect / ip_route_connect
# route 0.0.0.0 to the loopback device with 127.0.0.1 as destination, and
# tcp_v6_connect turns :: into ::1.  Only the unspecified address itself: the
# rest of 0.0.0.0/8 (0.0.0.1, 0.1.2.3) is routed like any other unicast
# address on kernels since 5.3 (measured: `ip route get 0.0.0.1` → the
# default gateway), so it is decided as itself.
_UNSPECIFIED = {"0.0.0.0": "127.0.0.1", "::": "::1"}


# RFC 6052's well-known NAT64 prefix: on an IPv6-only network with NAT64,
# 64:ff9b::cb00:710b reaches 203.0.113.11.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# RFC 8215's local-use NAT64 prefix: the network picks a prefix of /48 to /96
# in it, and the IPv4 address sits at a place that depends on that length
# (RFC 6052 section 2.2), which hush cannot know: such an address is refused
# (:func:`refusal`), never decided on a guess.
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291's deprecated IPv4-compatible ::a.b.c.d


def embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 destination stands for, or None: IPv4-mapped
    ``::ffff:a.b.c.d``, NAT64's ``64:ff9b::a.b.c.d`` and the deprecated
    IPv4-compatible ``::a.b.c.d`` — but not ``::`` and ``::1``, which are
    IPv6's own unspecified and loopback addresses."""
    if address.version != 6:
        return None
    assert isinstance(address, ipaddress.IPv6Address)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@functools.lru_cache(maxsize=4096)
def canonical_address(host: str) -> str:
    """``2001:DB8:0::1`` → ``2001:db8::1``; an IPv6 address that stands for an
    IPv4 one (:func:`embedded_ipv4`: ``::ffff:127.0.0.1``, NAT64's
    ``64:ff9b::7f00:1``, ``::7f00:1``) and what the system resolver reads as an IPv4 address without asking DNS
    (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``: inet_aton's forms)
    → ``127.0.0.1``.  The unspecified address, however spelt (``0``, ``0x0``,
    ``0.0``, ``::``, ``0:0::0``, ``::ffff:0.0.0.0``), is the loopback address
    the kernel connects it to (see ``_UNSPECIFIED``).  Otherwise ``host``
    unchanged; an IPv6 zone id (``::1%1``) is kept, so that :func:`refusal`
    sees it.  Without this a rule on ``127.0.0.1`` would not see a request to
    ``http://2130706433/`` or ``http://0/``, which connect there all the same."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if getattr(address, "scope_id", None) is not None:
            return str(address)  # ::ffff:127.0.0.1%1 too: refused, not decided as 127.0.0.1
        text = str(embedded_ipv4(address) or address)
        return _UNSPECIFIED.get(text, text)
    if ":" in host:
        return host
    try:
        text = socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return host
    return _UNSPECIFIED.get(text, text)


@functools.lru_cache(maxsize=4096)
def refusal(host: str) -> str | None:
    """Why no connection may be made to ``host`` (normalized) whatever the
    policy says, or None.

    - an IPv6 zone id (``::1%1``, ``fe80::1%eth0``, ``%25`` in a URL): it
      picks the network interface the kernel sends on, which no rule can name,
      and every parser reads it differently (mitmproxy keeps it in the host,
      Python's ``ipaddress`` keeps it in the address, getaddrinfo takes a
      number or an interface name and ignores it for ``::1``).  Dropping it
      instead would decide ``fe80::1%eth0`` and ``fe80::1%wlan0`` as one host
      though they are different machines on different links; refusing costs
      nothing an app needs (no messenger sends a zone id) and leaves no
      spelling to disagree about;
    - anything that is neither an IP address nor a valid host name (a SOCKS5
      domain can carry any bytes): no rule could name it.
    """
    if "%" in host and ":" in host:
        return f"{host!r} carries an IPv6 zone id"
    if not host:
        return "no destination host"
    if ":" in host and _in_local_nat64(host):
        return (f"{host!r} is in the local-use NAT64 prefix 64:ff9b:1::/48, where the IPv4 address it "
                "stands for cannot be known")
    problem = check_name(host)
    return problem and f"{host!r} is not a valid host name or address"


def _in_local_nat64(host: str) -> bool:
    try:
        return ipaddress.IPv6Address(host) in NAT64_LOCAL
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def parse_authority(text: str) -> tuple[str, int | None]:
    """A ``Host`` header or a request target's authority → (normalized host,
    port or None), strictly: ``host``, ``host:``, ``host:port``,
    ``[v6]:port``, with optional blanks around it.

    :raises ValueError: saying why it is not one authority — userinfo
        (``user@host``), several values (``a, b``: repeated headers are
        joined so), a port that is not a number up to 65535, an IPv6 address
        without brackets or with a zone id, anything that is not a host name
        or address.  A server may read such a value in ways hush cannot
        predict, so it is never decided on a guess.
    """
    authority = text.strip(" \t")
    if not authority:
        raise ValueError("it is empty")
    for char, why in ((",", "it holds several values"), ("@", "it holds userinfo")):
        if char in authority:
            raise ValueError(why)
    if any(char.isspace() or ord(char) < 0x20 or char == "\x7f" for char in authority):
        raise ValueError("it holds blanks or control characters")
    if authority.startswith("["):
        end = authority.find("]")
        host, rest = authority[1:end], authority[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError("its IPv6 literal is malformed")
        if "%" in host:
            raise ValueError("it carries an IPv6 zone id")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("its brackets hold no IPv6 address") from None
        port = rest[1:]
    else:
        host, _, port = authority.partition(":")
        if ":" in port:
            raise ValueError("an IPv6 address must be in brackets")
    if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"its port {port!r} is not a number up to 65535")
    if not host or host.endswith(".."):
        raise ValueError(f"its host {host!r} is not a host name or address")
    name = normalize(host)
    if refusal(name):
        raise ValueError(f"its host {host!r} is not a host name or address")
    return name, int(port) if port else None


def is_ip(host: str) -> bool:
    if not host or not (host[0].isdigit() or ":" in host):
        return False  # cheap: most names cannot be addresses
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=8192)
def site_of(host: str) -> str:
    """The registrable domain (eTLD+1); an IP address or bare name is its own site."""
    host = normalize(host)
    if not host or is_ip(host):
        return host
    return registrable(host) or host


@functools.lru_cache(maxsize=8192)
def address_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an address (parsed once per host), or None for a name.  As
    written, IPv6 staying IPv6 (a socket's family depends on it, and the
    kernel's spelling is matched as it is): a destination is canonicalized by
    :func:`normalize` before it is decided, this does not."""
    return ipaddress.ip_address(host) if is_ip(host) else None


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """An address in 127.0.0.0/8 or ::1 (a zone id after ``%`` aside), or
    ``::ffff:127.x.y.z``; never a name.  Strict, for a *peer*'s address (is a
    client on this machine?): NAT64's ``64:ff9b::7f00:1`` is not loopback here —
    a connection from it came from another machine through a translator.  A
    *destination* is normalized first (:func:`normalize`), which decides such
    forms as the IPv4 address they reach."""
    address = address_of(host.split("%")[0])
    return address is not None and address.is_loopback


def this_machine(host: str, link_local: bool = True) -> str | None:
    """Why dialling the destination ``host`` (an address however spelt: ``127.1``,
    ``::ffff:127.0.0.1``, NAT64's ``64:ff9b::7f00:1``; the unspecified ``0.0.0.0`` and ``::``,
    which :func:`normalize` makes the loopback Linux connects them to; a zone id aside) would
    reach this machine itself, or None (a name, any other address).  ``link_local``: a
    link-local address counts too."""
    address = address_of(normalize(host.split("%")[0]))
    if address is None:
        return None
    if address.is_loopback:
        return "this machine's loopback"
    if link_local and address.is_link_local:
        return "a link-local address"
    return None


def in_networks(host: str, networks) -> bool:
    """Is ``host`` (normalized) an IP address inside one of ``networks``?
    Names never are: hush does not resolve them to decide."""
    address = address_of(host)
    return address is not None and any(address in net for net in networks if net.version == address.version)


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``149.154.160.0/20`` or a single address; bits set past the prefix are an error.

    :raises ValueError: with a message naming the network to write instead.
    """
    if "%" in text:
        raise ValueError(f"{text!r}: hush refuses every destination with an IPv6 zone id, so no rule can name one")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP network such as 192.0.2.0/24 or 2001:db8::/32") from e
        raise ValueError(f"{text!r} has bits set past its prefix (did you mean {str(loose)!r}?)") from e


def parents(host: str) -> Iterable[str]:
    """``a.b.c`` → ``b.c``, ``c``: the names a ``*.suffix`` pattern could be."""
    dot = host.find(".")
    while dot >= 0:
        host = host[dot + 1 :]
        yield host
        dot = host.find(".")


def check_name(name: str) -> str | None:
    """Why ``name`` is not a valid host name or IP, or None."""
    if (len(name) <= 253 and _NAME.match(name)) or is_ip(name):
        return None
    if not name.isascii():
        return (f"{name!r}: write an internationalised name in its xn-- form, as apps send it "
                "(IDNA 2003 and 2008 spell some letters differently, so hush does not guess)")
    return f"{name!r} is not a valid host name"


def parse_host_pattern(pattern: str) -> tuple[str, bool]:
    """``example.com`` → (name, False); ``*.example.com`` → (suffix, True).

    :raises ValueError: for anything else (wildcards elsewhere, bad labels).
    """
    problem = None if pattern.isascii() else check_name(pattern.strip().lower())
    if problem:
        raise ValueError(problem)
    if "%" in pattern and ":" in pattern:
        raise ValueError(f"{pattern!r}: hush refuses every destination with an IPv6 zone id, so no rule can name one")
    pattern = normalize(pattern)
    wildcard = pattern.startswith("*.")
    name = pattern[2:] if wildcard else pattern
    if "*" in name:
        raise ValueError(f"{pattern!r}: a wildcard is only allowed as a leading '*.' label")
    if wildcard and is_ip(name):
        raise ValueError(f"{pattern!r}: '*.' cannot be put in front of an IP address")
    problem = check_name(name)
    if problem:
        raise ValueError(problem)
    return name, wildcard


class HostIndex:
    """Which rules can match a host, found by dictionary lookups.

    Each rule is indexed under one host-level key (exact names, ``*.`` suffixes,
    or sites); rules matching by ``net`` alone are candidates for every IP
    address, and rules without any for every host.  Looking up a host costs
    one lookup per label plus one for its site, whatever the number of rules or
    names.
    """

    def __init__(
        self,
        exact: Mapping[int, Iterable[str]],
        suffix: Mapping[int, Iterable[str]],
        site: Mapping[int, Iterable[str]],
        unindexed: Iterable[int],
        by_address: Iterable[int] = (),
    ):
        self._exact: dict[str, tuple[int, ...]] = _invert(exact)
        self._suffix: dict[str, tuple[int, ...]] = _invert(suffix)
        self._site: dict[str, tuple[int, ...]] = _invert(site)
        self._any = tuple(sorted(unindexed))
        self._address = tuple(sorted(by_address))

    def candidates(self, host: str, site: str) -> list[int]:
        """Indexes of the rules that may match ``host``, in rule order."""
        found: set[int] = set(self._any)
        if self._address and is_ip(host):
            found.update(self._address)
        hit = self._exact.get(host)
        if hit:
            found.update(hit)
        if self._suffix:
            for parent in parents(host):
                hit = self._suffix.get(parent)
                if hit:
                    found.update(hit)
        if self._site:
            hit = self._site.get(site)
            if hit:
                found.update(hit)
        return sorted(found)


def _invert(by_rule: Mapping[int, Iterable[str]]) -> dict[str, tuple[int, ...]]:
    out: dict[str, list[int]] = defaultdict(list)
    for index, names in by_rule.items():
        for name in names:
            out[name].append(index)
    return {name: tuple(indexes) for name, indexes in out.items()}
