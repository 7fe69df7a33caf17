"""Which process owns the other end of a loopback TCP connection.

The origin knows its peer's (address, port); the socket with that local
address is in /proc/net/tcp with its inode, and the process holding the
inode has it among its /proc/PID/fd links.  Through Tor the owner is the exit
relay; a direct connection is hush.  (The exit ignores OutboundBindAddressExit
for 127.0.0.0/8, so the address alone proves nothing.)
"""

from __future__ import annotations

import os
import socket
import struct


def _hex_address(host: str, port: int) -> str:
    packed = socket.inet_aton(host)
    return f"{struct.unpack('<I', packed)[0]:08X}:{port:04X}"


def socket_inodes(host: str, port: int, remote: tuple | None = None) -> list[int]:
    """Inodes of the live sockets bound to (host, port), optionally connected to ``remote``.

    The same local port can also be listed for a TIME_WAIT leftover of an
    earlier connection (inode 0, owned by nobody), and Linux lists it wherever
    its hash puts it, so every line is checked and inode-less ones are skipped.
    """
    wanted = _hex_address(host, port)
    peer = _hex_address(*remote) if remote else None
    found = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1] == wanted and (peer is None or parts[2] == peer) and int(parts[9]):
                found.append(int(parts[9]))
    return found


def owner_pid(peer: tuple, local: tuple | None = None) -> int | None:
    """The pid holding the socket at ``peer`` (connected to ``local``, if given)."""
    targets = {f"socket:[{inode}]" for inode in socket_inodes(peer[0], peer[1], local)}
    if not targets:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fd_dir = f"/proc/{pid}/fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(f"{fd_dir}/{fd}") in targets:
                        return int(pid)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def children(pid: int, name: str) -> list[int]:
    """Child processes of ``pid`` whose command name is ``name``."""
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and comm == name:
            out.append(int(entry))
    return out
