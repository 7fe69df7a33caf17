"""Relay a decided tunnel's bytes in the kernel: ``os.splice`` through a pipe, in a thread.

Once a connection-level decision has let a tunnel through and the site is
connected, nothing more needs inspecting: the bytes need not climb through
mitmproxy's layers and Python buffers.  A ``Relay`` moves them between the
two sockets with ``splice(2)`` (socket → pipe → socket, no copy into Python),
in one thread per tunnel that holds no GIL while it waits (``poll``) or
splices.  No mitmproxy here: ``addons/tunnel.py`` decides when to hand a
connection over and gives back its end.

- Bytes are counted as they are delivered: ``up`` towards the site, ``down``
  to the app (and added to ``counts.up`` / ``counts.down``, the audit's tally,
  as they go: only this thread writes it once the connection is handed over).
- Half-close: one side's EOF becomes ``shutdown(SHUT_WR)`` towards the other;
  the other direction goes on until its own EOF.
- ``stop()`` (a reload revoked the tunnel, or its connection is being closed)
  shuts both sockets down at once, in the caller's thread: nothing more
  reaches the site, whatever the relay thread was doing.
- The sockets stay open (the relay works on duplicates): their owner closes
  them, after ``on_end``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import threading
import time
from collections.abc import Callable

PIPE_SIZE = 1 << 20  # bytes in flight per direction (Linux's default pipe-max-size)
CHUNK = 1 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python ≥ 3.10 on Linux; spelled out for the type checker)
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class _Direction:
    def __init__(self, src: socket.socket, dst: socket.socket, head: bytes, counts: object | None, field: str):
        self.src, self.dst = src, dst
        self.counts, self.field = counts, field  # counts.<field> += bytes delivered (the audit's tally)
        self.head = head  # bytes read before the hand-off, sent first
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.write_end, F_SETPIPE_SZ, PIPE_SIZE)
        self.in_pipe = 0
        self.eof = False  # src said EOF
        self.done = False  # EOF passed on (or given up)
        self.sent = 0

    def wants(self) -> tuple[socket.socket, int] | None:
        if self.done:
            return None
        if self.head or self.in_pipe:
            return self.dst, select.POLLOUT
        return self.src, select.POLLIN

    def pump(self) -> None:
        """Move what can be moved now without blocking (raises OSError on a broken connection)."""
        while not self.done:
            if self.head:
                try:
                    n = self.dst.send(self.head)
                except BlockingIOError:
                    return
                self.head = self.head[n:]
                self._sent(n)
                continue
            if self.in_pipe:
                try:
                    n = os.splice(self.read_end, self.dst.fileno(), self.in_pipe, flags=_FLAGS)
                except BlockingIOError:
                    return
                self.in_pipe -= n
                self._sent(n)
                continue
            if self.eof:
                with contextlib.suppress(OSError):
                    self.dst.shutdown(socket.SHUT_WR)
                self.done = True
                return
            try:
                n = os.splice(self.src.fileno(), self.write_end, CHUNK, flags=_FLAGS)
            except BlockingIOError:
                return
            if n == 0:
                self.eof = True
            self.in_pipe += n

    def _sent(self, n: int) -> None:
        self.sent += n
        if self.counts is not None:
            setattr(self.counts, self.field, getattr(self.counts, self.field) + n)

    def close(self) -> None:
        for fd in (self.read_end, self.write_end):
            with contextlib.suppress(OSError):
                os.close(fd)


def tell(loop, callback: Callable[..., object], *args: object) -> None:
    """From a relay's thread, ``callback(*args)`` on the event loop ``loop``; nothing once that loop
    has closed (the daemon stopped while the relay was ending: no one is left to tell)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise


class Relay:
    """Relay between two connected sockets (given as file descriptors, which stay the caller's)."""

    def __init__(self, client_fd: int, server_fd: int, up_head: bytes = b"", down_head: bytes = b"",
                 on_end: Callable[[Relay], None] | None = None,
                 on_activity: Callable[[], None] | None = None, activity_every: float = 1.0,
                 counts: object | None = None):
        self.client = socket.socket(fileno=os.dup(client_fd))
        self.server = socket.socket(fileno=os.dup(server_fd))
        for s in (self.client, self.server):
            s.setblocking(False)
        self.up = _Direction(self.client, self.server, up_head, counts, "up")
        self.down = _Direction(self.server, self.client, down_head, counts, "down")
        self.on_end = on_end
        self.on_activity = on_activity
        self.activity_every = activity_every
        self.error: str | None = None
        self.stopped = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="hush-relay", daemon=True)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def bytes_up(self) -> int:
        return self.up.sent

    @property
    def bytes_down(self) -> int:
        return self.down.sent

    def start(self) -> Relay:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop relaying now: both sockets are shut down before this returns."""
        self.stopped = True
        with self._lock:
            if self._closed:
                return
            for s in (self.server, self.client):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def discard(self) -> None:
        """Close what a relay that never started holds (its duplicates, pipes and wake-up pipe)."""
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._closed = True
            for d in (self.up, self.down):
                d.close()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            for s in (self.client, self.server):
                with contextlib.suppress(OSError):
                    s.close()  # the duplicates: the owner's descriptors stay open

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        last = 0.0
        moved = 0
        try:
            self.up.pump()
            self.down.pump()
            while not self.stopped and not (self.up.done and self.down.done):
                poller = select.poll()
                poller.register(self._wake_r, select.POLLIN)
                wanted: dict[int, int] = {}
                for d in (self.up, self.down):
                    want = d.wants()
                    if want is not None:
                        fd = want[0].fileno()
                        wanted[fd] = wanted.get(fd, 0) | want[1]
                for fd, mask in wanted.items():
                    poller.register(fd, mask)
                poller.poll()
                if self.stopped:
                    break
                self.up.pump()
                self.down.pump()
                if self.on_activity is not None:
                    total = self.up.sent + self.down.sent
                    now = time.monotonic()
                    if total != moved and now - last >= self.activity_every:
                        moved, last = total, now
                        self.on_activity()
        except OSError as e:  # reset, broken pipe: the relay ends, the owner sees the connection fail
            if not self.stopped:
                self.error = f"{errno.errorcode.get(e.errno or 0, 'error')}: {e.strerror}"
        finally:
            self._release()
            if self.on_end is not None:
                self.on_end(self)
