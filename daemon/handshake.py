"""The proxy handshakes the front door reads itself: an HTTP ``CONNECT`` head, SOCKS5's greeting and request.

Strict on purpose.  These parsers accept only the plain, well-formed case
that every client sends (``CONNECT host:port HTTP/1.1`` with ordinary header
lines; SOCKS5 ``CONNECT`` without authentication) and say ``None`` to
anything else: a lowercase method, an absolute URL, a folded or malformed
header, a ``Host`` that names another host, a duplicate field, bytes after
the head.  ``None`` is not a refusal: the connection goes to mitmproxy, which
parses and decides it as it always has.  So nothing hush decides can differ
between the two paths; the front door is only faster where it is sure.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from hush.daemon.policy.hosts import normalize

_REQUEST_LINE = re.compile(rb"CONNECT ([^ \r\n]+) (HTTP/1\.[01])\r\n")
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\Z")
_PORT = re.compile(r"[1-9][0-9]{0,4}\Z")
_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
_PRINTABLE = re.compile(rb"[\x20-\x7e\t]*\Z")

SOCKS5_VERSION = 0x05
SOCKS5_NO_AUTHENTICATION = 0x00
SOCKS5_GREETING_REPLY = b"\x05\x00"  # mitmproxy's, for no authentication (modes.Socks5Proxy.state_greet)
# mitmproxy's only success reply (modes.Socks5Proxy.state_connect): bound to 0.0.0.0:0
SOCKS5_GRANTED = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a handshake asked to go, as the decision and the dial take it."""

    host: str  # normalized (policy.hosts.normalize): what mitmproxy's path decides on
    port: int
    user_agent: str | None = None  # a CONNECT's own User-Agent
    reply: bytes = b""  # what mitmproxy would answer to grant it, byte for byte


def _host(text: str) -> str | None:
    """The host of an authority or a SOCKS5 name, if it is one the front door is sure of: a
    host name or an IP address already in the form the decision takes (``normalize``)."""
    if "%" in text:
        return None  # an IPv6 zone id: refused, on mitmproxy's path (policy.hosts.refusal)
    if text.startswith("["):
        if not text.endswith("]"):
            return None
        text = text[1:-1]
        try:
            if ipaddress.ip_address(text).version != 6:
                return None
        except ValueError:
            return None
    elif not _NAME.match(text):
        return None
    if normalize(text) != text:
        return None  # another spelling (case, 0x7f.1, ::ffff:…, an IDN): mitmproxy's path has the rules for it
    return text


def _authority(target: str) -> tuple[str, int] | None:
    host, sep, port = target.rpartition(":")
    if not sep or not _PORT.match(port) or int(port) > 65535:
        return None
    found = _host(host)
    return (found, int(port)) if found else None


def parse_connect(head: bytes, max_fields: int, max_bytes: int) -> Target | None:
    """A complete ``CONNECT`` head (request line, fields, the blank line, nothing after it), or
    None for anything the front door leaves to mitmproxy."""
    if len(head) > max_bytes or not head.endswith(b"\r\n\r\n") or head.count(b"\r\n\r\n") != 1:
        return None
    line = _REQUEST_LINE.match(head)
    if line is None:
        return None
    try:
        authority = _authority(line.group(1).decode("ascii"))
    except UnicodeDecodeError:
        return None
    if authority is None:
        return None
    host, port = authority
    fields = head[line.end():-4].split(b"\r\n") if line.end() < len(head) - 2 else []
    if len(fields) > max_fields:
        return None
    seen: dict[bytes, bytes] = {}
    for field in fields:
        name, colon, value = field.partition(b":")
        if not colon or not _FIELD_NAME.match(name) or b"\n" in value or b"\r" in value or b"\0" in value:
            return None  # no name, a space before the colon, an obs-fold, a bare LF: mitmproxy's to read
        key = name.lower()
        if key in _FRAMING:
            return None  # a body on a CONNECT: mitmproxy refuses it, or reads the tunnel as the body
        if key in seen and key in (b"host", b"user-agent"):
            return None  # which one counts is mitmproxy's to say
        seen[key] = value.strip(b" \t")
    if b"host" in seen:
        text = seen[b"host"].decode("latin-1")
        named = _authority(text)
        if (named[0] if named else _host(text)) != host:
            return None  # a Host naming another host (or unreadable): mitmproxy's path, whatever it makes of it
    agent = seen.get(b"user-agent")
    if agent is not None and not _PRINTABLE.match(agent):
        return None
    version = line.group(2)
    return Target(host, port, agent.decode("ascii") if agent is not None else None,
                  version + b" 200 Connection established\r\n\r\n")


def connect_head_end(buffer: bytes | bytearray) -> int:
    """Where a CONNECT head ends in ``buffer`` (after its blank line), or -1 while it is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def socks5_greeting(data: bytes | bytearray) -> int | None:
    """The length of a complete SOCKS5 greeting that offers no authentication, 0 while it is
    incomplete, None for anything else (mitmproxy answers it)."""
    if len(data) < 2:
        return 0 if not data or data[0] == SOCKS5_VERSION else None
    if data[0] != SOCKS5_VERSION or data[1] == 0:
        return None
    end = 2 + data[1]
    if len(data) < end:
        return 0
    return end if SOCKS5_NO_AUTHENTICATION in data[2:end] else None


def socks5_request(data: bytes | bytearray | memoryview) -> tuple[int, Target | None]:
    """(length, target) of a complete SOCKS5 CONNECT request: (0, None) while it is incomplete,
    (-1, None) for anything the front door leaves to mitmproxy (another command, an address type
    or name it is not sure of)."""
    if len(data) < 5:
        return (0, None) if bytes(data[:3]) == b"\x05\x01\x00"[:len(data[:3])] else (-1, None)
    if bytes(data[:3]) != b"\x05\x01\x00":
        return -1, None
    atyp = data[3]
    if atyp == 0x01:
        end = 4 + 4 + 2
        if len(data) < end:
            return 0, None
        host = str(ipaddress.IPv4Address(bytes(data[4:8])))
    elif atyp == 0x04:
        end = 4 + 16 + 2
        if len(data) < end:
            return 0, None
        host = str(ipaddress.IPv6Address(bytes(data[4:20])))
    elif atyp == 0x03:
        end = 4 + 1 + data[4] + 2
        if len(data) < end:
            return 0, None
        try:
            host = bytes(data[5:end - 2]).decode("ascii")
        except UnicodeDecodeError:
            return -1, None
    else:
        return -1, None
    port = int.from_bytes(data[end - 2:end], "big")
    found = _host(host) if atyp == 0x03 else (host if normalize(host) == host else None)
    if found is None or port == 0:
        return -1, None
    return end, Target(found, port, None, SOCKS5_GRANTED)


UNSURE = "unsure"  # a ClientHello the front door leaves to mitmproxy's parser
_SERVER_NAME = 0x0000
_ECH = 0xFE0D  # encrypted_client_hello: its outer name is not the one asked for


def tls_sni(data: bytes) -> tuple[str | None] | str | None:
    """The name a TLS ClientHello asks for, when the hello is the plain case: one record holding
    one whole ClientHello, and nothing after it.  ``(name,)`` (``(None,)``: no server_name
    extension), None while the record is still arriving, ``UNSURE`` for anything else (not TLS, a
    hello over several records, a malformed or repeated field, ECH): mitmproxy's parser reads
    those.  mitmproxy's (kaitai) parser costs ~0.1 ms a hello; this one a few microseconds."""
    if len(data) < 5:
        return None if data[:1] in (b"", b"\x16") and data[1:2] in (b"", b"\x03") and data[2:3] in (
            b"", b"\x00", b"\x01", b"\x02", b"\x03") else UNSURE
    if data[0] != 0x16 or data[1] != 3 or data[2] > 3:
        return UNSURE  # (a record version mitmproxy does not take for TLS: its path refuses it)
    size = int.from_bytes(data[3:5], "big")
    if size < 4 or size > 16384:
        return UNSURE
    if len(data) < 5 + size:
        return None
    if len(data) != 5 + size or data[5] != 1 or int.from_bytes(data[6:9], "big") != size - 4:
        return UNSURE
    body = data[9:]
    try:
        pos = 34  # version, random
        pos += 1 + body[pos]  # session id
        suites = int.from_bytes(body[pos:pos + 2], "big")
        if suites == 0 or suites % 2:
            return UNSURE
        pos += 2 + suites
        pos += 1 + body[pos]  # compression methods
        if pos == len(body):
            return (None,)
        end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
        if end != len(body):
            return UNSURE
        pos += 2
        name: str | None = None
        seen: set[int] = set()
        while pos < end:
            kind = int.from_bytes(body[pos:pos + 2], "big")
            length = int.from_bytes(body[pos + 2:pos + 4], "big")
            value = body[pos + 4:pos + 4 + length]
            pos += 4 + length
            if pos > end or kind in seen or kind == _ECH:
                return UNSURE
            seen.add(kind)
            if kind == _SERVER_NAME:
                # one entry: host_name (0), its length, the name
                if len(value) < 5 or int.from_bytes(value[:2], "big") != len(value) - 2 or value[2] != 0 \
                        or int.from_bytes(value[3:5], "big") != len(value) - 5:
                    return UNSURE
                text = value[5:].decode("ascii")
                if not text or _host(text.lower()) is None:
                    return UNSURE
                name = text
        return (name,)
    except (IndexError, UnicodeDecodeError):
        return UNSURE


# -- a TLS record's first bytes ----------------------------------------

RECORD_TYPES = b"\x14\x15\x16\x17\x18"  # change_cipher_spec, alert, handshake, application_data, heartbeat


def tls_record_start(data: bytes | bytearray | memoryview) -> bool | None:
    """Do a connection's first bytes start a TLS record (a content type 0x14..0x18, then major
    version 3)?  None while that is not known yet (fewer than 3 bytes of what may be one).  OpenSSL
    skips records before a ClientHello (any number of empty change_cipher_spec records), so a
    tunnel whose first record is not a readable ClientHello must not be relayed as if it were not
    TLS: its name would reach the server unchecked."""
    if not data:
        return None
    if data[0] not in RECORD_TYPES:
        return False
    if len(data) < 2:
        return None
    if data[1] != 3:
        return False
    return True if len(data) >= 3 else None
