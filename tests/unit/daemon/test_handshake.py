"""daemon/handshake.py: the front door's strict parsers accept the plain case only, and say
None / UNSURE / -1 (mitmproxy's path) for everything else.  ``tls_sni`` agrees with
mitmproxy's own ClientHello parser on real hellos made by Python's ``ssl``."""

import contextlib
import ipaddress

import pytest
from mitmproxy.proxy.layers.tls import parse_client_hello

from hush.daemon import handshake
from hush.daemon.handshake import (
    SOCKS5_GRANTED,
    UNSURE,
    connect_head_end,
    parse_connect,
    socks5_greeting,
    socks5_request,
    tls_sni,
)
from tests.tls import client_hello

FIELDS, BYTES = 100, 8192
OK11 = b"HTTP/1.1 200 Connection established\r\n\r\n"


def head(target: str = "example.com:443", *fields: str, version: str = "HTTP/1.1", method: str = "CONNECT") -> bytes:
    return (f"{method} {target} {version}\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n").encode("utf-8")


def parse(data: bytes, fields: int = FIELDS, size: int = BYTES):
    return parse_connect(data, fields, size)


# -- CONNECT ---------------------------------------------------------------------------------------

def test_the_plain_connect_is_read_with_mitmproxys_reply():
    fields = ("Host: example.com:443", "User-Agent: curl/8.5.0", "Proxy-Connection: keep-alive")
    t = parse(head("example.com:443", *fields))
    assert (t.host, t.port, t.user_agent, t.reply) == ("example.com", 443, "curl/8.5.0", OK11)
    assert parse(head("127.0.0.1:8443")) == handshake.Target("127.0.0.1", 8443, None, OK11)
    assert parse(head("example.com:443", "Host: example.com")).host == "example.com"  # Host without the port
    assert parse(head("127.0.0.1:1", version="HTTP/1.0")).reply == b"HTTP/1.0 200 Connection established\r\n\r\n"
    assert parse(head("example.com:65535")).port == 65535
    assert parse(head("xn--bcher-kva.de:443")).host == "xn--bcher-kva.de"  # already the ASCII form


def test_ipv6_in_brackets_is_taken_as_the_bare_address():
    assert parse(head("[::1]:443")).host == "::1"
    assert parse(head("[::1]:443", "Host: [::1]:443")).host == "::1"
    assert parse(head("::1:443")) is None  # no brackets: which colon is the port's?
    assert parse(head("[::1:443")) is None
    assert parse(head("[127.0.0.1]:443")) is None  # brackets hold IPv6 only


@pytest.mark.parametrize("data", [
    head(method="connect"),
    head(method="Connect"),
    head("http://example.com:443/"),
    head("http://example.com:443"),
    head("example.com"),
    head("example.com:"),
    head("example.com:0"),
    head("example.com:65536"),
    head("example.com:99999"),
    head("example.com:+443"),
    head("example.com:-443"),
    head("example.com:0443"),
    head("example.com: 443"),
    head("example.com:443", version="HTTP/2.0"),
    head("example.com:443", version="HTTP/1.1 "),
    b" " + head(),
    b"\r\n" + head(),
    head().replace(b"CONNECT ", b"CONNECT  "),
    head().replace(b"\r\n", b"\n", 1),  # a bare LF ending the request line
], ids=lambda d: repr(d[:40]))
def test_a_request_line_not_the_plain_one_is_mitmproxys(data):
    assert parse(data) is None


@pytest.mark.parametrize("fields", [
    ["Host: other.com:443"],
    ["Host: other.com"],
    ["Host: [::1]:443"],
    ["Host: EXAMPLE.com:443"],  # another spelling: mitmproxy's path has the rules for it
    ["Host: example.com:443", "Host: example.com:443"],  # duplicate Host, even equal
    ["Host: example.com:443", "host: other.com:443"],
    ["User-Agent: a", "User-Agent: b"],
    ["User-Agent: a", "user-agent: a"],
    ["User-Agent: a\x01b"],  # not printable
    ["X-A: 1", " folded"],  # obs-fold
    ["X-A: 1", "\tfolded"],
    ["X-A: 1\nX-B: 2"],  # a bare LF inside the head
    ["X-A: 1\rX-B: 2"],
    ["X-A : 1"],  # a space before the colon
    ["no colon"],
    [": empty name"],
    ["X-A: a\x00b"],
], ids=repr)
def test_header_fields_not_the_plain_ones_are_mitmproxys(fields):
    assert parse(head("example.com:443", *fields)) is None


def test_bytes_after_the_head_are_mitmproxys():
    assert parse(head() + b"G") is None
    assert parse(head() + b"\x16\x03\x01") is None
    assert parse(head() + b"\r\n") is None
    assert parse(head()[:-2]) is None  # not complete


@pytest.mark.parametrize("host", [
    "0x7f.1", "127.1", "0", "0.0.0.0", "2130706433", "0177.0.0.1", "127.000.000.001",
    "Example.com", "EXAMPLE.COM", "example.com.", "bücher.de", "b\u00fccher.de",
    "[::ffff:127.0.0.1]", "[::FFFF:7f00:1]", "[0:0::1]", "[::0001]",
    "-example.com", "exa mple.com", "example..com", ".example.com", "",
])
def test_hosts_not_in_the_form_the_decision_takes_are_mitmproxys(host):
    try:
        data = head(f"{host}:443")
    except UnicodeEncodeError:  # pragma: no cover
        return
    assert parse(data) is None, host


@pytest.mark.parametrize("host", ["::1%1", "::1%lo", "fe80::1%eth0", "fe80::1%25eth0"])
def test_an_ipv6_zone_id_is_mitmproxys(host):
    # normalize() keeps a zone (policy.hosts.refusal refuses it on mitmproxy's path): not the plain case
    assert parse(head(f"[{host}]:443")) is None
    assert parse(head("[::1]:443", f"Host: [{host}]:443")) is None


def test_the_header_limits_are_the_intakes():
    data = head("example.com:443", *(f"X-{i}: 1" for i in range(10)))
    assert parse(data, fields=10) is not None
    assert parse(data, fields=9) is None
    assert parse(data, size=len(data)) is not None
    assert parse(data, size=len(data) - 1) is None


def test_connect_head_end():
    data = head()
    assert connect_head_end(data) == len(data)
    assert connect_head_end(data + b"\x16\x03") == len(data)
    assert connect_head_end(bytearray(data[:-1])) == -1
    assert connect_head_end(b"") == -1


# -- SOCKS5 ----------------------------------------------------------------------------------------

def test_socks5_greeting_offering_no_authentication():
    assert socks5_greeting(b"\x05\x01\x00") == 3
    assert socks5_greeting(b"\x05\x02\x02\x00") == 4
    assert socks5_greeting(bytearray(b"\x05\x01\x00\x05\x01\x00")) == 3  # the request following: not counted
    for partial in (b"", b"\x05", b"\x05\x01", b"\x05\x02\x00"):
        assert socks5_greeting(partial) == 0, partial


@pytest.mark.parametrize("data", [b"\x04", b"\x04\x01", b"\x05\x00", b"\x05\x01\x02", b"\x05\x02\x01\x02",
                                  b"CONNECT", b"\x16\x03\x01"])
def test_socks5_greeting_otherwise_is_mitmproxys(data):
    assert socks5_greeting(data) is None


def request(atyp: bytes, address: bytes, port: int = 443, command: int = 1) -> bytes:
    return bytes([5, command, 0]) + atyp + address + port.to_bytes(2, "big")


def name(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


def test_socks5_connect_requests():
    v4 = request(b"\x01", bytes([127, 0, 0, 1]))
    assert socks5_request(v4) == (10, handshake.Target("127.0.0.1", 443, None, SOCKS5_GRANTED))
    assert socks5_request(bytearray(v4 + b"\x16\x03")) == (10, handshake.Target("127.0.0.1", 443, None, SOCKS5_GRANTED))
    v6 = request(b"\x04", ipaddress.ip_address("::1").packed, 8443)
    assert socks5_request(memoryview(v6)) == (22, handshake.Target("::1", 8443, None, SOCKS5_GRANTED))
    domain = request(b"\x03", name("example.com"))
    assert socks5_request(domain) == (len(domain), handshake.Target("example.com", 443, None, SOCKS5_GRANTED))


def test_socks5_partial_requests_wait():
    for full in (request(b"\x01", bytes([127, 0, 0, 1])), request(b"\x04", bytes(15) + b"\x01"),
                 request(b"\x03", name("example.com"))):
        for n in range(len(full)):
            assert socks5_request(full[:n]) == (0, None), (full, n)


@pytest.mark.parametrize("data", [
    request(b"\x01", bytes([127, 0, 0, 1]), command=2),  # BIND
    request(b"\x01", bytes([127, 0, 0, 1]), command=3),  # UDP ASSOCIATE
    b"\x05\x01\x01\x01\x7f\x00\x00\x01\x01\xbb",  # a reserved byte that is not 0
    b"\x04\x01\x00\x01\x7f\x00\x00\x01\x01\xbb",
    request(b"\x05", bytes([127, 0, 0, 1])),  # an unknown address type
    request(b"\x01", bytes([127, 0, 0, 1]), port=0),
    request(b"\x01", bytes(4)),  # 0.0.0.0
    request(b"\x04", ipaddress.ip_address("::ffff:127.0.0.1").packed),
    request(b"\x03", name("Example.com")),
    request(b"\x03", name("example.com.")),
    request(b"\x03", name("127.1")),
    request(b"\x03", name("0x7f.1")),
    request(b"\x03", name("::1")),
    request(b"\x03", name("::1%1")),
    request(b"\x03", name("fe80::1%eth0")),
    request(b"\x03", b"\x00"),
    request(b"\x03", b"\x02\xc3\xbc"),  # not ASCII
    b"\x05\x02",
    b"\x05\x01\x01",
], ids=repr)
def test_socks5_requests_not_the_plain_connect_are_mitmproxys(data):
    assert socks5_request(data) == (-1, None)


# -- the ClientHello -------------------------------------------------------------------------------

def pieces(record: bytes) -> tuple[bytes, bytes, list[tuple[int, bytes]]]:
    """A one-record ClientHello split into (its body up to the extensions, its record header's
    version bytes, its extensions)."""
    assert record[0] == 0x16 and record[5] == 1
    body = record[9:]
    pos = 34
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 1 + body[pos]
    start, end = pos + 2, pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
    assert end == len(body)
    extensions, p = [], start
    while p < end:
        kind, length = int.from_bytes(body[p:p + 2], "big"), int.from_bytes(body[p + 2:p + 4], "big")
        extensions.append((kind, body[p + 4:p + 4 + length]))
        p += 4 + length
    return body[:pos], record[1:3], extensions


def assemble(prefix: bytes, version: bytes, extensions: list[tuple[int, bytes]]) -> bytes:
    raw = b"".join(k.to_bytes(2, "big") + len(v).to_bytes(2, "big") + v for k, v in extensions)
    body = prefix + len(raw).to_bytes(2, "big") + raw
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16" + version + len(message).to_bytes(2, "big") + message


def sni_extension(*names: str) -> bytes:
    entries = b"".join(b"\x00" + len(n).to_bytes(2, "big") + n.encode() for n in names)
    return len(entries).to_bytes(2, "big") + entries


@pytest.mark.parametrize("server_name,alpn", [
    (None, None), ("example.com", None), ("example.com", ["h2", "http/1.1"]), (None, ["http/1.1"]),
    ("127.0.0.1", None),  # an address: ssl sends no SNI
    ("blocked.hushtest", None), ("xn--bcher-kva.de", None), ("a-b.c_d.example", None),
])
def test_tls_sni_agrees_with_mitmproxys_parser(server_name, alpn):
    hello = client_hello(server_name, alpn)
    assert tls_sni(hello) == (parse_client_hello(hello).sni,)
    assert tls_sni(hello)[0] == (server_name if server_name and not server_name[0].isdigit() else None)


def test_tls_sni_of_a_rebuilt_hello_is_still_mitmproxys():
    # the test's own assembly is right: a hello taken apart and put back is read the same by both
    hello = client_hello("example.com", ["h2"])
    assert assemble(*pieces(hello)) == hello
    prefix, version, extensions = pieces(hello)
    renamed = assemble(prefix, version, [(k, sni_extension("Other.Example") if k == 0 else v) for k, v in extensions])
    assert tls_sni(renamed) == ("Other.Example",) == (parse_client_hello(renamed).sni,)
    no_extensions = assemble(prefix, version, [])
    assert tls_sni(no_extensions) == (None,) == (parse_client_hello(no_extensions).sni,)


def test_tls_sni_waits_for_the_rest_of_the_record():
    hello = client_hello("example.com")
    for n in (0, 1, 2, 4, 5, 6, 100, len(hello) - 1):
        assert tls_sni(hello[:n]) is None, n


def two_records(hello: bytes, at: int = 40) -> bytes:
    message = hello[5:]
    first, second = message[:at], message[at:]
    return (b"\x16" + hello[1:3] + len(first).to_bytes(2, "big") + first
            + b"\x16" + hello[1:3] + len(second).to_bytes(2, "big") + second)


def test_tls_sni_is_unsure_of_anything_but_one_plain_record():
    hello = client_hello("example.com")
    prefix, version, extensions = pieces(hello)
    split = two_records(hello)
    assert parse_client_hello(split).sni == "example.com"  # mitmproxy reads it; the front door leaves it
    assert tls_sni(split) == UNSURE
    assert tls_sni(split[:5 + 40]) == UNSURE  # the first record alone: the hello goes on past it
    assert tls_sni(hello + b"\x17") == UNSURE  # trailing bytes
    assert tls_sni(hello + hello) == UNSURE
    duplicated = [*extensions, extensions[-1]]
    assert tls_sni(assemble(prefix, version, duplicated)) == UNSURE
    two_snis = [(k, v) for k, v in extensions if k != 0] + [(0, sni_extension("example.com")),
                                                            (0, sni_extension("blocked.hushtest"))]
    assert tls_sni(assemble(prefix, version, two_snis)) == UNSURE
    assert tls_sni(assemble(prefix, version, [*extensions, (0xFE0D, b"\x00" * 16)])) == UNSURE  # ECH
    assert tls_sni(assemble(prefix, version, [(k, sni_extension("a.example", "b.example") if k == 0 else v)
                                              for k, v in extensions])) == UNSURE  # two names in one
    assert tls_sni(assemble(prefix, version, [(k, sni_extension("example.com.") if k == 0 else v)
                                              for k, v in extensions])) == UNSURE
    assert tls_sni(assemble(prefix, version, [(k, sni_extension("") if k == 0 else v)
                                              for k, v in extensions])) == UNSURE


def test_tls_sni_is_unsure_of_truncated_lengths():
    hello = client_hello("example.com")
    prefix, version, extensions = pieces(hello)
    good = assemble(prefix, version, extensions)
    ext_start = 9 + len(prefix)  # the extensions' length
    longer = bytearray(good)
    longer[ext_start:ext_start + 2] = (int.from_bytes(good[ext_start:ext_start + 2], "big") + 1).to_bytes(2, "big")
    assert tls_sni(bytes(longer)) == UNSURE
    shorter = bytearray(good)
    shorter[ext_start:ext_start + 2] = (int.from_bytes(good[ext_start:ext_start + 2], "big") - 1).to_bytes(2, "big")
    assert tls_sni(bytes(shorter)) == UNSURE
    # an extension claiming more than there is
    sni_at = good.index(sni_extension("example.com"))
    bad = bytearray(good)
    bad[sni_at - 2:sni_at] = (0x4000).to_bytes(2, "big")
    assert tls_sni(bytes(bad)) == UNSURE
    # the handshake message's length disagreeing with the record's
    wrong = bytearray(good)
    wrong[6:9] = (int.from_bytes(good[6:9], "big") - 1).to_bytes(3, "big")
    assert tls_sni(bytes(wrong)) == UNSURE
    # a record too long for TLS
    assert tls_sni(b"\x16\x03\x01\x40\x01" + bytes(0x4001)) == UNSURE
    assert tls_sni(b"\x16\x03\x01\x00\x00") == UNSURE
    # no cipher suites, an odd number of their bytes
    body = bytearray(good)
    sid = 9 + 34
    suites_at = sid + 1 + good[sid]
    body[suites_at:suites_at + 2] = b"\x00\x01"
    assert tls_sni(bytes(body)) == UNSURE


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n", b"\x00", b"SSH-2.0-OpenSSH_9.6\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x17\x03\x03\x00\x05hello", b"\x16\x02\x00\x00\x05hello",
    b"\x16\x03\x01\x00\x08\x02\x00\x00\x04" + b"\xff" * 4,  # not a ClientHello
    b"\x16\x03\x01\x00\x08\x01\x00\x00\x04" + b"\xff" * 4,  # a ClientHello that does not parse
    b"\x16\x03\x01\x00\x20\x01\x00\x00\x1c" + b"\xff" * 28,
])
def test_tls_sni_is_unsure_of_what_is_not_tls(data):
    assert tls_sni(data) == UNSURE


# -- a TLS record's start, a HelloRetryRequest, a second ClientHello --------------------------------

def server_answer(hello: bytes, retry: bool = True) -> bytes:
    """What an OpenSSL TLS 1.3 server answers to ``hello``: a HelloRetryRequest if it accepts only
    secp384r1 (``retry``) and the hello's key share is x25519's (Python's), else its ServerHello."""
    import ssl

    import trustme

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("a.example").configure_cert(context)
    if retry:
        context.set_ecdh_curve("secp384r1")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(hello)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def second_hello(server_name: str | None) -> bytes:
    """A ClientHello whose key share is secp384r1's: what a client answering that HRR sends."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_ecdh_curve("secp384r1")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(("data", "found"), [
    (b"", None), (b"\x14", None), (b"\x14\x03", None), (b"\x14\x03\x03", True), (b"\x14\x03\x03\x00\x00", True),
    (b"\x15\x03\x01", True), (b"\x16\x03\x05", True), (b"\x17\x03\x03", True), (b"\x18\x03\x00", True),
    (b"\x13\x03\x03", False), (b"\x19\x03\x03", False), (b"\x14\x02", False), (b"\x16\x00", False),
    (b"GET / HTTP/1.1", False), (b"\x80\x2e\x01", False),
])
def test_tls_record_start(data, found):
    assert handshake.tls_record_start(data) is found


def test_hello_retry_tells_a_real_hrr_from_a_real_server_hello():
    hello = client_hello("a.example")
    retry, plain = server_answer(hello), server_answer(hello, retry=False)
    assert retry[11:43] == handshake.HRR_RANDOM and plain[11:43] != handshake.HRR_RANDOM
    assert handshake.hello_retry(retry) is True and handshake.hello_retry(plain) is False
    for n in range(1, 43):  # the first 43 bytes decide; fewer wait
        assert handshake.hello_retry(retry[:n]) is None and handshake.hello_retry(plain[:n]) is None
    assert handshake.hello_retry(retry[:43]) is True
    assert handshake.hello_retry(b"") is None
    assert handshake.hello_retry(b"\x15\x03\x03\x00\x02\x02\x28") is False  # an alert
    assert handshake.hello_retry(b"SSH-2.0-x\r\n") is False  # not TLS: no second hello is read


@pytest.mark.parametrize(("data", "found"), [
    (b"\x16\x02", False), (b"\x16\x03\x03\x00\x50\x01", False),  # not TLS; a ClientHello, not a ServerHello
    (b"\x16\x03\x03\x00\x50\x0b" + bytes(40), False),  # another message: no server reads a second hello then
    (b"\x16\x03\x03 server", False),
    (b"\x16\x03\x03\x00\x10", None),  # its message type still to come
    (b"\x16\x03\x03\x00\x10\x02", UNSURE), (b"\x16\x03\x03\x00\x25\x02" + bytes(40), UNSURE),  # a fragment
])
def test_hello_retry_of_a_first_record_that_is_no_whole_server_hello(data, found):
    assert handshake.hello_retry(data) == found


def test_hello_end_over_one_record_or_several():
    hello = client_hello("a.example")
    assert handshake.hello_end(hello) == len(hello)
    assert handshake.hello_end(hello + b"\x17\x03\x03") == len(hello)  # what follows is not its
    assert all(handshake.hello_end(hello[:n]) is None for n in range(len(hello)))
    body = hello[5:]
    split = b"\x16\x03\x01" + (100).to_bytes(2, "big") + body[:100] + \
        b"\x16\x03\x01" + (len(body) - 100).to_bytes(2, "big") + body[100:]
    assert handshake.hello_end(split) == len(split)
    assert handshake.hello_end(split[:110]) is None
    tiny = b"".join(b"\x16\x03\x01\x00\x01" + body[i:i + 1] for i in range(len(body)))  # its header over 4 records
    assert handshake.hello_end(tiny) == len(tiny)


@pytest.mark.parametrize("data", [
    b"\x14\x03\x03\x00\x01\x01", b"\x17\x03\x03\x00\x05hello", b"\x16\x03\x03\x00\x00",
    b"\x16\x03\x03\x00\x05\x02\x00\x00\x01\x00",  # not a ClientHello
])
def test_hello_end_is_unsure_of_what_is_not_a_hello_first(data):
    assert handshake.hello_end(data) == UNSURE


def test_hello_end_is_unsure_of_a_record_holding_more_than_the_hello():
    hello, other = client_hello("a.example"), second_hello("b.example")
    both = hello[5:] + other[5:]
    assert handshake.hello_end(b"\x16\x03\x01" + len(both).to_bytes(2, "big") + both) == UNSURE


def watch_through(watch, hello: bytes, after: bytes = b""):
    """The client's hello (and ``after``) through the watch: what it let through."""
    return watch.up(hello + after)


@pytest.mark.parametrize("ccs", [True, False])
@pytest.mark.parametrize("pipelined", [True, False])
@pytest.mark.parametrize(("first", "second", "passes"), [
    (None, None, True), ("a.example", "a.example", True), ("a.example", "A.EXAMPLE", True),
    (None, "b.example", False), ("a.example", "b.example", False), ("a.example", None, False),
    (None, "a.example", False),
])
def test_a_retry_watch_lets_a_second_hello_through_only_with_the_first_ones_name(first, second, passes, ccs,
                                                                                 pipelined):
    hello = client_hello(first)
    again = (handshake.CCS if ccs else b"") + second_hello(second.lower() if second else None)
    if second and second != second.lower():  # the same name spelt otherwise: normalized
        again = again.replace(second.lower().encode(), second.encode())
    retry = server_answer(hello)
    watch = handshake.RetryWatch()
    if pipelined:
        assert watch.up(hello + again) == hello  # the rest held while the server has not answered
        released = watch.down(retry)
    else:
        assert watch.up(hello) == hello
        assert watch.down(retry) == b""  # nothing held yet: the second hello is waited for
        released = b""
        for i in range(0, len(again), 7):  # arriving in pieces
            out = watch.up(again[i:i + 7])
            if out is None:
                released = None
                break
            released += out
    if passes:
        assert released == again and watch.done
        assert watch.up(b"more") == b"more" and watch.down(b"anything") == b""
    else:
        assert released is None and watch.why.startswith("refused: its second TLS ClientHello")
        assert (second or "no host") in watch.why and watch.done and not watch.held


def test_a_retry_watch_ends_at_a_server_hello_that_is_no_retry_and_lets_the_held_bytes_go():
    hello = client_hello("a.example")
    early = handshake.CCS + b"\x17\x03\x03\x00\x05early"
    watch = handshake.RetryWatch()
    assert watch.up(hello + early[:3]) == hello and watch.holding
    assert watch.up(early[3:]) == b""
    plain = server_answer(hello, retry=False)
    assert watch.down(plain[:20]) == b"" and not watch.done  # the first 43 bytes decide
    assert watch.down(plain[20:]) == early and watch.done and not watch.holding
    watch = handshake.RetryWatch()
    assert watch.up(hello) == hello and watch.down(b"\x15\x03\x03\x00\x02\x02\x28") == b"" and watch.done


def test_a_retry_watch_ends_at_bytes_after_the_hello_that_are_no_tls_record():
    # an OpenSSL server reads no record after them, so no second hello either: they go, and the
    # watch ends (a tunnel carrying something else after a hello is not held up)
    hello = client_hello(None)
    watch = handshake.RetryWatch()
    assert watch.up(hello + b"GET") == hello + b"GET" and watch.done and watch.up(b" /") == b" /"
    assert watch.down(server_answer(hello)) == b""


def test_a_retry_watch_refuses_a_retry_before_the_hello_is_whole():
    hello = client_hello(None)
    watch = handshake.RetryWatch()
    assert watch.up(hello[:20]) == hello[:20]
    assert watch.down(server_answer(hello)) is None and "before the ClientHello" in watch.why


def test_a_retry_watch_passes_the_hello_as_it_arrives_and_refuses_what_it_cannot_read():
    hello = client_hello(None)
    watch = handshake.RetryWatch()
    assert watch.up(hello[:10]) == hello[:10] and watch.up(hello[10:]) == hello[10:]
    assert handshake.RetryWatch().up(b"\x16\x03\x03\x00\x00") is None  # an empty handshake record
    watch = handshake.RetryWatch()
    assert watch.up(hello) == hello
    assert watch.down(b"\x16\x03\x03\x00\x10\x02") is None and "cannot be read" in watch.why
    watch = handshake.RetryWatch()  # after the retry: no hello but another record
    assert watch.up(hello) == hello and watch.down(server_answer(hello)) == b""
    assert watch.up(b"\x17\x03\x03\x00\x01x") is None and "cannot be read" in watch.why
    watch = handshake.RetryWatch()  # too much held before the server answers
    assert watch.up(hello + b"\x17\x03\x03") == hello
    assert watch.up(b"x" * handshake.MAX_HELD) is None and "too many bytes" in watch.why


def test_hello_end_resumed_a_read_at_a_time_reads_each_record_once_and_agrees():
    """A caller feeding the hello a read at a time passes ``scan``: the records already read are not
    read again (a hello in 1-byte records sent a byte at a time was quadratic), and every answer is the
    one a whole parse gives."""
    body = client_hello("a.example")[5:]
    tiny = b"".join(b"\x16\x03\x01\x00\x01" + body[i:i + 1] for i in range(len(body)))
    scan = [0, b"", -1, 0]
    for n in range(1, len(tiny) + 1):
        assert handshake.hello_end(tiny[:n], scan) == handshake.hello_end(tiny[:n])
        assert 0 <= n - scan[0] <= 6  # resumes at the last whole record read, never further back
    watch = handshake.RetryWatch()
    passed = b"".join(watch.up(tiny[i:i + 1]) or b"" for i in range(len(tiny)))
    assert passed == tiny and not watch.why  # a byte at a time, all of it, then the watch goes on
