"""The uid of a local client's socket, asked of the kernel without leaving the event loop.

``hush_same_user_only`` asks, for every connection, which uid holds the
client's end.  ``procnet.uid_inode`` asks netlink ``sock_diag`` in a thread:
the answer takes microseconds, but the hop to a worker thread and back (the
worker waits for the GIL the event loop holds, the loop then waits for the
worker's wake-up) cost ~1–2 ms of every new connection's set-up, measured
(docs/performance.md, "Connection-level tunnels").  The kernel answers a
``sock_diag`` request while it is being sent, so here the request goes out
on a non-blocking netlink socket and the answer is read through the event
loop (``loop.sock_recv``: already queued, it is read at once; a deadline
bounds the wait in any case).  Where netlink is not available, the
``/proc/net/tcp`` fallback runs in a thread, as before.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

from hush.daemon.policy import procnet

DEADLINE = 1.0  # seconds: the kernel answers at once; this bounds the wait regardless


def request(local: tuple, remote: tuple) -> bytes | None:
    """The ``SOCK_DIAG_BY_FAMILY`` request for the TCP socket local→remote (None: mixed families)."""
    lhost, rhost = ipaddress.ip_address(local[0]), ipaddress.ip_address(remote[0])
    if lhost.version != rhost.version:
        return None
    family = socket.AF_INET if lhost.version == 4 else socket.AF_INET6
    sockid = (struct.pack("!HH", local[1], remote[1]) + lhost.packed.ljust(16, b"\0") + rhost.packed.ljust(16, b"\0")
              + struct.pack("=III", 0, procnet._NOCOOKIE, procnet._NOCOOKIE))
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    return struct.pack("=IHHII", 16 + len(req), procnet.SOCK_DIAG_BY_FAMILY, procnet.NLM_F_REQUEST, 1, 0) + req


def answer(data: bytes) -> tuple[int, int] | None:
    """(uid, inode) from a ``sock_diag`` answer; None for an error (no such socket)."""
    _length, kind = struct.unpack_from("=IH", data)  # nlmsghdr: length, type
    if kind == procnet.NLMSG_ERROR:
        return None
    # inet_diag_msg: family, state, timer, retrans (4 B), sockid (48 B), expires, rqueue, wqueue, uid, inode
    uid, inode = struct.unpack_from("=II", data, 16 + 4 + 48 + 12)
    return uid, inode


async def uid_inode(peer: tuple, local: tuple | None) -> tuple[int, int] | None:
    """As ``procnet.uid_inode``, on the event loop: (uid, inode) of the client socket of a
    connection hush accepted from ``peer`` on ``local``, or None."""
    try:
        message = request(peer, local) if local is not None else None
    except ValueError:
        return None
    if message is not None:
        loop = asyncio.get_running_loop()
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, procnet.NETLINK_SOCK_DIAG) as nl:
                nl.setblocking(False)
                nl.sendto(message, (0, 0))  # the kernel answers while this is sent
                data = await asyncio.wait_for(loop.sock_recv(nl, 65536), DEADLINE)
            return answer(data)
        except (OSError, TimeoutError, struct.error):
            pass  # no netlink here (or no answer): the /proc fallback
    return await asyncio.to_thread(procnet.uid_inode, peer, None)
