"""The live view's secret: ``STATE_DIR/ui-token`` (0600), new at each daemon start;
and the one-time nonces the URL ``hush ui`` opens carries instead of it.

The secret never goes on a command line (``/proc/PID/cmdline`` is readable by
every local user): ``hush ui`` reads it from the 0600 file and makes a nonce,
``TIME.RANDOM.MAC`` with MAC = HMAC-SHA256(secret, TIME.RANDOM).  The server
takes a nonce once, within ``NONCE_TTL`` seconds of TIME, and answers it with
the cookie that holds the secret (daemon/ui/server.py).  Only the holder of
the secret can make one; a used or expired one is refused.

Imports nothing heavy: ``hush ui`` reads it (no asyncio, no mitmproxy).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

TOKEN_NAME = "ui-token"
NONCE_TTL = 60  # seconds a URL from `hush ui` can be opened in
NONCE_SKEW = 5  # seconds a nonce's time may be ahead of the daemon's clock


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


def _mac(token: str, stamp: str) -> str:
    return hmac.new(token.encode(), f"hush-ui-nonce:{stamp}".encode(), hashlib.sha256).hexdigest()[:32]


def make_nonce(token: str, now: float | None = None) -> str:
    """A one-time nonce for the URL ``hush ui`` opens (valid ``NONCE_TTL`` seconds, once)."""
    stamp = f"{int(time.time() if now is None else now)}.{secrets.token_urlsafe(16)}"
    return f"{stamp}.{_mac(token, stamp)}"


def check_nonce(token: str, nonce: str, now: float | None = None) -> str | None:
    """The nonce's random part if ``token`` made it and it has not expired; else None.

    Whether it was used already is for the caller (it remembers the random parts it took)."""
    parts = nonce.split(".")
    if (not nonce.isascii() or len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12
            or not 16 <= len(parts[1]) <= 64):
        return None
    mac = _mac(token, f"{parts[0]}.{parts[1]}")
    if not token or not hmac.compare_digest(parts[2].encode(), mac.encode()):
        return None
    age = (time.time() if now is None else now) - int(parts[0])
    if not -NONCE_SKEW <= age <= NONCE_TTL:
        return None
    return parts[1]
