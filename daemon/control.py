"""The daemon's control socket: ``STATE_DIR/control.sock`` (0600).

One request per connection, one line in, one JSON line out::

    $ printf 'status\\n' | socat - UNIX-CONNECT:~/.local/state/hush/control.sock
    {"running": true, "pid": 4242, ...}

``hush status --state-dir D`` talks to the daemon started with the same D.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("hush")

SOCKET_NAME = "control.sock"
MAX_PATH = 107  # sun_path


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


class ControlServer:
    def __init__(self, path: Path, commands: dict[str, Callable[[], dict]]):
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
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            command = self.commands.get(line.decode(errors="replace").strip())
            reply = command() if command else {"error": f"unknown command; try: {', '.join(self.commands)}"}
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
