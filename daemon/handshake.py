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


# -- a TLS record's first bytes, and a HelloRetryRequest ----------------------------------------

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


# the random of a ServerHello that is a HelloRetryRequest (RFC 8446, 4.1.3): SHA-256("HelloRetryRequest")
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
CCS = b"\x14\x03\x03\x00\x01\x01"  # TLS 1.3's middlebox-compatibility change_cipher_spec
_HRR_PREFIX = 5 + 4 + 2 + 32  # record header, handshake header, legacy_version, random
MAX_HELLO_BYTES = 64 * 1024  # a ClientHello not complete within this many bytes is refused while watching
MAX_HELD = 256 * 1024  # bytes held after a ClientHello (TLS 1.3 early data) until the server's first record


def hello_retry(data: bytes | bytearray | memoryview) -> bool | str | None:
    """From the first bytes a server sent after a ClientHello: True if they are a
    HelloRetryRequest, False if they are not (an alert, a ServerHello, another message, anything not
    a TLS handshake record: no server reads a second hello after those), None while the first 43
    bytes of a ServerHello's record are still arriving, ``UNSURE`` for a ServerHello record too
    short to hold its random (fragmented; an OpenSSL server sends none)."""
    n = len(data)
    if not n:
        return None
    if data[0] != 0x16 or (n > 1 and data[1] != 3) or (n > 5 and data[5] != 2):
        return False
    if n > 5 and int.from_bytes(data[3:5], "big") < _HRR_PREFIX - 5:
        return UNSURE
    if n < _HRR_PREFIX:
        return None
    return bytes(data[11:_HRR_PREFIX]) == HRR_RANDOM


def hello_end(data: bytes | bytearray | memoryview, scan: list | None = None) -> int | str | None:
    """Where the ClientHello at the start of ``data`` ends: after the handshake record that
    completes it (it may span several).  None while it is arriving, ``UNSURE`` for anything else:
    not handshake records, or a record that holds more than the hello (a second message the
    server may read after a HelloRetryRequest).  ``scan``: where a caller feeding ``data`` a
    read at a time got to (updated here after each whole record, ``[0, b"", -1, 0]`` at first):
    each record is read once, not once per read (a hello in 1-byte records, a byte a time)."""
    pos, head, need, have = scan if scan is not None else (0, b"", -1, 0)
    while True:
        if len(data) < pos + 5:
            return None if len(data) - pos < 2 or (data[pos] == 0x16 and data[pos + 1] == 3) else UNSURE
        if data[pos] != 0x16 or data[pos + 1] != 3:
            return UNSURE
        size = int.from_bytes(data[pos + 3:pos + 5], "big")
        if size == 0 or size > 16384:
            return UNSURE
        end = pos + 5 + size
        if len(data) < end:
            return None
        if need < 0:
            head += bytes(data[pos + 5:min(end, pos + 5 + 4 - len(head))])
            if len(head) == 4:
                if head[0] != 1:
                    return UNSURE
                need = 4 + int.from_bytes(head[1:4], "big")
        have += size
        if need >= 0 and have >= need:
            return end if have == need else UNSURE
        if end > MAX_HELLO_BYTES:
            return UNSURE
        pos = end
        if scan is not None:
            scan[:] = (pos, head, need, have)


# phases of a RetryWatch
_HELLO, _AFTER, _HOLDING, _RETRY, _DONE = range(5)


class RetryWatch:
    """A tunnel relayed once its first ClientHello's name was checked, watched until the server's
    first record shows whether it asks for a second ClientHello (TLS 1.3's HelloRetryRequest).
    The client may send a second one naming another host, which the server would serve; so:

    - the client's bytes pass until its first ClientHello is complete (``up``);
    - what follows it is held while the server has not answered, if it may be TLS (a record's
      content type); other bytes end the watch (a server reads no record after them);
    - the server's first record (``down``): not an HRR, the watch ends and the held bytes go; an
      HRR, the held bytes wait for the second ClientHello (after one change_cipher_spec record),
      whose name (``tls_sni``) must be the first one's, normalized, or its absence the same.

    ``up`` and ``down`` return the client's bytes that may go to the server now (b"": none), or
    None: refuse the tunnel (``why`` says why).  ``done``: nothing more to watch.  A few
    microseconds per tunnel: most end at the server's first bytes, not an HRR."""

    __slots__ = ("_first", "_head", "_phase", "_scan", "_server", "held", "why")

    def __init__(self) -> None:
        self._phase = _HELLO
        self._head: bytes | bytearray = b""  # the first ClientHello's bytes so far (a read at a time)
        self._scan: list = [0, b"", -1, 0]  # how far hello_end read them
        self._first = b""
        self._server = b""  # the server's first bytes, until its first record is known
        self.held = bytearray()
        self.why = ""

    @property
    def done(self) -> bool:
        return self._phase == _DONE

    @property
    def holding(self) -> bool:
        """Bytes of the client after its hello are held (or, after an HRR, would be)."""
        return self._phase in (_HOLDING, _RETRY)

    def eof(self) -> bool:
        """The client ended its side: False (refuse) while bytes after its hello are held; a TLS
        client waits for the server's answer before it sends more, and never half-closes there."""
        if self.holding:
            self._refuse("refused: the client ended its side with bytes after its TLS ClientHello held")
            return False
        return True

    def _refuse(self, why: str) -> None:
        self.why = why
        self._phase = _DONE
        self.held.clear()
        self._head = self._first = self._server = b""

    def up(self, data: bytes) -> bytes | None:
        phase = self._phase
        if phase == _DONE:
            return data
        if phase == _HELLO:
            if self._head:
                self._head += data  # in place: a hello a byte at a time is not copied once per byte
                head = self._head
            else:
                head = data
            end = hello_end(head, self._scan)
            if end is None:
                if len(head) > MAX_HELLO_BYTES:
                    self._refuse("refused: its TLS ClientHello is too long to read")
                    return None
                if not self._head:
                    self._head = bytearray(data)
                return data
            if end == UNSURE:
                self._refuse("refused: its TLS ClientHello cannot be read")
                return None
            assert isinstance(end, int)
            self._first, self._head = bytes(head[:end]), b""
            passed = len(data) - (len(head) - end)
            self._phase = _AFTER
            rest = self._after(data[passed:])
            return None if rest is None else data[:passed] + rest
        if phase == _AFTER:
            return self._after(data)
        self.held += data
        if len(self.held) > MAX_HELD:
            self._refuse("refused: too many bytes after its TLS ClientHello before the server answered")
            return None
        return self._second() if phase == _RETRY else b""

    def _after(self, data: bytes) -> bytes | None:
        if not data:
            return b""
        if data[0] in RECORD_TYPES:
            self._phase = _HOLDING
            return self.up(data)
        # not a record: an OpenSSL server reads no record after it (after an HRR neither), so no
        # second hello either
        self._phase = _DONE
        self._head = self._first = self._server = b""
        return data

    def down(self, data: bytes) -> bytes | None:
        if self._phase == _DONE:
            return b""
        server = self._server + data[:_HRR_PREFIX - len(self._server)]
        verdict = hello_retry(server)
        if verdict is None:
            self._server = server
            return b""
        if verdict == UNSURE:
            self._refuse("refused: the server's first TLS record after the ClientHello cannot be read")
            return None
        if verdict is False:
            held = bytes(self.held)
            self._phase = _DONE
            self.held.clear()
            self._head = self._first = self._server = b""
            return held
        if self._phase not in (_AFTER, _HOLDING):
            self._refuse("refused: a HelloRetryRequest before the ClientHello was whole")
            return None
        self._server = b""
        self._phase = _RETRY
        return self._second()

    def _second(self) -> bytes | None:
        """After an HRR: the held bytes once they hold the whole second ClientHello, and it names
        what the first one named."""
        held = self.held
        start = 0
        if held[:len(CCS)] == CCS[:len(held)]:
            if len(held) < len(CCS):
                return b""
            start = len(CCS)
        if len(held) < start + 5:
            return b"" if held[start:start + 2] in (b"", b"\x16", b"\x16\x03") else self._refused_second()
        end = start + 5 + int.from_bytes(held[start + 3:start + 5], "big")
        if held[start] != 0x16 or held[start + 1] != 3:
            return self._refused_second()
        if len(held) < end:
            return b""
        second = tls_sni(bytes(held[start:end]))
        first = tls_sni(self._first)
        if second is None or second == UNSURE or first is None or first == UNSURE:
            return self._refused_second()
        one, two = first[0], second[0]
        if (normalize(one) if one else None) != (normalize(two) if two else None):
            self._refuse(f"refused: its second TLS ClientHello (after a HelloRetryRequest) names "
                         f"{normalize(two) if two else 'no host'}, not {normalize(one) if one else 'no host'}")
            return None
        out = bytes(held)
        self._phase = _DONE
        self.held.clear()
        self._first = b""
        return out

    def _refused_second(self) -> bytes | None:
        self._refuse("refused: its second TLS ClientHello (after a HelloRetryRequest) cannot be read")
        return None
