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
import socket
import struct

from hush.daemon.policy import procnet

DEADLINE = 1.0  # seconds: the kernel answers at once; this bounds the wait regardless


async def uid_inode(peer: tuple, local: tuple | None) -> tuple[int, int] | None:
    """As ``procnet.uid_inode``, on the event loop: (uid, inode) of the client socket of a
    connection hush accepted from ``peer`` on ``local``, or None."""
    try:
        message = procnet.sock_diag_request(peer, local) if local is not None else None
    except ValueError:
        return None
    if message is not None:
        loop = asyncio.get_running_loop()
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, procnet.NETLINK_SOCK_DIAG) as nl:
                nl.setblocking(False)
                nl.sendto(message, (0, 0))  # the kernel answers while this is sent
                data = await asyncio.wait_for(loop.sock_recv(nl, 65536), DEADLINE)
            return procnet.sock_diag_answer(data)
        except (OSError, TimeoutError, struct.error):
            pass  # no netlink here (or no answer): the /proc fallback
    return await asyncio.to_thread(procnet.uid_inode, peer, None)
