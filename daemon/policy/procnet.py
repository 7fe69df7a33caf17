"""Which local process owns a TCP connection to one of hush's listeners.

The client's end of the connection has hush's peer address as its local
address.  The kernel tells its owner's uid and its inode: asked for that one
socket by its four addresses over netlink (``sock_diag``, microseconds), or,
failing that, by reading ``/proc/net/tcp{,6}`` (which the kernel generates
for every socket on the machine: tens of milliseconds with many sockets in
TIME_WAIT).  The process holding the inode has a ``/proc/PID/fd/N ->
socket:[INODE]`` link; finding it scans /proc.  Call these off the event
loop, once per connection.

    owner(("127.0.0.1", 51234))  →  Owner(pid=4242, uid=1000, name="signal-desktop",
                                          exe="/opt/Signal/signal-desktop", holders=(Process(4242, …),))
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
import struct

from hush.daemon.policy.hosts import address_of

DELETED = " (deleted)"  # what the kernel appends to /proc/PID/exe when the file was replaced or removed


@dataclasses.dataclass(frozen=True)
class Process:
    pid: int
    name: str | None  # /proc/PID/comm: the process sets it itself (prctl PR_SET_NAME); never trusted
    exe: str | None  # /proc/PID/exe, as the kernel resolved it (symlinks followed); None if unreadable

    @property
    def exe_name(self) -> str | None:
        """The executable's file name: what a policy's ``identify.process`` names."""
        if not self.exe:
            return None
        path = self.exe[: -len(DELETED)] if self.exe.endswith(DELETED) else self.exe  # upgraded under it
        return os.path.basename(path) or None


@dataclasses.dataclass(frozen=True)
class Owner:
    pid: int | None
    uid: int
    name: str | None  # /proc/PID/comm (at most 15 characters), for the record only
    exe: str | None  # the executable's path, if readable
    # every process holding the socket (a socket passed on, or inherited over
    # fork/exec, has several): identification must agree for all of them
    holders: tuple[Process, ...] = ()

    @property
    def names(self) -> set[str]:
        """The executables' file names of every process holding the socket.
        ``comm`` is not among them: any process can set its own."""
        holders = self.holders or (Process(self.pid or 0, self.name, self.exe),)
        return {p.exe_name for p in holders if p.exe_name}


def _hex(host: str, port: int) -> tuple[str, str]:
    address = ipaddress.ip_address(host)
    if address.version == 4:
        return "tcp", f"{struct.unpack('<I', address.packed)[0]:08X}:{port:04X}"
    words = struct.unpack("<4I", address.packed)  # tcp6: four little-endian 32-bit words
    return "tcp6", "".join(f"{w:08X}" for w in words) + f":{port:04X}"


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
_NOCOOKIE = 0xFFFFFFFF


def sock_diag_request(local: tuple, remote: tuple) -> bytes | None:
    """The netlink ``SOCK_DIAG_BY_FAMILY`` request for the TCP socket local→remote
    (None: the two addresses are of different families)."""
    lhost, rhost = address_of(local[0]), address_of(remote[0])  # the kernel's spelling: parsed once each
    if lhost is None or rhost is None:
        raise ValueError(f"not addresses: {local[0]!r}, {remote[0]!r}")
    if lhost.version != rhost.version:
        return None
    family = socket.AF_INET if lhost.version == 4 else socket.AF_INET6
    src = lhost.packed.ljust(16, b"\0")
    dst = rhost.packed.ljust(16, b"\0")
    sockid = struct.pack("!HH", local[1], remote[1]) + src + dst + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE)
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    return struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + req


def sock_diag_answer(data: bytes) -> tuple[int, int] | None:
    """(uid, inode) from a ``sock_diag`` answer; None for an error (no such socket:
    it closed, or is in another namespace)."""
    _length, kind = struct.unpack_from("=IH", data)  # nlmsghdr: length, type
    if kind == NLMSG_ERROR:
        return None
    # inet_diag_msg: family, state, timer, retrans (4 B), sockid (48 B), expires, rqueue, wqueue, uid, inode
    uid, inode = struct.unpack_from("=II", data, 16 + 4 + 48 + 12)
    return uid, inode


def sock_diag(local: tuple, remote: tuple) -> tuple[int, int] | None:
    """(uid, inode) of the TCP socket local→remote, asked of the kernel directly.

    :raises OSError: if netlink sock_diag is not available.
    """
    message = sock_diag_request(local, remote)
    if message is None:
        return None
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(message, (0, 0))
        data = nl.recv(65536)
    return sock_diag_answer(data)


def socket_entry(host: str, port: int, proc: str = "/proc") -> tuple[int, int] | None:
    """(uid, inode) of the TCP socket whose local address is host:port.

    ``str.find`` over the table, not a parse of every line: cheap even
    with tens of thousands of sockets open.  Entries without an inode (TIME_WAIT
    leftovers of an earlier connection from the same port) are skipped."""
    table, wanted = _hex(host, port)
    tables = [table] if table == "tcp6" else ["tcp", "tcp6"]
    v4_in_v6 = "0000000000000000FFFF0000" + wanted[:8] + wanted[8:]
    for name in tables:
        try:
            with open(f"{proc}/net/{name}") as f:
                text = f.read()
        except OSError:
            continue
        needle = f": {wanted if name == 'tcp' or table == 'tcp6' else v4_in_v6} "
        at = text.find(needle)
        while at >= 0:
            line = text[text.rfind("\n", 0, at) + 1: text.find("\n", at)]
            parts = line.split()
            if parts[9] != "0":  # inode 0: a TIME_WAIT leftover of an earlier connection on this port
                return int(parts[7]), int(parts[9])
            at = text.find(needle, at + 1)
    return None


def pids_of_inode(inode: int, proc: str = "/proc") -> list[int]:
    """Every process holding the socket ``inode`` (scans all of /proc: a
    socket may be held by several)."""
    target = f"socket:[{inode}]"
    found = []
    for pid in filter(str.isdigit, os.listdir(proc)):
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == target:
                    found.append(int(pid))
                    break
            except OSError:
                continue
    return found


def pid_of_inode(inode: int, proc: str = "/proc") -> int | None:
    pids = pids_of_inode(inode, proc)
    return pids[0] if pids else None


def process(pid: int, proc: str = "/proc") -> Process:
    name = exe = None
    with contextlib.suppress(OSError), open(f"{proc}/{pid}/comm") as f:
        name = f.read().strip()
    with contextlib.suppress(OSError):
        exe = os.readlink(f"{proc}/{pid}/exe")  # the kernel's path of the file it runs, links resolved
    return Process(pid, name, exe)


def uid_inode(peer: tuple, local: tuple | None = None, proc: str = "/proc") -> tuple[int, int] | None:
    """(uid, inode) of the client socket of a connection hush accepted from
    ``peer`` on its address ``local``: by sock_diag, else from /proc."""
    try:
        if local is not None:
            try:
                return sock_diag(peer, local)
            except OSError:
                pass
        return socket_entry(peer[0], peer[1], proc)
    except (ValueError, OSError):
        return None


def owner(peer: tuple, local: tuple | None = None, proc: str = "/proc") -> Owner | None:
    """The process on the other end of a connection hush accepted from ``peer``."""
    entry = uid_inode(peer, local, proc)
    if entry is None:
        return None
    uid, inode = entry
    holders = tuple(process(pid, proc) for pid in pids_of_inode(inode, proc))
    first = holders[0] if holders else None
    return Owner(first.pid if first else None, uid, first.name if first else None, first.exe if first else None,
                 holders)
