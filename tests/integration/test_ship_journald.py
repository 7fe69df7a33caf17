"""audit.ship: journald, against the daemon: the datagrams on a socket the test
binds (the native protocol, parsed strictly), and a real systemd-journald
(Debian's, started by the test in a private mount namespace with its socket
and journal directory bound to the test's own; the machine runs no journald)
whose journal file ``journalctl --file`` then reads."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from hush.daemon.audit.ship import JournalTransport, journal_entry, parse_journal_entry

from .harness import free_port, wait_for

pytestmark = pytest.mark.integration

JOURNALD = Path("/usr/lib/systemd/systemd-journald")  # Debian's systemd package
POLICY = "app: a\nlisten: {port}\ndefault: allow\nrules:\n  - {{match: {{path: '/blocked*'}}, action: block}}\n"


def _requests(port: int, origin) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for path in ("/ok?secret=1", "/blocked"):
        conn.request("GET", origin.url(path, host="localhost"))
        conn.getresponse().read()


def test_datagrams_on_a_socket_the_test_binds(hush, origin, tmp_path):
    path = tmp_path / "journal.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(10)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    port = free_port()
    h = hush({"a": POLICY.format(port=port)}, config=f"audit:\n  ship: {{journald: {path}}}\n")
    _requests(port, origin)
    entries, pids = [], set()
    for _ in range(2):
        data, anc, _, _ = server.recvmsg(65536, socket.CMSG_SPACE(12))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pids.add(int.from_bytes(payload[:4], "little"))
        assert data.endswith(b"\n")
        entries.append(parse_journal_entry(data))
    h.stop()
    server.close()
    assert pids == {h.proc.pid}  # sent by the daemon itself (what journald records as _PID)
    allowed, blocked = entries
    assert allowed["SYSLOG_IDENTIFIER"] == b"hush" and allowed["PRIORITY"] == b"6" and blocked["PRIORITY"] == b"5"
    assert allowed["HUSH_APP"] == b"a" and allowed["HUSH_DECISION"] == b"allow" and allowed["HUSH_SITE"] == b"localhost"
    assert allowed["HUSH_URL"] == b"http://localhost/" and "HUSH_HOST" not in allowed  # site redaction by default
    assert blocked["HUSH_DECISION"] == b"block" and blocked["HUSH_EGRESS"] == b"none"
    assert allowed["MESSAGE"].startswith(b"a: allow GET http://localhost/")
    assert all(re.fullmatch(r"[A-Z0-9_]+", k) and not k.startswith("_") for e in entries for k in e)


def _machine_id_setup(directory: Path) -> str:
    """Shell lines giving the namespace a machine id if this machine has none (a bare container)."""
    mid = Path("/etc/machine-id")
    if mid.exists() and re.fullmatch(r"[0-9a-f]{32}\n?", mid.read_text()):
        return ""
    (directory / "machine-id").write_text(os.urandom(16).hex() + "\n")
    if mid.exists():
        return f"mount --bind {directory}/machine-id /etc/machine-id && "
    return f"mount -t tmpfs tmpfs /etc && cp {directory}/machine-id /etc/machine-id && "


class Journald:
    """systemd-journald for namespace ``name``, in a private user and mount namespace
    whose /run/systemd and /var/log/journal are the test's directories (nothing of the
    machine's changes; it also runs so as an unprivileged user, measured as hushdev)."""

    def __init__(self, directory: Path):
        self.name = f"hushtest{os.getpid()}"
        self.run, self.log = directory / "run", directory / "log"
        self.run.mkdir(parents=True)
        self.log.mkdir()
        script = (f"mount --make-rprivate / && mount --bind {self.run} /run/systemd && "
                  f"mount --bind {self.log} /var/log/journal && {_machine_id_setup(directory)}"
                  f"exec {JOURNALD} {self.name}")
        with open(directory / "journald.log", "wb") as out:
            # a user namespace too: no CAP_SYS_ADMIN needed (a CI container), as for hush launch
            self.proc = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                                         stdout=out, stderr=out)
        self.out = directory / "journald.log"
        self.socket = self.run / f"journal.{self.name}" / "socket"
        wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, timeout=15,
                 message="journald's socket")
        assert self.proc.poll() is None, self.out.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # journald syncs its files on SIGTERM
            self.proc.wait(15)

    def entries(self, *matches: str) -> list[dict]:
        files = [str(p) for p in self.log.rglob("*.journal")]
        assert files, self.out.read_text()
        out = subprocess.run(["journalctl", "--no-pager", "-o", "json", "--all",
                              *(f"--file={f}" for f in files), *matches],
                             capture_output=True, text=True, timeout=30, check=True)
        return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture
def journald(tmp_path):
    j = Journald(tmp_path / "journald")
    yield j
    if j.proc.poll() is None:
        j.proc.kill()
        j.proc.wait()


def test_a_real_journald_and_journalctl_file(hush, origin, journald):
    port = free_port()
    h = hush({"a": POLICY.format(port=port)},
             config=f"audit:\n  redaction: full\n  ship: {{journald: {journald.socket}}}\n  ship_redaction: hash\n")
    _requests(port, origin)
    wait_for(lambda: h.status()["audit"]["ship"]["shipped"] >= 2, timeout=15, message="2 records shipped")
    h.stop()
    # an entry too big for a datagram (here 4 values of 64 KiB, each at its cap) goes in a sealed memfd
    big = journal_entry({"schema": "1", "app": "big", "decision": "allow", **{k: "v" * 70_000 for k in
                                                                               ("url", "note", "error", "exe")}})
    assert len(big) > 212_992  # net.core.wmem_default: more than one datagram carries
    transport = JournalTransport(str(journald.socket))
    transport.send([big])
    transport.close()
    journald.stop()
    entries = journald.entries("SYSLOG_IDENTIFIER=hush")
    assert [e["HUSH_DECISION"] for e in entries] == ["allow", "block", "allow"], entries
    assert entries.pop()["HUSH_URL"] == "v" * (64 * 1024 - 3) + "…"
    key = (h.state / "ship.key").read_bytes()
    from hush.daemon.audit.ship import keyed_hash

    for e in entries:
        assert e["_PID"] == str(h.proc.pid) and e["_TRANSPORT"] == "journal" and e["HUSH_APP"] == "a"
        assert e["HUSH_HOST_HASH"] == keyed_hash(key, "localhost") and "HUSH_SITE" not in e
        assert "localhost" not in json.dumps(e)
    assert entries[0]["PRIORITY"] == "6" and entries[1]["PRIORITY"] == "5"
    assert [row["decision"] for row in h.audit()] == ["allow", "block"]  # the local audit, full
    assert "secret=1" in h.audit()[0]["url"]


def test_shipping_keeps_more_than_the_local_audit_when_told(hush, origin, tmp_path):
    """audit.redaction site here, audit.ship_redaction no-query: the shipped URL has its path (the
    record is built again for shipping), the local one only the site; a CONNECT tunnel's rows are
    shipped too, each write with the same conn."""
    path = tmp_path / "journal.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(10)
    port, port_b = free_port(), free_port()
    h = hush({"a": POLICY.format(port=port), "b": f"app: b\nlisten: {port_b}\ndefault: allow\n"},
             config=f"audit:\n  redaction: site\n  ship: {{journald: {path}}}\n  ship_redaction: no-query\n")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", origin.url("/deep/page?secret=1", host="localhost"))
    assert conn.getresponse().read()
    with socket.create_connection(("127.0.0.1", port_b), timeout=10) as raw:  # b decides tunnels by name alone
        raw.sendall(f"CONNECT localhost:{origin.port} HTTP/1.1\r\nHost: localhost:{origin.port}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        raw.sendall(b"\x00\x01 not TLS, not HTTP: relayed as bytes\r\n\r\n")
        raw.recv(4096)
        # its row while open (written within the audit's 5 ms window), then at its close: two writes
        wait_for(lambda: any(r["method"] == "CONNECT" for r in h.audit()), timeout=15, message="the open tunnel's row")
    wait_for(lambda: h.status()["audit"]["ship"]["shipped"] >= 3, timeout=15, message="3 records shipped")
    h.stop()
    entries = []
    server.setblocking(False)
    while True:
        try:
            entries.append(parse_journal_entry(server.recv(65536)))
        except BlockingIOError:
            break
    server.close()
    flow = next(e for e in entries if e.get("HUSH_METHOD") == b"GET")
    assert flow["HUSH_URL"] == f"http://localhost:{origin.port}/deep/page".encode()
    assert flow["HUSH_HOST"] == b"localhost" and b"secret" not in flow["HUSH_URL"]
    rows = {row["method"]: row for row in h.audit()}
    assert rows["GET"]["url"] == "http://localhost/"  # the local audit: site, as configured
    tunnels = [e for e in entries if e.get("HUSH_METHOD") == b"CONNECT"]
    assert tunnels and {e["HUSH_CONN"] for e in tunnels} == {rows["CONNECT"]["conn"].encode()}
    assert tunnels[-1].get("HUSH_ENDED")  # the last write: the tunnel closed


# A security review's case: a tunnel to an address whose TLS names a host a rule blocks
# shipped the name in clear in its error (the free-text scrubber knew names of letters
# with a dot only).  Under site and hash an error or a note is shipped as its class.
NAMES = ("secret-intranet", "www.clinic.com.py", "bücher.example")


@pytest.mark.parametrize("redaction", ["site", "hash"])
def test_blocked_tls_names_never_shipped(hush, tmp_path, redaction):
    import ssl

    from hush.daemon.audit.ship import ERROR_CLASSES

    path = tmp_path / "journal.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    port = free_port()
    policy = (f"app: a\nlisten: {port}\ndefault: allow\nrules:\n"
              f"  - {{match: {{host: [secret-intranet, www.clinic.com.py, xn--bcher-kva.example]}}, action: block}}\n")
    h = hush({"a": policy}, config=f"audit:\n  ship: {{journald: {path}}}\n  ship_redaction: {redaction}\n")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for name in NAMES:  # openssl s_client -proxy … -connect 127.0.0.1:9 -servername NAME
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
            assert raw.recv(4096).startswith(b"HTTP/1.1 200")
            with contextlib.suppress(OSError), context.wrap_socket(raw, server_hostname=name):
                pass
    wait_for(lambda: h.status()["audit"]["ship"]["shipped"] >= len(NAMES), timeout=15,
             message=f"{len(NAMES)} records shipped")
    h.stop()
    data = []
    server.setblocking(False)
    while True:
        try:
            data.append(server.recv(65536))
        except BlockingIOError:
            break
    server.close()
    entries = [parse_journal_entry(d) for d in data]
    errors = [e["HUSH_ERROR"].decode() for e in entries if "HUSH_ERROR" in e]
    assert errors.count("refused-tls-name-blocked") >= len(NAMES), entries
    assert all(e in ERROR_CLASSES for e in errors) and all(
        e["HUSH_NOTE"].decode() in ERROR_CLASSES for e in entries if "HUSH_NOTE" in e)
    for secret in ("secret-intranet", "clinic", "bücher", "xn--bcher", "127.0.0.1:9"):
        assert not any(secret.encode() in d for d in data), secret
    local = [row["error"] or "" for row in h.audit()]  # the local audit (site) keeps its text
    assert any("secret-intranet" in e for e in local), local
