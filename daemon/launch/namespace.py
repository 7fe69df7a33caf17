"""``hush launch --app APP -- CMD``: run a command whose only way out is hush.

What happens, in order (``docs/launch.md`` says it for users):

1. This process (on the host) connects to the running daemon's
   ``STATE_DIR/launch.sock``.  No daemon: one line, exit 7, nothing started.
2. It forks a child that enters a new user + network + mount namespace (as
   the caller: no setuid helper, no root).  In the child, as the namespace's
   root: ``lo`` up, every IPv4 and IPv6 destination routed locally, and
   nftables rules that send every TCP connection (except to the namespace's
   own loopback) to one listening socket and every DNS packet (UDP and TCP
   port 53, to any server) to the DNS stub's sockets; every other packet is
   rejected, so UDP fails at once.  It creates those listening sockets.
3. The child hands the sockets to this process, which passes them to the
   daemon (``SCM_RIGHTS``); the daemon accepts on them from then on, and every
   copy here is closed: no process of hush stays in the app's namespace, and
   when the daemon goes, the sockets go with it (new connections are refused).
4. The child hides the host's resolver side doors from the mount namespace
   (``/etc/hosts`` with localhost only, ``/etc/resolv.conf`` naming the stub,
   ``nsswitch.conf`` with ``files dns``, systemd-resolved's, nscd's and
   avahi's sockets under empty directories), enters a nested user namespace
   mapped back to the caller's uid (no capabilities over the network
   namespace), and execs the command.
5. This process waits for the command, forwards the signals a terminal or
   service manager sends, and exits with the command's status.  Closing its
   connection to the daemon ends the launch there.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

LAUNCH_SOCKET = "launch.sock"
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")

# The order of the sockets handed to the daemon: a contract with daemon/launch/server.py.
SOCKETS = ("tcp4", "tcp6", "dns_udp4", "dns_udp6", "dns_tcp4", "dns_tcp6")

# Where the host resolver can be asked without a network (Unix sockets,
# which no network namespace stops): hidden under empty, read-only tmpfs.
SIDE_DOORS = ("/run/systemd/resolve", "/var/run/systemd/resolve", "/run/nscd", "/var/run/nscd",
              "/var/db/nscd", "/run/avahi-daemon", "/var/run/avahi-daemon")

HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
RESOLV = "# hush launch: every DNS packet goes to hush's stub, whatever server it names\nnameserver 127.0.0.1\n"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")

# --dbus filter: what the app may still ask for on the session bus (through
# xdg-dbus-proxy, as Flatpak does).  Not the portals: OpenURI opens a URL
# outside the namespace.  The system bus is hidden (systemd-resolved answers
# names over it).
DBUS_TALK = ("org.freedesktop.Notifications", "org.kde.StatusNotifierWatcher", "org.freedesktop.secrets")
SYSTEM_BUS = ("/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket")
DBUS_MODES = ("open", "filter", "none")

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_CAPBSET_DROP = 24
HANDSHAKE_TIMEOUT = 15.0
MAX_GO = 64 * 1024


class LaunchError(Exception):
    """Setting up the launch failed; the command did not run."""


def tool(name: str) -> str | None:
    """``ip`` and ``nft`` live in /usr/sbin, which a normal user's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def nft_rules(tcp_port: int, dns_port: int) -> str:
    return f"""\
table inet hush {{
    chain nat_out {{
        type nat hook output priority -100; policy accept;
        meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns_port}
        ip daddr {{ 127.0.0.0/8, 0.0.0.0 }} return
        ip6 daddr {{ ::1, :: }} return
        meta l4proto tcp redirect to :{tcp_port}
    }}
    chain filter_out {{
        type filter hook output priority 0; policy drop;
        ct status dnat accept
        ct state established,related accept
        oif lo ip daddr 127.0.0.0/8 accept
        oif lo ip6 daddr ::1 accept
        meta l4proto tcp reject with tcp reset
        reject
    }}
}}
"""


# -- in the child, inside the namespaces -------------------------------------------------

def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _map_ids(inside_uid: int, outside_uid: int, inside_gid: int, outside_gid: int) -> None:
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inside_uid} {outside_uid} 1\n")
    _write("/proc/self/gid_map", f"{inside_gid} {outside_gid} 1\n")


def _tool(argv: list[str], stdin: str | None = None) -> None:
    import subprocess

    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise LaunchError(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip() or f'exit {done.returncode}'}")


def _listen(family: int, kind: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(1024)
    return sock


def make_sockets(attempts: int = 16) -> dict[str, socket.socket]:
    """The launch's listening sockets, on the namespace's loopback (one port for
    TCP on both families, one for DNS over UDP and TCP).  The ports are the kernel's
    picks for the first socket of each pair; where the others cannot have the same
    number (taken, for that protocol or family, by another socket: in a namespace of
    its own nothing is, elsewhere anything may be), new ports are picked."""
    for attempt in range(attempts):
        made: dict[str, socket.socket] = {}
        try:
            made["tcp4"] = _listen(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", 0)
            tcp_port = made["tcp4"].getsockname()[1]
            made["dns_udp4"] = _listen(socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", 0)
            dns_port = made["dns_udp4"].getsockname()[1]
            made["tcp6"] = _listen(socket.AF_INET6, socket.SOCK_STREAM, "::1", tcp_port)
            made["dns_udp6"] = _listen(socket.AF_INET6, socket.SOCK_DGRAM, "::1", dns_port)
            made["dns_tcp4"] = _listen(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", dns_port)
            made["dns_tcp6"] = _listen(socket.AF_INET6, socket.SOCK_STREAM, "::1", dns_port)
        except OSError as e:
            for sock in made.values():
                sock.close()
            if e.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise
            continue
        return {name: made[name] for name in SOCKETS}
    raise AssertionError("unreachable")


def set_up_network() -> dict[str, socket.socket]:
    ip, nft = tool("ip"), tool("nft")
    if ip is None or nft is None:
        raise LaunchError("`ip` and `nft` are needed (Debian: apt install iproute2 nftables)")
    _tool([ip, "link", "set", "lo", "up"])
    _tool([ip, "-4", "route", "add", "local", "default", "dev", "lo"])
    _tool([ip, "-6", "route", "add", "local", "default", "dev", "lo"])
    sockets = make_sockets()
    _tool([nft, "-f", "-"], nft_rules(sockets["tcp4"].getsockname()[1], sockets["dns_udp4"].getsockname()[1]))
    return sockets


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    return libc


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"mount {source or fstype} on {target}: {os.strerror(err)}")


def _bind_file(libc, source: str, target: str) -> None:
    _mount(libc, source, target, None, MS_BIND)
    # read-only, so the app cannot rewrite them (best effort: locked flags may forbid it)
    with contextlib.suppress(LaunchError):
        _mount(libc, None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _ancestors(paths) -> list[str]:
    """Every directory above ``paths`` but ``/``, each once, the outermost first."""
    out: set[str] = set()
    for path in paths:
        out.update(str(parent) for parent in Path(path).parents if str(parent) != "/")
    return sorted(out, key=lambda p: (p.count("/"), p))


# Directories a guarded file must not sit in directly: binding them read-only would break every app.
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def homes() -> set[str]:
    """The caller's home directory ($HOME and the password database's), real paths."""
    import pwd

    found = {os.environ.get("HOME", "")}
    with contextlib.suppress(KeyError):
        found.add(pwd.getpwuid(os.getuid()).pw_dir)
    return {os.path.realpath(h) for h in found if h}


def _too_shared(directory: str, home: set[str]) -> str | None:
    """Why ``directory`` cannot be made read-only in a launch, or None."""
    if directory == "/":
        return "/"
    if directory in home:
        return "your home directory"
    if any(h.startswith(directory + "/") for h in home):
        return "a directory above your home directory"
    if directory in SHARED_DIRS:
        return "a directory every program writes to"
    return None


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK)


def plan_guard(guard: dict, home: set[str], writable=_writable) -> tuple[list[str], list[str], list[str]]:
    """What ``protect_hush`` mounts: (directories bound on themselves, outermost first;
    paths made read-only, outermost first; directories hidden under a tmpfs).

    A guarded directory is made read-only itself.  A guarded FILE is protected by
    making its parent directory read-only, never by binding the file: an editor
    saves by renaming a new file over the old one, and when that happens outside
    the launch the kernel detaches every bind of the old file in every other
    namespace — the app would then see the new file, writable.  A directory bind
    survives renames inside it.  A file whose directory is the home directory,
    one above it, ``/`` or /tmp cannot be protected that way: LaunchError (the
    launch fails closed).  A file the caller can write neither to nor in its
    directory (shipped under /usr or site-packages) needs no read-only bind.

    :raises LaunchError: a guarded file sits directly in such a directory"""
    readonly: set[str] = set()
    anchored: list[str] = []  # not made read-only, but the directories above them still bound
    for path in guard.get("readonly", []):
        if not os.path.exists(path):
            continue
        if os.path.isdir(path):
            readonly.add(path)
            continue
        parent = os.path.dirname(path) or "/"
        if not writable(path) and not writable(parent):
            anchored.append(path)
            continue
        why = _too_shared(parent, home)
        if why is not None:
            raise LaunchError(
                f"{path} must be read-only to the app, which needs its directory {parent} read-only, and that is "
                f"{why}; move the file into a directory of its own (e.g. ~/.config/hush) and point hush at it there")
        readonly.add(parent)
    hide = [p for p in guard.get("hide", []) if os.path.isdir(p)]
    depth = lambda p: (p.count("/"), p)  # noqa: E731
    return _ancestors([*readonly, *anchored, *hide]), sorted(readonly, key=depth), hide


def protect_hush(libc, guard: dict, home: set[str] | None = None) -> None:
    """hush's own files, from the app: its state dir (launch.sock — with which
    the app could register sockets of its own as a laxer app —, control.sock,
    the CA key, the audit) is covered by an empty read-only tmpfs; its policies
    (a directory, or a file's directory: the daemon reloads what is written
    there) and its config (the file in use, by its directory; ~/.config/hush:
    read at the next start) are read-only (``plan_guard`` says why a file's
    directory and not the file).  Every directory above them is made a mount
    point first (bound on itself, with what is mounted below it): a mount point
    cannot be renamed or removed from inside (EBUSY), so the app cannot move a
    directory above the policies aside and make a new one where the daemon looks."""
    above, readonly, hide = plan_guard(guard, homes() if home is None else home)
    for path in above:
        _mount(libc, path, path, None, MS_BIND | MS_REC)
    for path in readonly:
        _mount(libc, path, path, None, MS_BIND | MS_REC)
        _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for path in hide:
        _mount(libc, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=0700")


def set_up_files(hide: tuple[str, ...] = (), guard: dict | None = None) -> None:
    """Only hush's stub answers names inside: hide every other resolver (and
    the sockets in ``hide``: the D-Bus buses, for --dbus filter and none), and
    keep the app away from hush's own files (``guard``, from the daemon)."""
    libc = _libc()
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    protect_hush(libc, guard or {})
    for door in SIDE_DOORS:
        if os.path.isdir(door) and not os.path.islink(door):
            _mount(libc, "tmpfs", door, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=0755")
    nsswitch = "hosts: files dns\n"
    try:
        lines = Path("/etc/nsswitch.conf").read_text().splitlines()
        nsswitch = "\n".join("hosts: files dns" if line.split(":")[0].strip() == "hosts" else line
                             for line in lines) + "\n"
    except OSError:
        pass
    with tempfile.TemporaryDirectory(prefix="hush-launch-") as tmp:
        empty = os.path.join(tmp, "empty")
        _write(empty, "")
        for path in hide:  # a socket file: an empty file over it, nothing to connect to
            if os.path.exists(path) and not os.path.isdir(path):
                _mount(libc, empty, os.path.realpath(path), None, MS_BIND)
        for name, text in (("hosts", HOSTS), ("resolv.conf", RESOLV), ("nsswitch.conf", nsswitch)):
            source = os.path.join(tmp, name)
            _write(source, text)
            os.chmod(source, 0o644)
            target = os.path.realpath(f"/etc/{name}")  # resolv.conf is often a symlink into a side door
            if not os.path.exists(target):
                parent = os.path.dirname(target)
                if not os.path.isdir(parent):
                    continue  # a dangling link into nowhere: nothing to answer with, nothing to hide
                _write(target, text)  # inside a side door we just emptied (our tmpfs)
                continue
            _bind_file(libc, source, target)
        # the bind mounts keep the files; the directory goes when this block ends


def drop_capabilities() -> None:
    """For a caller that is root: an empty bounding set, so the command's exec
    as root in the nested namespace keeps no capability."""
    libc = _libc()
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such cap
            raise LaunchError(f"cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}")


def child(channel: socket.socket, argv: list[str], env: dict[str, str], hide: tuple[str, ...] = ()) -> int:
    """In the forked child: build the namespaces, hand the sockets over, wait for
    the daemon's yes, exec the command.  Returns only on failure."""
    uid, gid = os.getuid(), os.getgid()
    try:
        os.unshare(os.CLONE_NEWUSER | os.CLONE_NEWNET | os.CLONE_NEWNS)
        _map_ids(0, uid, 0, gid)
        sockets = set_up_network()
        socket.send_fds(channel, [b"sockets\n"], [sockets[name].fileno() for name in SOCKETS])
        for sock in sockets.values():
            sock.close()  # the daemon holds them now; nothing of hush stays in here
    except (OSError, LaunchError) as e:
        channel.sendall(f"error {e}\n".encode())
        return 1
    answer = channel.makefile("rb").readline(MAX_GO)
    if not answer.startswith(b"go "):
        return 1  # the daemon said no (this process's parent says why)
    try:
        set_up_files(hide, json.loads(answer[3:]))
        os.unshare(os.CLONE_NEWUSER)
        _map_ids(uid, 0, gid, 0)
        if uid == 0:
            drop_capabilities()
    except (OSError, LaunchError) as e:
        print(f"hush launch: cannot finish the namespace: {e}", file=sys.stderr)
        return 1
    channel.close()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        print(f"hush launch: {argv[0]}: {e.strerror}", file=sys.stderr)
        return 127 if isinstance(e, FileNotFoundError) else 126


# -- on the host ---------------------------------------------------------------------------

def _reply(sock: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        data += chunk
    return json.loads(data)


def connect(state_dir: Path) -> socket.socket:
    """The daemon's launch socket, or ConnectionError."""
    path = Path(state_dir) / LAUNCH_SOCKET
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as e:
        sock.close()
        raise ConnectionError(f"hush is not running with --state-dir {state_dir} (no daemon at {path})") from e
    return sock


def launch_env() -> dict[str, str]:
    """The caller's environment, less proxy settings: inside, 127.0.0.1 is the
    namespace's own loopback, and none is needed."""
    return {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}


def exit_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Refused(Exception):
    """The daemon refused the launch (``reply`` says why)."""

    def __init__(self, reply: dict):
        super().__init__(reply.get("error", "refused"))
        self.reply = reply


def session_bus(env: dict[str, str]) -> str | None:
    """The path of the session bus's socket, if it has one.  (An abstract
    socket, ``unix:abstract=…``, is already out of reach: it belongs to the
    network namespace.)"""
    address = env.get("DBUS_SESSION_BUS_ADDRESS")
    if address is None:
        runtime = env.get("XDG_RUNTIME_DIR")
        return os.path.join(runtime, "bus") if runtime and os.path.exists(os.path.join(runtime, "bus")) else None
    for part in address.split(";")[0].partition(":")[2].split(","):
        key, _, value = part.partition("=")
        if key == "path":
            return value
    return None


class DbusFilter:
    """xdg-dbus-proxy on the host, in front of the session bus; it stops when
    this process (and so the read end of its ready pipe) goes."""

    def __init__(self, address: str | None, runtime_dir: str | None):
        proxy = shutil.which("xdg-dbus-proxy")
        if proxy is None:
            raise LaunchError("--dbus filter needs xdg-dbus-proxy (Debian: apt install xdg-dbus-proxy)")
        if address is None:
            raise LaunchError("--dbus filter: no session bus to filter (DBUS_SESSION_BUS_ADDRESS is not set)")
        self.dir = tempfile.mkdtemp(prefix="hush-dbus-", dir=runtime_dir)
        self.path = os.path.join(self.dir, "bus")
        ready_r, ready_w = os.pipe()
        import subprocess

        self.proc = subprocess.Popen(
            [proxy, f"--fd={ready_w}", address, self.path, "--filter", *(f"--talk={n}" for n in DBUS_TALK)],
            pass_fds=(ready_w,), stdin=subprocess.DEVNULL)
        os.close(ready_w)
        self._ready = ready_r
        if not os.read(ready_r, 1):
            self.close()
            raise LaunchError(f"xdg-dbus-proxy did not start (exit {self.proc.returncode})")

    def close(self) -> None:
        os.close(self._ready)  # the proxy's cue to stop
        try:
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def run(state_dir: Path, app: str, argv: list[str], dbus: str = "open") -> int:
    """Launch ``argv`` as ``app``.  Raises ConnectionError (no daemon: nothing
    started), Refused (unknown app …) or LaunchError (namespace set-up failed).

    ``dbus``: ``open`` leaves the session and system buses reachable (they are
    path sockets, which no network namespace stops: docs/launch.md says what
    that leaves open); ``filter`` puts xdg-dbus-proxy in front of the session
    bus and hides the system bus; ``none`` hides both."""
    if dbus not in DBUS_MODES:
        raise LaunchError(f"--dbus must be one of {', '.join(DBUS_MODES)}, not {dbus!r}")
    daemon = connect(state_dir)
    env = launch_env()
    hide: tuple[str, ...] = ()
    proxy = None
    if dbus != "open":
        bus = session_bus(env)
        address = env.get("DBUS_SESSION_BUS_ADDRESS") or (f"unix:path={bus}" if bus else None)
        runtime = env.get("XDG_RUNTIME_DIR")
        # the systemd user manager's private socket: `systemd-run --user` would start a command outside
        private = os.path.join(runtime, "systemd", "private") if runtime else None
        hide = (*(p for p in (bus, private) if p), *SYSTEM_BUS)
        env.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        if dbus == "filter":
            proxy = DbusFilter(address, env.get("XDG_RUNTIME_DIR"))
            env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={proxy.path}"
        else:
            env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/nonexistent/hush-launch-dbus-none"
    try:
        return _launch(daemon, argv, env, hide, app)
    finally:
        if proxy is not None:
            proxy.close()


def _launch(daemon: socket.socket, argv: list[str], env: dict[str, str], hide: tuple[str, ...], app: str) -> int:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 1
        try:
            daemon.close()
            ours.close()
            code = child(theirs, argv, env, hide)
        finally:
            os._exit(code)
    theirs.close()
    try:
        message, fds, _, _ = socket.recv_fds(ours, 4096, len(SOCKETS))
        try:
            if message != b"sockets\n" or len(fds) != len(SOCKETS):
                raise LaunchError(message.decode(errors="replace").removeprefix("error ").strip()
                                  or "the namespace's set-up failed")
            hello = {"app": app, "pid": pid, "argv": argv, "sockets": list(SOCKETS)}
            socket.send_fds(daemon, [json.dumps(hello).encode() + b"\n"], fds)
        finally:
            for fd in fds:
                os.close(fd)
        daemon.settimeout(HANDSHAKE_TIMEOUT)  # a daemon that does not answer: not started, not hung
        reply = _reply(daemon)
        daemon.settimeout(None)
        if not reply.get("ok"):
            ours.sendall(b"no\n")
            raise Refused(reply)
        ours.sendall(b"go " + json.dumps(reply.get("guard", {})).encode() + b"\n")
    except BaseException:
        _reap(pid)
        raise
    ours.close()
    return _wait(pid, daemon)


def _reap(pid: int) -> None:
    """The child, killed and waited for (once: after that its pid may be another process's)."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _wait(pid: int, daemon: socket.socket) -> int:
    """Wait for the command; pass on the signals meant for it; its status is ours."""
    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                return exit_status(status)
            except InterruptedError:  # pragma: no cover (PEP 475 retries)
                continue
    finally:
        daemon.close()  # the daemon ends the launch: its sockets close
