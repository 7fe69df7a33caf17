"""The live view's secret: ``STATE_DIR/ui-token`` (0600), new at each daemon start.

Imports nothing heavy: ``hush ui`` reads it (no asyncio, no mitmproxy).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_NAME = "ui-token"


def token_path(state_dir: Path) -> Path:
    return Path(state_dir) / TOKEN_NAME


def write_token(state_dir: Path) -> str:
    """A new secret for this daemon, written 0600 through a rename.  Blocking: call in a thread."""
    token = secrets.token_urlsafe(32)
    path = token_path(state_dir)
    tmp = path.with_name(f".{TOKEN_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


def read_token(state_dir: Path) -> str:
    """The running daemon's secret.  :raises OSError: if there is none."""
    return token_path(state_dir).read_text().strip()
