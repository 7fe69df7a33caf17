"""A private Tor network on loopback: for the tests, and for ``hush demo --tor``.

Three directory authorities that are also relays (one of them the only exit)
on 127.0.0.1, TestingTorNetwork, keys made with ``tor-gencert`` for this run.
A client (hush's own tor) joins it with the torrc lines of :meth:`TorLab.client_torrc`.

The exit resolves names through a tiny DNS server of the caller's own
(:class:`ExitDNS`), so a name only it knows proves the client never resolved
it locally.  Every tor is owned by the process that started the network
(``__OwningControllerProcess``): they exit with it.  Needs ``tor`` and
``tor-gencert`` (Debian's ``tor`` package); keys are made for each run.

    lab = TorLab(tmp_dir, dns_port=5353)
    lab.start()            # ~12 s until the first consensus
    lines = lab.client_torrc()
    lab.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

TOR = shutil.which("tor") or "/usr/sbin/tor"
TOR_GENCERT = shutil.which("tor-gencert") or "/usr/bin/tor-gencert"
NICKS = ("auth0", "auth1", "exit0")  # the last one is the exit


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1, all held open while they are picked: one at a time,
    the kernel may hand the same port out twice (a relay whose ORPort is its DirPort does not
    start; ``hush demo``'s listener on tor's control port made stem wait for hush itself)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Node:
    def __init__(self, root: Path, nick: str, ports: list[int]):
        self.nick = nick
        self.dir = root / nick
        self.dir.mkdir(mode=0o700, parents=True)
        (self.dir / "keys").mkdir(mode=0o700)
        self.or_port, self.dir_port, self.control_port = ports
        self.v3ident = ""
        self.fingerprint = ""
        self.proc: subprocess.Popen | None = None

    def make_keys(self) -> None:
        keys = self.dir / "keys"
        subprocess.run(
            [TOR_GENCERT, "--create-identity-key", "--passphrase-fd", "0",
             "-i", str(keys / "authority_identity_key"), "-s", str(keys / "authority_signing_key"),
             "-c", str(keys / "authority_certificate"), "-m", "12", "-a", f"127.0.0.1:{self.dir_port}"],
            input=b"\n", check=True, capture_output=True, timeout=60)
        for line in (keys / "authority_certificate").read_text().splitlines():
            if line.startswith("fingerprint "):
                self.v3ident = line.split()[1]
        out = subprocess.run(
            [TOR, "--ignore-missing-torrc", "-f", "NONE", "--defaults-torrc", "NONE",
             "--datadirectory", str(self.dir), "--orport", "1", "--list-fingerprint"],
            check=True, capture_output=True, text=True, timeout=60).stdout
        self.fingerprint = "".join(out.strip().splitlines()[-1].split()[1:])  # "nick AAAA BBBB …"

    def dir_authority_line(self) -> str:
        return (f"DirAuthority {self.nick} orport={self.or_port} no-v2 v3ident={self.v3ident} "
                f"127.0.0.1:{self.dir_port} {self.fingerprint}")


COMMON = [
    "TestingTorNetwork 1",
    "PathsNeededToBuildCircuits 0.67",
    "ShutdownWaitLength 0",
    "SafeLogging 0",
    "ConfluxEnabled 0",
]


class TorLab:
    def __init__(self, root: Path, dns_port: int):
        self.root = Path(root)
        self.dns_port = dns_port
        ports = free_ports(3 * len(NICKS))
        self.nodes = [Node(self.root, nick, ports[3 * i:3 * i + 3]) for i, nick in enumerate(NICKS)]
        self.exit = self.nodes[-1]

    # -- setup -----------------------------------------------------------------

    def _authority_lines(self) -> list[str]:
        return [n.dir_authority_line() for n in self.nodes]

    def _torrc(self, node: Node, offset: int) -> str:
        resolv = self.root / "exit-resolv.conf"
        resolv.write_text(f"nameserver 127.0.0.1:{self.dns_port}\n")
        lines = COMMON + self._authority_lines() + [
            f"DataDirectory {node.dir}",
            f"ControlPort 127.0.0.1:{node.control_port}",
            "CookieAuthentication 1",
            f"__OwningControllerProcess {os.getpid()}",
            f"Log notice file {node.dir / 'notice.log'}",
            "Address 127.0.0.1",
            f"ORPort 127.0.0.1:{node.or_port}",
            f"DirPort 127.0.0.1:{node.dir_port}",
            "SocksPort 0",
            "AuthoritativeDirectory 1",
            "V3AuthoritativeDirectory 1",
            f"ContactInfo {node.nick}@hush.test",
            "AssumeReachable 1",
            f"Nickname {node.nick}",
            f"TestingDirAuthVoteExit {self.exit.nick}",
            "TestingDirAuthVoteGuard *",
            "TestingMinExitFlagThreshold 0",
            "V3AuthNIntervalsValid 2",
            "TestingV3AuthInitialVotingInterval 10",
            "TestingV3AuthInitialVoteDelay 2",
            "TestingV3AuthInitialDistDelay 2",
            "V3AuthVotingInterval 10",
            "V3AuthVoteDelay 2",
            "V3AuthDistDelay 2",
            f"TestingV3AuthVotingStartOffset {offset}",
            "MaxConsensusAgeForDiffs 1 minutes",
        ]
        if node is self.exit:
            lines += [
                "ExitRelay 1",
                "ExitPolicyRejectPrivate 0",
                "ExitPolicy accept 127.0.0.0/8:*",
                "ExitPolicy accept *:*",
                f"ServerDNSResolvConfFile {resolv}",
                "ServerDNSDetectHijacking 0",
                "ServerDNSTestAddresses",
                "ServerDNSAllowBrokenConfig 1",
            ]
        else:
            lines += ["ExitRelay 0", "ExitPolicy reject *:*"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 90) -> TorLab:
        threads = [threading.Thread(target=n.make_keys) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        offset = (int(time.time()) + 9) % 10  # align the first vote (TOR-PRIVNET.md)
        for node in self.nodes:
            torrc = node.dir / "torrc"
            torrc.write_text(self._torrc(node, offset))
            with open(node.dir / "stderr.log", "wb") as early:  # what tor says before its log opens
                node.proc = subprocess.Popen(
                    [TOR, "-f", str(torrc), "--defaults-torrc", "NONE"],
                    stdout=early, stderr=subprocess.STDOUT)
        self.wait_consensus(timeout)
        return self

    def wait_consensus(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.nodes[0].dir_port}/tor/status-vote/current/consensus-microdesc"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    raise RuntimeError(f"{node.nick} exited:\n{self.log(node)}")
            try:
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"no consensus after {timeout}s:\n{self.log(self.nodes[0])}")

    def log(self, node: Node) -> str:
        path = node.dir / "notice.log"
        early = node.dir / "stderr.log"
        text = early.read_text(errors="replace")[-2000:] if early.exists() else ""
        if path.exists():
            text += path.read_text(errors="replace")[-3000:]
        return text or "(no log)"

    # -- for the client ------------------------------------------------------------

    def client_torrc(self) -> list[str]:
        """The torrc lines a client needs to join this network."""
        return COMMON + self._authority_lines() + ["SocksTimeout 15"]

    @property
    def exit_pid(self) -> int:
        if self.exit.proc is None:
            raise RuntimeError("the private Tor network is not started")
        return self.exit.proc.pid

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()

class ExitDNS:
    """A tiny DNS server for the private network's exit: it knows a few names
    (A records), answers NXDOMAIN for the rest, and records every question.

    Tor randomises the letter case of queries (0x20); the question is echoed
    back as it came.  ``sock``: a UDP socket already bound where it should
    answer (the launch tests' world binds one inside its network namespace);
    by default a free port on 127.0.0.1."""

    def __init__(self, names: dict[str, str], sock: socket.socket | None = None):
        self.names = {k.lower().rstrip("."): v for k, v in names.items()}
        self.queries: list[str] = []
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
        self.sock = sock
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                query = DNSRecord.parse(data)
            except Exception:
                continue
            reply = query.reply()
            name = str(query.q.qname).lower().rstrip(".")
            self.queries.append(name)
            if name in self.names and query.q.qtype == QTYPE.A:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(self.names[name]), ttl=60))
            elif name not in self.names:
                reply.header.rcode = RCODE.NXDOMAIN
            self.sock.sendto(reply.pack(), peer)

    def close(self) -> None:
        self.sock.close()
