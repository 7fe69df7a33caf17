"""sd_notify without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

    notify("READY=1", "STATUS=listening on 4 listeners")

Does nothing (returns False) when not started by systemd with Type=notify.
"""

from __future__ import annotations

import os
import socket


def notify(*messages: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.setblocking(False)
            s.connect(path)
            s.send("\n".join(messages).encode())
    except OSError:
        return False
    return True
