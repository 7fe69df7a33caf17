"""Audit shipping: the fields and their redaction, RFC 5424 and its framing,
journald's native protocol, the bounded queue, and the thread against real
loopback sockets (a collector that is down, that closes, that comes back)."""

import contextlib
import json
import os
import re
import socket
import stat
import struct
import threading
import time

import pytest

from hush.daemon.audit import ship
from hush.daemon.audit.ship import (
    SD_ID,
    Shipper,
    Target,
    flatten,
    journal_entry,
    keyed_hash,
    load_key,
    octet_frame,
    parse_journal_entry,
    sd_escape,
    ship_fields,
    syslog_message,
)

KEY = b"k" * 32


def record(**over):
    base = {
        "ts": 1700000000.25, "ended": 1700000000.5, "app": "firefox", "listener": "127.0.0.1:8001", "level": "strict",
        "method": "GET", "scheme": "https", "host": "mail.example.org", "port": 443, "site": "example.org",
        "url": "https://mail.example.org/inbox?q=secret#frag", "kind": "document", "decision": "allow",
        "rule": "policies/firefox.yaml:12", "policy_version": "abc123", "note": None, "status": 200,
        "ip_exposed": True, "egress": "direct", "route": "direct", "dest": "93.184.216.34:443",
        "carried": {"user_agent": "UA/1", "cookies": 2, "referer": "https://example.org/x?y", "accept_language": None,
                    "range": None, "authorization": False},
        "sent": None, "bytes_up": 0, "bytes_down": 1234, "duration_ms": 12.5, "error": None,
        "tor_isolation": "firefox:example.org", "tor_circuit": "42", "tor_exit": None, "held_ms": None,
        "superseded_by": None, "truncated": None, "process": "firefox", "exe": "/usr/bin/firefox", "conn": None,
    }
    base.update(over)
    return base


def fields(mode, **over):
    return ship_fields(flatten(record(**over)), mode, KEY)


# -- redaction ------------------------------------------------------------------------


def test_site_redaction_ships_the_registrable_domain_only():
    f = fields("site")
    assert f["site"] == "example.org" and f["url"] == "https://example.org/"
    assert "host" not in f and "dest" not in f
    assert "mail.example.org" not in json.dumps(f) and "secret" not in json.dumps(f)
    assert f["carried"] == "cookies,referer,user_agent"  # which identifiers, not their values
    assert "UA/1" not in json.dumps(f)
    assert "tor_isolation" not in f and "tor_circuit" not in f  # the isolation key names the site
    assert f["app"] == "firefox" and f["decision"] == "allow" and f["ip_exposed"] == "1" and f["schema"] == "1"


def test_hash_redaction_ships_no_name_but_counts_repeats():
    a, b = fields("hash"), fields("hash", url="https://mail.example.org/other")
    other = fields("hash", host="www.example.net", site="example.net", url="https://www.example.net/")
    text = json.dumps(a)
    assert "example" not in text and "93.184" not in text
    assert a["host_hash"] == b["host_hash"] == keyed_hash(KEY, "mail.example.org")
    assert a["site_hash"] == keyed_hash(KEY, "example.org") != other["site_hash"]
    assert re.fullmatch(r"[0-9a-f]{32}", a["host_hash"])
    # another install's key: other hashes (a list of hashes of popular sites does not transfer)
    assert ship_fields(flatten(record()), "hash", b"x" * 32)["host_hash"] != a["host_hash"]


def test_hash_needs_a_key():
    with pytest.raises(ValueError, match="needs a key"):
        ship_fields(flatten(record()), "hash", None)


# What a security review shipped in clear under site and hash: names that no
# pattern for a host name in free text recognises.  Under site and hash an error
# or a note is shipped as its class (ship.ERROR_CLASSES), never its text.
LEAKY = [
    ("error", "refused: the TLS names secret-intranet (block by rule 2 (/home/u/.config/hush/policies/a.yaml:5)), "
              "not 192.0.2.9", "refused-tls-name-blocked"),
    ("error", "refused: the TLS names www.clinic.com.py, not mail.example.org", "refused-tls-name-mismatch"),
    ("error", "hush: no decision permits a direct connection to bücher.example:443", "egress-refused"),
    ("error", "hush: no decision permits a direct connection to xn--bcher-kva.example:443", "egress-refused"),
    ("error", "Server connection to ('10.20.30.40', 443) failed: [Errno 111] Connect call failed "
              "('10.20.30.40', 443)", "connection-failed"),
    ("error", "revoked on reload: policy set v2 decides [2001:db8::7]:443 block by rule 1 (a.yaml:2)",
              "revoked-on-reload"),
    ("error", "secret-intranet said no", "other"),
    ("note", "refused: 'secret-intranet%eth0' carries an IPv6 zone id", "refused-ipv6-zone"),
    ("note", "fail-closed: the connection is not secret-intranet's under policy set v3", "fail-closed-app-changed"),
    ("note", "refused: the TLS names www.clinic.com.py (block by rule 2 (a.yaml:5)), not mail.example.org",
             "refused-tls-name-blocked"),
    ("note", "revoked: клиника.рф", "other"),
]
SECRETS = ("secret-intranet", "clinic", ".py", "bücher", "xn--", "10.20.30.40", "2001:db8", "клиника", "192.0.2.9",
           "example")


@pytest.mark.parametrize("mode", ["site", "hash"])
@pytest.mark.parametrize(("field", "text", "cls"), LEAKY)
def test_site_and_hash_ship_errors_and_notes_as_their_class_only(mode, field, text, cls):
    f = fields(mode, **{field: text})
    assert f[field] == cls and cls in ship.ERROR_CLASSES
    shipped = syslog_message(f, hostname="h", pid=1) + journal_entry(f)
    for secret in SECRETS[:-1] if mode == "site" else SECRETS:  # site ships the record's own site, example.org
        assert secret.encode() not in shipped, secret


@pytest.mark.parametrize("mode", ["full", "no-query"])
def test_full_and_no_query_ship_the_text(mode):
    f = fields(mode, error=LEAKY[0][1], note=LEAKY[-1][1])
    assert f["error"] == LEAKY[0][1] and f["note"] == LEAKY[-1][1]


def test_every_class_is_from_the_closed_vocabulary():
    """Whatever the text (hush's own messages, mitmproxy's, the OS's, nonsense), the class is
    one of ERROR_CLASSES: a short token of letters, digits and hyphens."""
    texts = [t for _, t, _ in LEAKY] + [
        "Connection killed.", "Client disconnected.", "Server disconnected.", "ECONNRESET: Connection reset by peer",
        "ETIMEDOUT: Connection timed out", "[Errno -2] Name or service not known", "tor routing is not loaded",
        "the tunnel has no client connection", "hush: connection from pid 4 (uid 1001) refused",
        "hush failed to apply tor: RuntimeError('x')", "the tunnel's TLS cannot be read: bad record",
        "fail-closed: no policy loaded", "fail-closed: request headers over the limit: 70000 bytes",
        "mitmproxy could not handle the request: boom", "hush: the TLS name a.b was not decided",
        "certificate verify failed", "\x00\n]\"", "a" * 100_000]
    for text in texts:
        got = ship.error_class(text)
        assert got in ship.ERROR_CLASSES and re.fullmatch(r"[a-z][a-z0-9-]*", got), (text[:80], got)
    assert ship.error_class(None) is None and ship.error_class("") is None


def test_no_query_and_full():
    nq = fields("no-query", superseded_by="https://example.org/a?b=c")
    assert nq["url"] == "https://mail.example.org/inbox" and nq["superseded_by"] == "https://example.org/a"
    assert nq["host"] == "mail.example.org" and nq["dest"] == "93.184.216.34:443"
    full = fields("full")
    assert full["url"] == "https://mail.example.org/inbox?q=secret#frag"
    assert json.loads(full["carried"])["user_agent"] == "UA/1"


def test_fields_keep_their_order_and_leave_out_absent_ones():
    f = fields("site")
    assert list(f)[:4] == ["schema", "ts", "ended", "app"]
    assert "note" not in f and "error" not in f and "sent" not in f


# -- RFC 5424 / RFC 6587 -----------------------------------------------------------------


@pytest.mark.parametrize(("value", "escaped"), [
    ('a"b', 'a\\"b'), ("a\\b", "a\\\\b"), ("a]b", "a\\]b"), ('\\"]', '\\\\\\"\\]'), ("plain [ok", "plain [ok"),
])
def test_sd_param_escaping(value, escaped):
    assert sd_escape(value) == escaped


SD_VALUE = r'"((?:[^"\\\]]|\\["\\\]])*)"'


def parse_5424(data: bytes):
    """A strict reading of one RFC 5424 message with one SD-ELEMENT."""
    value = SD_VALUE.replace("((", "(?:(", 1).encode()
    m = re.fullmatch(rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) \[(\S+)((?: [^=\s\]\"]{1,32}=" + value
                     + rb")*)\](?: (.*))?", data, re.S)
    assert m, data
    params = dict((k.decode(), re.sub(r'\\(["\\\]])', r"\1", v.decode()))
                  for k, v in re.findall(rb" ([^=\s\]\"]+)=" + SD_VALUE.encode(), m.group(8)))
    return m, params


def test_syslog_message_is_rfc5424_with_structured_data():
    f = fields("site", error="x", process='bad "quote" \\ and ] bracket')
    data = syslog_message(f, hostname="ws-17", pid=4242)
    m, params = parse_5424(data)
    assert int(m.group(1)) == 1 * 8 + 4  # user facility, warning (it has an error)
    assert m.group(2) == b"2023-11-14T22:13:20.500000Z"  # the record's end
    assert m.group(3) == b"ws-17" and m.group(4) == b"hush" and m.group(5) == b"4242" and m.group(6) == b"audit"
    assert m.group(7).decode() == SD_ID
    assert params == f  # every field, unescaped back to itself
    assert m.group(9).decode().startswith("firefox: allow GET https://example.org/")


def test_priority_by_outcome():
    assert syslog_message(fields("site"), hostname="h", pid=1).startswith(b"<14>1 ")
    assert syslog_message(fields("site", decision="block", egress="none"), hostname="h", pid=1).startswith(b"<13>1 ")


def test_udp_messages_are_bounded():
    f = fields("full", url="https://example.org/" + "a" * 5000, error="e" * 5000, note="n" * 5000)
    data = syslog_message(f, hostname="h", pid=1, limit=2048)
    assert len(data) <= 2048
    _, params = parse_5424(data)
    assert params["app"] == "firefox" and params["decision"] == "allow" and int(params["truncated_fields"]) >= 1


def test_values_are_capped_at_1024_bytes():
    data = syslog_message(fields("full", url="https://example.org/" + "é" * 3000), hostname="h", pid=1)
    _, params = parse_5424(data)
    assert len(params["url"].encode()) <= 1024 and params["url"].endswith("…")


def test_octet_counting_framing():
    assert octet_frame(b"<14>1 - - - - - - x") == b"19 <14>1 - - - - - - x"
    assert octet_frame("é".encode()) == b"2 \xc3\xa9"  # octets, not characters


def test_header_fields_without_spaces():
    data = syslog_message(fields("site"), hostname="my host\n", pid=1)
    assert data.split(b" ")[2] == b"myhost"


# -- journald's native protocol ---------------------------------------------------------


def test_journal_entry_fields():
    entry = parse_journal_entry(journal_entry(fields("site")))
    assert entry["SYSLOG_IDENTIFIER"] == b"hush" and entry["PRIORITY"] == b"6"
    assert entry["HUSH_APP"] == b"firefox" and entry["HUSH_SITE"] == b"example.org"
    assert entry["HUSH_SCHEMA"] == b"1" and "HUSH_HOST" not in entry
    assert entry["MESSAGE"].startswith(b"firefox: allow GET")
    assert all(re.fullmatch(r"[A-Z0-9][A-Z0-9_]{0,63}", k) for k in entry)


def test_journal_value_with_a_newline_uses_the_binary_form():
    data = journal_entry({"schema": "1", "app": "a", "error": "line1\nline2"})
    value = b"line1\nline2"
    assert b"HUSH_ERROR\n" + struct.pack("<Q", len(value)) + value + b"\n" in data
    assert parse_journal_entry(data)["HUSH_ERROR"] == value


def test_journald_datagrams_on_a_socket_the_test_binds(tmp_path):
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    shipper = Shipper(Target("journald", path=path), "full")  # full: the error's text, with its newline
    shipper.start()
    shipper.submit(record())
    shipper.submit(record(decision="block", egress="none", route="none", error="x\ny"))
    got = [parse_journal_entry(server.recv(65536)) for _ in range(2)]
    shipper.close()
    server.close()
    assert [g["HUSH_DECISION"] for g in got] == [b"allow", b"block"]
    assert got[1]["PRIORITY"] == b"4" and got[1]["HUSH_ERROR"] == b"x\ny"
    assert shipper.shipped == 2 and shipper.dropped == 0


def _recv_fds(server):
    import array

    fds = array.array("i")
    data, anc, _, _ = server.recvmsg(1024, socket.CMSG_SPACE(4))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % 4])
    return data, list(fds)


def test_an_entry_too_big_for_a_datagram_goes_in_a_sealed_memfd(tmp_path):
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    transport = ship.JournalTransport(path)
    big = journal_entry({"schema": "1", "app": "a", "url": "u" * 60000, "note": "n" * 60000, "error": "e" * 60000,
                         "exe": "x" * 60000})
    transport.send([big])
    data, fds = _recv_fds(server)
    transport.close()
    server.close()
    assert data == b"" and len(fds) == 1
    import fcntl

    seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK
    assert os.fstat(fds[0]).st_size == len(big) > 212992  # more than a datagram takes (wmem_default)
    assert os.pread(fds[0], len(big) + 1, 0) == big  # journald maps it from offset 0
    os.close(fds[0])


# -- the queue and the thread ------------------------------------------------------------


def test_the_queue_is_bounded_and_drops_are_counted():
    shipper = Shipper(Target("tcp", "127.0.0.1", 9), "site", queue_max=5)  # not started: nothing drains it
    for _ in range(8):
        shipper.submit(record())
    assert shipper.pending == 5 and shipper.dropped == 3
    shipper.close(deadline=0.1)
    assert shipper.dropped == 8 and shipper.status()["dropped"] == 8


def test_submit_never_blocks_on_a_dead_collector():
    port = _free_port()
    shipper = Shipper(Target("tcp", "127.0.0.1", port), "site", queue_max=100, backoff=(0.05, 0.1))
    shipper.start()
    t = time.perf_counter()
    for _ in range(5000):
        shipper.submit(record())
    elapsed = time.perf_counter() - t
    time.sleep(0.3)
    status = shipper.status()
    t = time.perf_counter()
    shipper.close(deadline=0.5)
    assert time.perf_counter() - t < 1.5  # stopping never hangs
    assert elapsed < 1.0, elapsed  # ~10 µs a record
    assert status["connected"] is False and status["failures"] >= 1 and "connect" in status["last_error"]
    assert shipper.dropped == 5000 and shipper.shipped == 0


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Collector:
    """A TCP syslog collector reading octet-counted frames (RFC 6587)."""

    def __init__(self, port=0):
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        self.messages: list[bytes] = []
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn):
        buf = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b" " in buf:
                size, _, rest = buf.partition(b" ")
                if len(rest) < int(size):
                    break
                self.messages.append(rest[: int(size)])
                buf = rest[int(size):]

    def close(self):
        """Stop as a collector does: no more listening, its connections closed (FIN)."""
        for s in (self.server, *self.conns):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it; close alone would not
            s.close()


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_tcp_collector_down_then_back():
    collector = Collector()
    port = collector.port
    shipper = Shipper(Target("tcp", "127.0.0.1", port), "hash", KEY, backoff=(0.05, 0.2))
    shipper.start()
    for i in range(10):
        shipper.submit(record(status=i))
    wait_until(lambda: len(collector.messages) == 10)
    collector.close()  # it closes its connections: hush notices before the next batch
    time.sleep(0.2)
    for i in range(10):
        shipper.submit(record(status=100 + i))
    wait_until(lambda: shipper.failures >= 1)
    assert shipper.status()["connected"] is False
    collector = Collector(port)
    wait_until(lambda: len(collector.messages) == 10)  # queued while it was down, shipped when it is back
    _, params = parse_5424(collector.messages[0])
    assert params["status"] == "100" and "host_hash" in params and "host" not in params
    shipper.close()
    collector.close()
    assert shipper.shipped == 20 and shipper.dropped == 0


def test_an_idle_connection_is_alive_at_once():
    """The check before each batch must not wait (it once waited for the socket's timeout,
    2 s a batch, and the queue overflowed behind it)."""
    collector = Collector()
    transport = ship.TcpTransport("127.0.0.1", collector.port, timeout=2.0)
    transport.connect()
    t = time.perf_counter()
    assert all(transport.alive() for _ in range(100))
    assert time.perf_counter() - t < 0.5
    collector.close()
    wait_until(lambda: not transport.alive(), timeout=2)
    transport.close()


def test_a_burst_ships_in_batches_without_waiting():
    collector = Collector()
    shipper = Shipper(Target("tcp", "127.0.0.1", collector.port), "site", queue_max=50)
    shipper.start()
    for _ in range(20):  # 20 rounds of 40: never more than the queue holds at once
        for _ in range(40):
            shipper.submit(record())
        wait_until(lambda: shipper.pending == 0, timeout=2)
    wait_until(lambda: len(collector.messages) == 800)
    shipper.close()
    collector.close()
    assert shipper.dropped == 0 and shipper.failures == 0


def test_udp_datagrams():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    shipper = Shipper(Target("udp", "127.0.0.1", server.getsockname()[1]), "site")
    shipper.start()
    shipper.submit(record())
    data = server.recv(65536)
    shipper.close()
    server.close()
    _, params = parse_5424(data)
    assert params["site"] == "example.org" and not data[:1].isdigit()  # no octet count on UDP


def test_close_ships_what_is_queued():
    collector = Collector()
    shipper = Shipper(Target("tcp", "127.0.0.1", collector.port), "site")
    shipper.start()
    for _ in range(500):
        shipper.submit(record())
    shipper.close(deadline=5)
    wait_until(lambda: len(collector.messages) == 500)
    collector.close()
    assert shipper.shipped == 500 and shipper.dropped == 0
    shipper.submit(record())  # after close: counted, not sent
    assert shipper.dropped == 1


def test_close_never_waits_for_a_stalled_collector():
    """A collector that accepts and never reads: sends block (the thread's), close returns at its deadline."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind(("127.0.0.1", 0))
    server.listen()
    shipper = Shipper(Target("tcp", "127.0.0.1", server.getsockname()[1]), "full", queue_max=20_000, timeout=5)
    shipper.start()
    for i in range(20_000):
        shipper.submit(record(url=f"https://example.org/{i}/" + "a" * 900))
    wait_until(lambda: shipper.pending < 20_000)
    time.sleep(0.5)  # the kernel's buffers fill; the thread blocks in a send
    assert shipper.pending > 0
    t = time.perf_counter()
    shipper.close(deadline=0.5)
    assert time.perf_counter() - t < 1.5
    assert shipper.dropped > 0 and shipper.shipped + shipper.dropped <= 20_000
    server.close()


def test_the_key_file(tmp_path):
    path = tmp_path / "ship.key"
    key = load_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    os.chmod(path, 0o644)
    assert load_key(path) == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="holds 5 bytes"):
        load_key(path)


def test_make_shipper_names_the_key_it_cannot_make(tmp_path):
    assert ship.make_shipper(None, "site", tmp_path) is None
    assert ship.make_shipper(Target("journald"), "site", tmp_path / "nope").key is None  # no key needed
    with pytest.raises(ship.ShipError, match=re.escape(str(tmp_path / "nope" / "ship.key"))):
        ship.make_shipper(Target("journald"), "hash", tmp_path / "nope")


def test_docs_list_every_class():
    """docs/fleet.md lists what site and hash can ship of an error or a note: all of it."""
    from pathlib import Path

    docs = (Path(__file__).parents[4] / "docs" / "fleet.md").read_text()
    assert [c for c in sorted(ship.ERROR_CLASSES) if f"`{c}`" not in docs] == []



@pytest.mark.parametrize("mode", ["no-query", "site", "hash"])
def test_the_rule_is_shipped_by_its_file_name_not_the_users_home(mode):
    """The local audit keeps the rule's whole path; what leaves the machine names the file as
    X-Hush-Decision does: the directory is the user's home, which names the user."""
    for rule, shipped in (("/home/alice/.config/hush/policies/whatsapp.yaml:14", "whatsapp.yaml:14"),
                          ("/etc/hush/policies/whatsapp.yaml:3 (organisation)", "whatsapp.yaml:3 (organisation)")):
        record = {"ts": 1.0, "app": "whatsapp", "decision": "block", "host": "a.example", "site": "a.example",
                  "rule": rule, "ip_exposed": False}
        fields = ship_fields(flatten(record), mode, key=b"k" * 32)
        assert fields["rule"] == shipped
        assert all("alice" not in v for v in fields.values())
    full = ship_fields(flatten({"ts": 1.0, "decision": "block", "rule": "/home/alice/p/x.yaml:1", "ip_exposed": False}),
                       "full")
    assert full["rule"] == "/home/alice/p/x.yaml:1"  # full ships what the local audit has
