"""Audit records shipped to the system log, beside the local audit database.

::

    target = parse_syslog_url("tcp://logs.example:6514")   # or Target("journald")
    shipper = Shipper(target, redaction="site", key=load_key(state_dir / KEY_NAME))
    shipper.submit(record)     # never blocks: a bounded queue; when it is full the record is dropped, counted
    shipper.close(deadline=2)  # ships what it can within the deadline, then returns

Two ways out, both of which the log pipeline of an organisation already reads:

- ``journald``: the journal's native protocol, one datagram per record on
  ``/run/systemd/journal/socket`` (``KEY=value`` lines; a value with a newline
  in the binary form; an entry too big for a datagram in a sealed memfd passed
  with ``SCM_RIGHTS``, as sd_journal_send does).  Fields are ``HUSH_*`` plus
  ``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER=hush``.
- ``syslog``: RFC 5424 with the record as structured data
  (``[hush@32473 app="…" decision="…" …]``) over TCP with octet-counting
  framing (RFC 6587 3.4.1) or over UDP, one message a datagram (RFC 5426).

What is shipped is redacted on its own (``audit.ship_redaction``), whatever
the local audit keeps: ``site`` (default) ships the registrable domain only,
``hash`` not even that, but a keyed hash (HMAC-SHA256 with a per-install key,
``STATE_DIR/ship.key``) so that repeats can be counted without names; both
ship an error or a note as its class only (:func:`error_class`), never its
text, which can name any host; ``no-query`` and ``full`` ship URLs and the text.

The sending is a thread's: the event loop only puts a flat tuple in a bounded
queue.  A collector that is down or slow costs nothing but the records
dropped (counted, in ``hush status``); the thread reconnects with backoff.
A TCP connection the collector closed is noticed before the next batch; a
batch a send failed on is counted as dropped, not sent twice.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import secrets
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

# the config's part (read without importing what sends), and re-exported from here
from hush.daemon.audit.shipconfig import DEFAULT_SHIP_REDACTION as DEFAULT_SHIP_REDACTION
from hush.daemon.audit.shipconfig import JOURNAL_SOCKET as JOURNAL_SOCKET
from hush.daemon.audit.shipconfig import QUEUE_MAX as QUEUE_MAX
from hush.daemon.audit.shipconfig import SHIP_REDACTIONS as SHIP_REDACTIONS
from hush.daemon.audit.shipconfig import Target as Target
from hush.daemon.audit.shipconfig import parse_syslog_url as parse_syslog_url

log = logging.getLogger("hush.audit")

KEY_NAME = "ship.key"
SD_ID = "hush@32473"  # 32473: the enterprise number RFC 5612 reserves for examples and documentation
SCHEMA = "1"  # of the shipped fields (HUSH_SCHEMA, schema="1"): docs/fleet.md lists them
BATCH = 200
FACILITY_USER = 1
UDP_MAX = 8192  # bytes of one datagram (RFC 5426 asks receivers for 2048 at least; loopback and LANs carry more)
SYSLOG_VALUE_MAX = 1024  # bytes of one SD-PARAM value (rsyslog's default message limit is 8 KiB)
JOURNAL_VALUE_MAX = 64 * 1024

# The record's fields that may be shipped, in the order they are sent.  Left
# out: tor_isolation (its key names the site), tor_circuit (local ids).
FIELDS = (
    "ts", "ended", "app", "listener", "level", "method", "scheme", "host", "port", "site", "url", "kind",
    "decision", "rule", "policy_version", "note", "status", "ip_exposed", "egress", "route", "dest",
    "carried", "sent", "bytes_up", "bytes_down", "duration_ms", "error", "tor_exit", "held_ms",
    "superseded_by", "truncated", "process", "exe", "conn",
)
_KEPT_BACK = frozenset({"block", "superseded", "overflow", "shutdown", "abandoned", "tor-unavailable", "revoked",
                        "refused", "dropped"})  # dropped: a held flow dropped in the live view
_STOP = object()


# -- what -----------------------------------------------------------------------------


def load_key(path: Path) -> bytes:
    """The per-install HMAC key of ``hash`` redaction: 32 random bytes in
    ``path`` (0600), made the first time.

    :raises OSError: if it cannot be read or made; :raises ValueError: if it is not 32+ bytes
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < 32:
            raise ValueError(f"{path} holds {len(key)} bytes; a ship key is 32 random bytes "
                             "(remove the file and hush makes a new one)") from None
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        return key
    key = secrets.token_bytes(32)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    return key


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of ``value`` under ``key``, 128 bits in hex: equal names give equal hashes."""
    return hmac.new(key, value.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:32]


# What ``site`` and ``hash`` ship of an error or a note: not its text, which can
# name any host (a tunnel's TLS name, a single-label intranet name, an IDN, an
# address, a name ending in a label that looks like a file's suffix), but its
# class, from the closed vocabulary below (docs/fleet.md lists it).  The
# patterns are matched against the text; what is shipped is only the class
# beside the first that matches, or ``other``: nothing of the text itself.
# They follow where hush makes errors and notes (grep ``tunnel.error =``,
# ``error=``, ``note=``, ``fail_closed(`` in addons/ and daemon/) and the
# messages of mitmproxy and the OS a flow's error can carry.
_CLASSES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p, re.IGNORECASE | re.DOTALL), c) for p, c in (
    # notes: decisions no rule made (daemon/policy/model.py refused, addons/flowinfo.py fail_closed)
    (r"refused: .*carries an IPv6 zone id", "refused-ipv6-zone"),
    (r"refused: no destination host", "refused-no-host"),
    (r"refused: .*is not a valid host name or address", "refused-invalid-host"),
    (r"refused: .*is not one valid authority", "refused-invalid-authority"),
    # errors: a tunnel's TLS name (addons/decide.py)
    (r"refused: the TLS names .*\(block by ", "refused-tls-name-blocked"),
    (r"refused: the TLS names ", "refused-tls-name-mismatch"),
    (r"refused: the tunnel's TLS ClientHello cannot be read", "refused-clienthello-unreadable"),
    (r"refused", "refused"),
    (r"fail-closed: no policy loaded", "fail-closed-no-policy-loaded"),
    (r"fail-closed: no policy owns this listener", "fail-closed-no-policy-owns-listener"),
    (r"fail-closed: no policy identifies the process", "fail-closed-unidentified-process"),
    (r"fail-closed: (?:error while deciding|cannot decide under policy set)", "fail-closed-decide-error"),
    (r"fail-closed: (?:not decided|no decision was made)", "fail-closed-not-decided"),
    (r"fail-closed: request headers over the limit", "fail-closed-headers-over-limit"),
    (r"fail-closed: refused by mitmproxy", "fail-closed-refused-by-mitmproxy"),
    (r"fail-closed: (?:hush )?failed to apply", "fail-closed-apply-failed"),
    (r"fail-closed: rules need HTTP", "fail-closed-not-http"),
    (r"fail-closed: the tunnel's TLS cannot be read", "fail-closed-tls-unreadable"),
    (r"fail-closed: the connection is not .*'s under policy set", "fail-closed-app-changed"),
    (r"fail-closed: (?:hush: )?no original destination", "fail-closed-no-original-destination"),
    (r"fail-closed: (?:hush: )?a connection made straight to hush's socket", "fail-closed-straight-to-socket"),
    (r"fail-closed: (?:hush: )?a fake address no name was given out for", "fail-closed-unknown-fake-address"),
    (r"fail-closed", "fail-closed"),
    # errors made by hush (addons/act.py, decide.py, identify.py, daemon/launch, addons/actions/tor.py)
    (r"revoked on reload", "revoked-on-reload"),
    (r".*hush: no decision permits a direct connection", "egress-refused"),
    (r".*hush: egress check failed", "egress-check-failed"),
    (r"hush: the TLS name .* was not decided", "tls-name-undecided"),
    (r"hush: connection from .* refused", "client-refused"),
    (r"hush failed to apply", "apply-failed"),
    (r"the tunnel's TLS cannot be read", "tls-unreadable"),
    (r"mitmproxy could not handle the request", "mitmproxy-failed"),
    (r"hush: ", "hush-refused"),
    (r"tor routing is not loaded", "tor-not-loaded"),
    (r".*\btor\b", "tor-unavailable"),
    # the network's and mitmproxy's (a flow's error; daemon/relay.py's errno)
    (r"connection killed", "killed"),
    (r"client disconnected", "client-disconnected"),
    (r"server disconnected|connection closed by peer", "server-disconnected"),
    (r".*(?:ECONNREFUSED|connection refused)", "connection-refused"),
    (r".*(?:ECONNRESET|connection reset)", "connection-reset"),
    (r".*(?:connect call failed|connection failed|failed to connect)", "connection-failed"),
    (r".*(?:ETIMEDOUT|timed out|timeout)", "timeout"),
    (r".*(?:EHOSTUNREACH|ENETUNREACH|unreachable)", "unreachable"),
    (r".*(?:name or service not known|name resolution|nodename nor servname|no address associated)", "dns"),
    (r".*(?:EPIPE|broken pipe)", "broken-pipe"),
    (r".*(?:certificate|\bTLS\b|\bSSL\b|handshake)", "tls"),
))
ERROR_CLASSES = frozenset(c for _, c in _CLASSES) | {"other"}  # all that site and hash can ship of a text


def error_class(text: str | None) -> str | None:
    """The class of an error or a note, from :data:`ERROR_CLASSES` (``other`` for
    what matches no pattern): what ``site`` and ``hash`` ship in its place."""
    if not text:
        return None
    head = text[:512]  # bounded (the regexes hold the GIL): what is classed is said near the start
    for pattern, name in _CLASSES:
        if pattern.match(head):
            return name
    return "other"


def _redact_url(url: str | None, mode: str, site: str | None) -> str | None:
    from hush.daemon.audit.store import redact

    return redact(url, mode, site)


def _present(values: Any) -> str | None:
    """Which identifiers a request carried, by name only (``cookies,user_agent``)."""
    if not isinstance(values, dict):
        return None
    names = sorted(k for k, v in values.items() if v)
    return ",".join(names) or None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def flatten(record: dict[str, Any]) -> tuple:
    """What :meth:`Shipper.submit` queues: the shipped fields, in order (a flat
    tuple: cheap to make on the event loop, and nothing for the collector to walk)."""
    get = record.get
    return tuple(get(name) for name in FIELDS)


def ship_fields(row: tuple, mode: str, key: bytes | None = None) -> dict[str, str]:
    """The fields shipped for one record (``flatten``'s tuple), redacted by
    ``mode``: field name → text, in order, absent fields left out.

    The row must hold at least what ``mode`` ships: a record the local audit
    built with ``full`` for ``full``, with ``no-query`` or ``full`` for ``no-query``
    (``site`` and ``hash`` take anything).
    """
    values = dict(zip(FIELDS, row, strict=True))
    host, site = values.get("host") or "", values.get("site") or ""
    if mode not in ("full",):
        values["carried"] = _present(values.get("carried"))
        values["sent"] = _present(values.get("sent"))
        # the policy file by its name, as X-Hush-Decision names it: its directory is
        # the user's home (/home/alice/.config/hush/policies/x.yaml:12 → x.yaml:12)
        if values.get("rule"):
            values["rule"] = str(values["rule"]).rsplit("/", 1)[-1]
    if mode in ("site", "hash"):
        values["dest"] = None
    if mode == "no-query":
        values["url"] = _redact_url(values.get("url"), "no-query", site)
        values["superseded_by"] = _redact_url(values.get("superseded_by"), "no-query", None)
    elif mode == "site":
        values["host"] = None
        values["url"] = _redact_url(values.get("url"), "site", site)
        values["superseded_by"] = _redact_url(values.get("superseded_by"), "site", None)
        values["error"] = error_class(values.get("error"))
        values["note"] = error_class(values.get("note"))
    elif mode == "hash":
        if key is None:
            raise ValueError("hash redaction needs a key")
        values["host"] = values["site"] = values["url"] = values["superseded_by"] = None
        values["host_hash"] = keyed_hash(key, host) if host else None
        values["site_hash"] = keyed_hash(key, site) if site else None
        values["error"] = error_class(values.get("error"))
        values["note"] = error_class(values.get("note"))
    elif mode != "full":
        raise ValueError(f"unknown ship redaction {mode!r}")
    if values.get("egress") is None:
        values["egress"] = "none" if values.get("decision") in _KEPT_BACK else "direct"
    out = {"schema": SCHEMA}
    for name, value in values.items():
        if value is not None and value != "":
            out[name] = _text(value)
    return out


def severity(fields: dict[str, str]) -> int:
    """syslog severity (journald PRIORITY): 4 warning for an error, 5 notice for
    what hush kept back, 6 info for the rest."""
    if fields.get("error"):
        return 4
    if fields.get("decision") in _KEPT_BACK or fields.get("egress") == "none":
        return 5
    return 6


def summary(fields: dict[str, str]) -> str:
    """The human line (MESSAGE, the syslog MSG): ``firefox: block GET example.org (policies/f.yaml:12)``."""
    where = (fields.get("url") or fields.get("host") or fields.get("site")
             or (f"site#{fields['site_hash'][:12]}" if "site_hash" in fields else "?"))
    method = fields.get("method")
    parts = [f"{fields.get('app') or '?'}:", fields.get("decision", "?")]
    if method:
        parts.append(method)
    parts.append(where)
    if fields.get("rule"):
        parts.append(f"({fields['rule']})")
    if fields.get("error"):
        parts.append(f"error: {fields['error']}")
    return " ".join(parts)


def _cap(value: str, limit: int) -> str:
    data = value.encode("utf-8", "surrogateescape")
    if len(data) <= limit:
        return value
    return data[: limit - 3].decode("utf-8", "ignore") + "…"


# -- journald's native protocol --------------------------------------------------------


def journal_entry(fields: dict[str, str], value_max: int = JOURNAL_VALUE_MAX) -> bytes:
    """One journal entry in the native protocol (systemd's JOURNAL_NATIVE_PROTOCOL):
    ``KEY=value\\n``, or for a value holding a newline ``KEY\\n`` + its length
    (64 bit little endian) + the value + ``\\n``."""
    items = [("MESSAGE", summary(fields)), ("PRIORITY", str(severity(fields))), ("SYSLOG_IDENTIFIER", "hush"),
             ("SYSLOG_FACILITY", str(FACILITY_USER))]
    items += [(f"HUSH_{name.upper()}", value) for name, value in fields.items()]
    out = bytearray()
    for name, value in items:
        data = _cap(value, value_max).encode("utf-8", "surrogateescape")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def parse_journal_entry(data: bytes) -> dict[str, bytes]:
    """The inverse of :func:`journal_entry` (for tests, and to check what was sent)."""
    out: dict[str, bytes] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            out[name.decode()] = value
            i = end + 1
        else:
            (size,) = struct.unpack("<Q", data[end + 1:end + 9])
            out[line.decode()] = data[end + 9:end + 9 + size]
            if data[end + 9 + size:end + 10 + size] != b"\n":
                raise ValueError(f"field {line!r}: no newline after its {size} bytes")
            i = end + 10 + size
    return out


class JournalTransport:
    """Datagrams to journald's socket; an entry too big for one goes in a sealed memfd."""

    def __init__(self, path: str, timeout: float = 2.0):
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def connect(self) -> None:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.settimeout(self.timeout)
            self._sock = sock

    def send(self, entries: list[bytes]) -> None:
        self.connect()
        assert self._sock is not None
        for data in entries:
            try:
                self._sock.sendto(data, self.path)
            except OSError as e:
                if e.errno != errno.EMSGSIZE:
                    raise
                self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        assert self._sock is not None
        fd = os.memfd_create("hush-journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.path)
        finally:
            os.close(fd)

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- syslog: RFC 5424 over TCP (RFC 6587 octet counting) or UDP (RFC 5426) --------------


def sd_escape(value: str) -> str:
    """An SD-PARAM value: ``"``, ``\\`` and ``]`` escaped with a backslash (RFC 5424 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _timestamp(ts: float) -> str:
    t = time.gmtime(ts)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int((ts % 1) * 1_000_000):06d}Z"


def _header_field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or ``-`` (NILVALUE)."""
    clean = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return clean or "-"


def syslog_message(fields: dict[str, str], *, hostname: str, pid: int, now: float | None = None,
                   limit: int | None = None) -> bytes:
    """One RFC 5424 message: ``<PRI>1 TIMESTAMP HOST hush PID audit [hush@32473 k="v" …] MSG``.

    ``limit``: at most this many bytes (UDP), made by dropping the MSG, then
    the longest parameters (``truncated_fields`` says how many went).
    """
    pri = FACILITY_USER * 8 + severity(fields)
    when = now if now is not None else float(fields.get("ended") or fields.get("ts") or time.time())
    head = (f"<{pri}>1 {_timestamp(when)} {_header_field(hostname, 255)} hush {_header_field(str(pid), 128)} "
            f"audit ").encode()
    params = {name: _cap(value, SYSLOG_VALUE_MAX) for name, value in fields.items()}
    msg = summary(fields)

    def build() -> bytes:
        sd = " ".join(f'{name}="{sd_escape(value)}"' for name, value in params.items())
        return head + f"[{SD_ID} {sd}]".encode("utf-8", "surrogateescape") + (
            b" " + msg.encode("utf-8", "surrogateescape") if msg else b"")

    data = build()
    if limit is None or len(data) <= limit:
        return data
    msg = ""
    data = build()
    dropped = 0
    while len(data) > limit and params:
        longest = max((n for n in params if n not in ("schema", "app", "decision")), key=lambda n: len(params[n]),
                      default=None)
        if longest is None:
            break
        del params[longest]
        dropped += 1
        params["truncated_fields"] = str(dropped)
        data = build()
    return data[:limit]


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 3.4.1 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d " % len(message) + message


class TcpTransport:
    def __init__(self, host: str, port: int, timeout: float = 2.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None

    def connect(self) -> None:
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock

    def alive(self) -> bool:
        """False if the collector closed the connection (its FIN or RST is
        waiting): noticed before a batch is sent into it."""
        if self._sock is None:
            return True
        try:  # poll first: with a timeout set, recv would wait for it even with MSG_DONTWAIT
            poller = select.poll()  # not select(): the daemon's descriptors go past 1023 (run.raise_fd_limit)
            poller.register(self._sock, select.POLLIN)
            if not poller.poll(0):
                return True
            return bool(self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return True
        except (OSError, ValueError):
            return False

    def send(self, messages: list[bytes]) -> None:
        self.connect()
        assert self._sock is not None
        self._sock.sendall(b"".join(octet_frame(m) for m in messages))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class UdpTransport:
    def __init__(self, host: str, port: int, timeout: float = 2.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None

    def connect(self) -> None:
        if self._sock is None:
            info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(info[0], socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.settimeout(self.timeout)
            try:
                sock.connect(info[4])
            except OSError:
                sock.close()
                raise
            self._sock = sock

    def alive(self) -> bool:
        return True

    def send(self, messages: list[bytes]) -> None:
        self.connect()
        assert self._sock is not None
        for m in messages:
            self._sock.send(m)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- the shipper ----------------------------------------------------------------------


class Shipper:
    """The thread that ships audit records; see the module's docstring.

    :param target: where to (:func:`parse_syslog_url`, or ``Target("journald")``)
    :param redaction: one of :data:`SHIP_REDACTIONS`
    :param key: the HMAC key of ``hash`` redaction (:func:`load_key`)
    """

    def __init__(self, target: Target, redaction: str = DEFAULT_SHIP_REDACTION, key: bytes | None = None, *,
                 queue_max: int = QUEUE_MAX, backoff: tuple[float, float] = (0.2, 5.0), timeout: float = 2.0):
        if redaction not in SHIP_REDACTIONS:
            raise ValueError(f"unknown ship redaction {redaction!r} (expected one of: {', '.join(SHIP_REDACTIONS)})")
        if redaction == "hash" and key is None:
            raise ValueError("hash redaction needs a key")
        self.target = target
        self.redaction = redaction
        self.key = key
        self.queue_max = queue_max
        self.backoff = backoff
        self.shipped = 0
        # dropped: the queue was full (counted by submit, on the event loop), or a send failed or
        # stopping left them (counted by the thread and close, under a lock): two counters, no lost +=
        self._dropped_full = 0
        self._dropped_other = 0
        self._count_lock = threading.Lock()
        self.failures = 0  # sends and connects that failed
        self.connected = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.transport: JournalTransport | TcpTransport | UdpTransport
        if target.kind == "journald":
            self.transport = JournalTransport(target.path, timeout)
        elif target.kind == "tcp":
            self.transport = TcpTransport(target.host, target.port, timeout)
        else:
            self.transport = UdpTransport(target.host, target.port, timeout)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hush-audit-ship", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, record: dict[str, Any]) -> None:
        """Queue one record (on the event loop: never blocks, never raises for a full queue)."""
        if self._closed:
            self._dropped_full += 1
            return
        try:
            self._queue.put_nowait(flatten(record))
        except queue.Full:
            self._dropped_full += 1

    @property
    def dropped(self) -> int:
        return self._dropped_full + self._dropped_other

    def _drop(self, n: int) -> None:
        with self._count_lock:
            self._dropped_other += n

    def status(self) -> dict[str, Any]:
        return {"target": str(self.target), "redaction": self.redaction, "connected": self.connected,
                "shipped": self.shipped, "queued": self.pending, "queue_max": self.queue_max,
                "dropped": self.dropped, "failures": self.failures, "last_error": self.last_error,
                "last_error_at": self.last_error_at}

    def close(self, deadline: float = 2.0) -> None:
        """Ship what can be shipped within ``deadline`` seconds, then stop; what
        is left is counted as dropped.  Never waits longer (stopping must not hang)."""
        self._closed = True
        self._deadline = time.monotonic() + deadline
        self._stop.set()
        with contextlib.suppress(queue.Full):  # full: the thread sees _stop
            self._queue.put_nowait(_STOP)
        if self._thread.is_alive():
            self._thread.join(deadline + 0.5)
        while True:  # what the deadline left (a thread still in a send takes no more: its deadline passed)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._drop(1)
        if self._thread.is_alive():
            log.warning("audit shipping to %s did not finish within %.1fs (a send is stalled)", self.target, deadline)
        else:
            self.transport.close()
        if self.dropped:
            log.info("audit shipping to %s: %d shipped, %d dropped", self.target, self.shipped, self.dropped)

    # -- the thread --

    def encode(self, row: tuple) -> bytes:
        fields = ship_fields(row, self.redaction, self.key)
        if self.target.kind == "journald":
            return journal_entry(fields)
        return syslog_message(fields, hostname=self.hostname, pid=self.pid,
                              limit=UDP_MAX if self.target.kind == "udp" else None)

    def _run(self) -> None:
        delay = self.backoff[0]
        batch: list[bytes] = []
        while True:
            if not batch:
                try:
                    item = self._queue.get(timeout=0.5 if not self._stop.is_set() else 0)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                rows = [item]
                while len(rows) < BATCH:
                    try:
                        rows.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(r is _STOP for r in rows)
                for row in rows:
                    if row is _STOP:
                        continue
                    try:
                        batch.append(self.encode(row))
                    except Exception:
                        self._drop(1)
                        log.exception("audit shipping: could not encode a record")
                if stop:
                    self._stop.set()
            if self._stop.is_set() and time.monotonic() > self._deadline:
                self._drop(len(batch))
                return
            if not batch:
                continue
            try:
                if not self.transport.alive():
                    self.transport.close()
                    self.connected = False
                self.transport.connect()
            except OSError as e:
                self._failed(e, "connect")
                self.connected = False
                self.transport.close()
                if self._stop.is_set():
                    self._drop(len(batch))
                    return
                self._stop.wait(delay)  # the batch is kept; the queue takes more until it is full
                delay = min(delay * 2, self.backoff[1])
                continue
            try:
                self.transport.send(batch)
            except OSError as e:
                self._failed(e, "send")
                self._drop(len(batch))  # some may have arrived: not sent twice
                batch = []
                self.connected = False
                self.transport.close()
                continue
            if not self.connected:
                if self.last_error is not None:
                    log.warning("audit shipping to %s works again (after: %s)", self.target, self.last_error)
                self.connected = True
            delay = self.backoff[0]
            self.shipped += len(batch)
            batch = []

    def _failed(self, e: OSError, what: str) -> None:
        self.failures += 1
        message = f"{what}: {e.strerror or e}" if isinstance(e, OSError) else str(e)
        if self.connected or self.last_error is None:
            log.warning("audit shipping to %s failed (%s); records are queued (up to %d), then dropped and counted",
                        self.target, message, self.queue_max)
        self.last_error = message
        self.last_error_at = time.time()


class ShipError(Exception):
    """audit.ship cannot start (its key cannot be read or made); one line."""


def make_shipper(target: Target | None, redaction: str, state_dir: Path,
                 queue_max: int = QUEUE_MAX) -> Shipper | None:
    """The config's shipper (not started), or None without ``audit.ship``.

    :raises ShipError: if ``hash`` redaction's key cannot be read or made
    """
    if target is None:
        return None
    key = None
    if redaction == "hash":
        path = Path(state_dir) / KEY_NAME
        try:
            key = load_key(path)
        except (OSError, ValueError) as e:
            raise ShipError(f"audit.ship_redaction hash needs its key {path}: {e}") from e
    return Shipper(target, redaction, key, queue_max=queue_max)
