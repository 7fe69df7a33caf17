"""A "world" for the ``hush launch`` tests: a network + mount namespace of the
tests' own, in which everything of a test runs and nothing leaves.

Inside the world (built as root):

- ``lo`` is the only interface; it is up and also holds the TEST-NET addresses
  203.0.113.10-.12, 2001:db8::10, and 8.8.8.8 (so a packet that escaped a launch
  toward "the internet" would land on a sink of ours and be counted, never sent);
- ``/etc/hosts`` and ``/etc/resolv.conf`` are the world's own (bind mounts): a
  few names in the hosts file, and a DNS server of ours on 127.0.0.1:53 that
  records every query (so a name hush must not resolve can be proven unresolved);
- hush (``hush run``) and ``hush launch`` run as an unprivileged uid (nobody);
  directories that uid cannot traverse on the way to the interpreter or the
  repository (``/root`` on a machine whose pyenv lives there) are replaced,
  in the world's mount namespace only, by a tmpfs holding just those paths.

A holder process (``sleep infinity`` in the namespaces) keeps the world alive;
processes join it with ``nsenter``, and sockets are made in it from a thread that
entered its network namespace (``os.setns``), so origins live in the world and
count what reaches them. Closing the world kills every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from hush.daemon.torlab import ExitDNS
from tests.integration import harness

NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable  # the venv's python: hush is installed in it
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ALLOWED_IP = "203.0.113.10"
BLOCKED_IP = "203.0.113.11"
QUIC_IP = "203.0.113.12"
ALLOWED_IP6 = "2001:db8::10"
PUBLIC_DNS = "8.8.8.8"  # exists only on the world's lo: a sink, never the real one
UNISSUED_FAKE_IP = "198.19.255.254"  # in hush's fake range; a sink in the world, should hush ever dial it
ADDRESSES = [ALLOWED_IP, BLOCKED_IP, QUIC_IP, PUBLIC_DNS, UNISSUED_FAKE_IP]
ADDRESSES6 = [ALLOWED_IP6]

# names in the world's /etc/hosts
HOSTS = {
    "allowed.test": ALLOWED_IP,
    "other.test": ALLOWED_IP,
    "hosts-blocked.test": BLOCKED_IP,
    "quic.test": QUIC_IP,
}
# names only the world's DNS server knows (a lookup of them is recorded)
WORLD_DNS = {
    "blocked.test": BLOCKED_IP,
    "dns-allowed.test": ALLOWED_IP,
}
TOR_NAME = "viator.test"  # known only to the private Tor network's exit DNS
CURL_ARGS = ("-sS", "--max-time", "20")


def until(predicate, timeout: float = 30, what: str = "condition", interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached after {timeout}s: {what}")
        time.sleep(interval)


def is_static(path: str) -> bool:
    """True if the ELF file has no PT_INTERP program header (a static executable)."""
    with open(path, "rb") as f:
        head = f.read(64)
        assert head[:4] == b"\x7fELF" and head[4] == 2, f"{path} is not a 64-bit ELF file"
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


# -- which process owns a peer socket, in the world's tables --------------------------

def _hex(host: str, port: int) -> str:
    if ":" in host:
        words = struct.unpack("=4I", socket.inet_pton(socket.AF_INET6, host))
        return "".join(f"{w:08X}" for w in words) + f":{port:04X}"
    return f"{struct.unpack('=I', socket.inet_aton(host))[0]:08X}:{port:04X}"


def owner_pid(netns_pid: int, peer: tuple, local: tuple) -> int | None:
    """The pid holding the socket at ``peer`` connected to ``local``, looked up in
    the network namespace of ``netns_pid`` (its /proc/PID/net tables)."""
    def forms(host):
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return [host, f"::ffff:{host}"] if ":" not in host else [host]
    wanted = {(_hex(p, peer[1]), _hex(loc, local[1])) for p in forms(peer[0]) for loc in forms(local[0])}
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{netns_pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if (parts[1], parts[2]) in wanted and int(parts[9]):
                inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return int(pid)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid``, children before their parents' siblings' children."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


# -- the far side: servers inside the world -----------------------------------------

class Origin(harness.Origin):
    """The tests' counting origin (tests/integration/harness.py), on an address of
    the world: its socket made inside the world's network namespace, the peer's
    process found in the world's /proc."""

    def __init__(self, world: World, host: str, port: int = 0, tls: ssl.SSLContext | None = None):
        super().__init__(host, tls, port, bind=world.in_net,
                         owner=lambda peer, local: owner_pid(world.pid, peer, local))


class UDPSink:
    """A UDP socket bound on an address of the world: every datagram that reaches it is kept."""

    def __init__(self, world: World, host: str, port: int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = world.in_net(self._bind, family, host, port)
        self.datagrams: list[tuple[bytes, tuple]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _bind(family, host, port):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return s

    def _serve(self):
        while True:
            try:
                self.datagrams.append(self.sock.recvfrom(65535))
            except OSError:
                return

    def close(self):
        self.sock.close()


class TCPSink:
    """A TCP listener on an address of the world that counts accepts (and answers nothing)."""

    def __init__(self, world: World, host: str, port: int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = world.in_net(self._bind, family, host, port)
        self.accepts: list[tuple] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _bind(family, host, port):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
        return s

    def _serve(self):
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            self.accepts.append(addr)
            conn.close()

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class WorldDNS(ExitDNS):
    """The world's resolver (127.0.0.1:53, named by its /etc/resolv.conf): answers
    the names it knows, NXDOMAIN for the rest, and records every question."""

    def __init__(self, world: World, names: dict[str, str]):
        super().__init__(names, world.in_net(UDPSink._bind, socket.AF_INET, "127.0.0.1", 53))


# -- the world ------------------------------------------------------------------------

def _untraversable(paths) -> dict[str, set[str]]:
    """Every ancestor of the paths that others cannot traverse, with the children needed below it."""
    found: dict[str, set[str]] = {}
    for p in paths:
        p = Path(p).resolve()
        cur = Path("/")
        for part in p.parts[1:]:
            if not cur.stat().st_mode & 0o001:
                found.setdefault(str(cur), set()).add(part)
            cur = cur / part
    return found


class World:
    def __init__(self, hosts: dict[str, str] | None = None, dns_names: dict[str, str] | None = None,
                 expose=()):
        self.base = Path(tempfile.mkdtemp(prefix="hush-world-", dir="/tmp"))  # traversable by nobody
        self.base.chmod(0o755)
        self.hosts = {**HOSTS, **(hosts or {})}
        self.dns_names = {**WORLD_DNS, **(dns_names or {})}
        self.procs: list[subprocess.Popen] = []
        self.holder: subprocess.Popen | None = None
        self._netns_fd: int | None = None
        self._counter = 0
        self.home = self.dir("home")
        self.dns: WorldDNS | None = None
        self.expose = [str(p) for p in expose]  # more paths nobody must reach in the world

    # -- set-up / tear-down -------------------------------------------------------

    def _script(self) -> str:
        etc = self.base / "etc"
        etc.mkdir(mode=0o755)
        (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n" + "".join(
            f"{addr} {name}\n" for name, addr in self.hosts.items()))
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
        for f in etc.iterdir():
            f.chmod(0o644)
        q = shlex.quote
        lines = ["set -e", "ip link set lo up"]
        lines += [f"ip addr add {a}/32 dev lo" for a in ADDRESSES]
        lines += [f"ip -6 addr add {a}/128 dev lo nodad" for a in ADDRESSES6]
        for name in ("hosts", "resolv.conf"):
            target = os.path.realpath(f"/etc/{name}")
            lines.append(f"mount --bind {q(str(etc / name))} {q(target)}")
        # let the unprivileged uid reach the interpreter and the repository
        stash = self.base / "stash"
        stash.mkdir(mode=0o700)
        needed = [PYTHON, os.path.realpath(PYTHON), sys.base_prefix, sys.prefix, str(REPO), *self.expose]
        # top down: a tmpfs (0755) over each such directory, holding only what is needed below it
        for i, (parent, children) in enumerate(sorted(_untraversable(needed).items(), key=lambda kv: len(kv[0]))):
            moves = []
            for j, child in enumerate(sorted(children)):
                src = Path(parent) / child
                tmp = stash / f"{i}-{j}"
                lines.append(f"mkdir {q(str(tmp))}" if src.is_dir() else f"touch {q(str(tmp))}")
                lines.append(f"mount --bind {q(str(src))} {q(str(tmp))}")
                moves.append((tmp, src))
            lines.append(f"mount -t tmpfs -o mode=0755 hush-world {q(parent)}")
            for tmp, src in moves:
                lines.append(f"mkdir {q(str(src))}" if src.is_dir() else f"touch {q(str(src))}")
                lines.append(f"mount --move {q(str(tmp))} {q(str(src))}")
        lines.append(f"touch {q(str(self.base / 'ready'))}")
        lines.append("exec sleep infinity")
        return "\n".join(lines)

    def start(self) -> World:
        for tool in ("unshare", "nsenter", "setpriv", "ip", "sleep"):
            assert shutil.which(tool, path=PATH), f"{tool} is not installed (util-linux, iproute2)"
        assert os.geteuid() == 0, "the world is built as root (CI runs as root)"
        script = self._script()
        (self.base / "setup.sh").write_text(script)
        # the holder dies with the test process (pdeathsig), the world with it
        with open(self.base / "holder.log", "wb") as log:  # the holder writes to its own copy of the descriptor
            self.holder = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--net", "--mount", "--propagation", "private",
                 "--", "sh", str(self.base / "setup.sh")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            until(lambda: (self.base / "ready").exists() or self.holder.poll() is not None, 30, "world set up")
            if self.holder.poll() is not None:
                raise AssertionError("the world's set-up failed:\n" + (self.base / "holder.log").read_text())
            self._netns_fd = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY)
            self.dns = WorldDNS(self, self.dns_names)
            res = self.run([PYTHON, "-c", "import hush.daemon.cli.main"], capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, f"uid {NOBODY} cannot run hush in the world:\n{res.stderr}"
        except BaseException:
            self.close()
            raise
        return self

    @property
    def pid(self) -> int:
        return self.holder.pid

    def kill_tree(self, proc: subprocess.Popen) -> None:
        """Kill a process started here and every descendant it has (a launched app outlives
        a killed ``hush launch``: it is its child, in namespaces of its own)."""
        if proc.poll() is not None:
            return  # reaped: its pid may be anyone's now
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def close(self) -> None:
        for p in reversed(self.procs):
            self.kill_tree(p)
        if self.dns:
            self.dns.close()
        if self.holder and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(10)
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None
        shutil.rmtree(self.base, ignore_errors=True)

    # -- joining the world ----------------------------------------------------------

    def in_net(self, fn, *args, **kwargs):
        """Call ``fn`` in a thread that entered the world's network namespace (sockets made
        there stay in the world; subprocesses started there run in its network namespace)."""
        result: dict = {}

        def run():
            try:
                os.setns(self._netns_fd, os.CLONE_NEWNET)
                result["value"] = fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller
                result["error"] = e

        t = threading.Thread(target=run)
        t.start()
        t.join()
        if "error" in result:
            raise result["error"]
        return result["value"]

    def dir(self, name: str, owner: int = NOBODY) -> Path:
        """A fresh directory in the world's base, owned by ``owner`` (nobody by default)."""
        self._counter += 1
        d = self.base / f"{name}-{self._counter}"
        d.mkdir(mode=0o755)
        os.chown(d, owner, owner)
        return d

    def env(self, extra: dict | None = None) -> dict[str, str]:
        return {"PATH": PATH, "HOME": str(self.home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})}

    def command(self, argv: list[str], user: bool = True) -> list[str]:
        """``argv`` in the world, as nobody unless ``user=False``; killed if the thread that
        starts it ends (pdeathsig: start processes from the test's own thread)."""
        cmd = ["nsenter", "-t", str(self.pid), "-n", "-m", "--", "setpriv", "--pdeathsig", "KILL"]
        if user:
            cmd += ["--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--inh-caps=-all"]
        return cmd + ["--"] + [str(a) for a in argv]

    def run(self, argv: list[str], user: bool = True, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        """Run a command in the world (as nobody unless ``user=False``) and wait for it."""
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("cwd", str(self.base))
        return subprocess.run(self.command(argv, user), env=self.env(env), stdin=subprocess.DEVNULL, **kwargs)

    def popen(self, argv: list[str], user: bool = True, env: dict | None = None, **kwargs) -> subprocess.Popen:
        """Start a command in the world; it is killed when the world closes."""
        kwargs.setdefault("cwd", str(self.base))
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(self.command(argv, user), env=self.env(env), **kwargs)
        self.procs.append(p)
        return p

    # -- far-side helpers -------------------------------------------------------------

    def free_port(self, host: str = "127.0.0.1") -> int:
        def pick():
            with socket.socket() as s:
                s.bind((host, 0))
                return s.getsockname()[1]
        return self.in_net(pick)

    def origin(self, host: str = ALLOWED_IP, port: int = 0, tls: ssl.SSLContext | None = None) -> Origin:
        return Origin(self, host, port, tls)


# -- hush in the world -------------------------------------------------------------------

class WorldHush:
    """``hush run`` in the world as nobody, with its own state dir and policies."""

    def __init__(self, world: World, policies: dict[str, str], config: str | None = None, args=()):
        self.world = world
        self.dir = world.dir("hush")
        self.state = self.dir / "state"
        self.policies = self.dir / "policies"
        self.policies.mkdir(mode=0o755)
        for name, text in policies.items():
            (self.policies / f"{name}.yaml").write_text(textwrap.dedent(text))
            (self.policies / f"{name}.yaml").chmod(0o644)
        cmd = [PYTHON, "-m", "hush.daemon.cli", "run", "--policies", str(self.policies),
               "--state-dir", str(self.state), *args]
        if config is not None:
            (self.dir / "config.yaml").write_text(textwrap.dedent(config))
            (self.dir / "config.yaml").chmod(0o644)
            cmd += ["--config", str(self.dir / "config.yaml")]
        self.log_path = self.dir / "hush.log"
        with open(self.log_path, "wb") as log:  # hush writes to its own copy of the descriptor
            self.proc = world.popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid  # nsenter and setpriv exec: this is the daemon itself

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> WorldHush:
        until(lambda: "hush is running" in self.log or self.proc.poll() is not None, timeout, "hush running")
        assert self.proc.poll() is None, f"hush exited with {self.proc.returncode}:\n{self.log}"
        return self

    def wait_tor_ready(self, timeout: float = 90) -> None:
        until(lambda: "tor ready" in self.log or self.proc.poll() is not None, timeout, "hush's tor ready")
        assert self.proc.poll() is None, self.log

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def cli(self, *args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        return self.world.run([PYTHON, "-m", "hush.daemon.cli", *args], capture_output=True, timeout=timeout,
                              **kwargs)

    def launch_argv(self, app: str, argv, state: Path | None = None, extra=()) -> list[str]:
        return [PYTHON, "-m", "hush.daemon.cli", "launch", "--state-dir", str(state or self.state),
                "--app", app, *extra, "--", *[str(a) for a in argv]]

    def launch(self, app: str, *argv, timeout: float = 120, extra=(), env=None) -> subprocess.CompletedProcess:
        """``hush launch --app APP -- ARGV`` in the world as nobody; stdout/stderr captured (bytes)."""
        return self.world.run(self.launch_argv(app, argv, extra=extra), capture_output=True, timeout=timeout,
                              env=env)

    def launch_popen(self, app: str, *argv, extra=(), **kwargs) -> subprocess.Popen:
        return self.world.popen(self.launch_argv(app, argv, extra=extra), **kwargs)

    def status(self) -> dict:
        res = self.cli("status", "--json", "--state-dir", str(self.state), text=True)
        assert res.returncode == 0, (res.stdout, res.stderr)
        return json.loads(res.stdout)

    def audit(self) -> list[dict]:
        """Every audit row written so far (read-only: the file stays nobody's)."""
        db = self.state / "audit.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM records ORDER BY id")]
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def wait_rows(self, predicate, timeout: float = 30, what: str = "audit rows") -> list[dict]:
        """Poll the audit until some row satisfies ``predicate``; all rows then."""
        return until(lambda: (lambda rows: rows if any(predicate(r) for r in rows) else None)(self.audit()),
                     timeout, what)


def tor_config(lab) -> str:
    """The config for a hush whose tor joins the world's private Tor network."""
    lines = "\n".join(f"    - {json.dumps(line)}" for line in lab.client_torrc())
    return f"log_level: info\ntor:\n  torrc:\n{lines}\n"
