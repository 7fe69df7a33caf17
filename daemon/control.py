"""The daemon's control socket, ``STATE_DIR/control.sock`` (0600), and its
lock, ``STATE_DIR/lock``.

One request per connection, one line in, one JSON line out::

    $ printf 'status\\n' | socat - UNIX-CONNECT:~/.local/state/hush/control.sock
    {"running": true, "pid": 4242, ...}

``hush status``, ``hush stop`` and ``hush reload`` with ``--state-dir D`` talk
to the daemon started with the same D.  A command may answer at once (a dict)
or later (a coroutine: ``reload`` answers once the new set is taken or refused).

The lock is an exclusive ``flock`` on ``STATE_DIR/lock``, held by the daemon for
its whole life (the kernel drops it when the process ends, however it ends);
the file holds the daemon's pid, for the message a second daemon prints.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the server side runs in the daemon; the CLI's side (request, stop) needs no event loop
    import asyncio

log = logging.getLogger("hush")

SOCKET_NAME = "control.sock"
# ``hush status --json`` (and the control socket's ``status``): "hush.status/1" until a
# field is removed or changes meaning (new fields may come in any version); docs/fleet.md
STATUS_SCHEMA = "hush.status/1"
LOCK_NAME = "lock"
MAX_PATH = 107  # sun_path

Command = Callable[[], "dict | Awaitable[dict]"]


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


def lock_path(state_dir: Path) -> Path:
    return Path(state_dir) / LOCK_NAME


class AlreadyRunning(Exception):
    """Another daemon holds the state directory's lock."""

    def __init__(self, pid: int | None):
        self.pid = pid
        super().__init__(f"hush is already running with this state dir (pid {pid if pid else 'unknown'})")


class StateLock:
    """The exclusive lock on a state directory, held while the daemon lives.

    ``acquire()`` raises :class:`AlreadyRunning` at once if another process holds it.
    """

    def __init__(self, state_dir: Path):
        self.path = lock_path(state_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(holder(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Unlock (the file stays: removing it would race a daemon starting now)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder(path: Path, wait: float = 1.0) -> int | None:
    """The pid written in a held lock file (a daemon that has just taken the
    lock writes it a moment later: wait up to ``wait`` seconds for it)."""
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            text = ""
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def locked(state_dir: Path) -> bool:
    """Whether a daemon holds ``state_dir``'s lock now (for ``hush stop``, waiting for it to end)."""
    try:
        fd = os.open(lock_path(state_dir), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a shared lock taken here
    return False


class ControlServer:
    def __init__(self, path: Path, commands: dict[str, Command]):
        self.path = Path(path)
        self.commands = commands
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> bool:
        if len(str(self.path)) > MAX_PATH:
            log.warning("no control socket: %s is longer than %d bytes; `hush status` will not reach this daemon",
                        self.path, MAX_PATH)
            return False
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            import asyncio

            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        return True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio

        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            command = self.commands.get(line.decode(errors="replace").strip())
            reply = command() if command else {"error": f"unknown command; try: {', '.join(self.commands)}"}
            if asyncio.iscoroutine(reply):
                reply = await reply
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("control socket request failed")
        finally:
            writer.close()


def request(state_dir: Path, command: str = "status", timeout: float = 5.0) -> dict:
    """Ask the daemon (blocking; for the CLI).

    :raises ConnectionError: if no daemon answers at ``state_dir``.
    """
    import socket

    path = socket_path(state_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ConnectionError(f"hush is not running with --state-dir {state_dir} (no daemon at {path})") from e
        s.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def stop(state_dir: Path, timeout: float = 60.0) -> int:
    """``hush stop``: ask the daemon to stop and wait until it has (its lock released).

    :returns: the daemon's pid
    :raises ConnectionError: if no daemon answers at ``state_dir``
    :raises TimeoutError: if it still runs after ``timeout`` seconds
    """
    import time

    reply = request(state_dir, "stop")
    if not reply.get("stopping"):
        raise ConnectionError(f"the daemon did not accept stop: {reply.get('error', reply)}")
    pid = int(reply["pid"])
    deadline = time.monotonic() + timeout
    while locked(state_dir):
        if time.monotonic() > deadline:
            raise TimeoutError(f"hush (pid {pid}) is still stopping after {timeout:.0f}s; see its log")
        time.sleep(0.05)
    return pid
