"""Where hush finds its policies, config and state.

Precedence, highest first: the command-line flag, ``HUSH_*`` environment
variables, systemd's ``$STATE_DIRECTORY``/``$CONFIGURATION_DIRECTORY``, the
config file, then the XDG defaults (``~/.local/state/hush``,
``~/.config/hush``) and, for policies, the ones shipped with hush.
"""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value and os.path.isabs(value) else Path.home() / default


def config_home() -> Path:
    configured = os.environ.get("CONFIGURATION_DIRECTORY")  # systemd
    if configured:
        return Path(configured.split(":")[0])
    return _xdg("XDG_CONFIG_HOME", ".config") / "hush"


def config_file(flag: str | None) -> Path | None:
    """The config file to read, or None for built-in defaults."""
    if flag:
        return Path(flag)
    if os.environ.get("HUSH_CONFIG"):
        return Path(os.environ["HUSH_CONFIG"])
    default = config_home() / "config.yaml"
    return default if default.exists() else None


def state_dir(flag: str | None, configured: Path | None = None) -> Path:
    if flag:
        return Path(flag)
    for var in ("HUSH_STATE_DIR", "STATE_DIRECTORY"):
        if os.environ.get(var):
            return Path(os.environ[var].split(":")[0])
    if configured:
        return configured
    return _xdg("XDG_STATE_HOME", ".local/state") / "hush"


def shipped_policies() -> Path:
    import hush.policies

    for entry in hush.policies.__path__:
        path = Path(entry)
        if path.is_dir():
            return path
    raise RuntimeError("hush's shipped policies are not installed")


class PolicyDirMissing(FileNotFoundError):
    """The policy directory named by the flag, ``$HUSH_POLICIES`` or the config does not exist."""

    def __init__(self, path: Path, source: str):
        self.path = path
        super().__init__(f"the policy directory {path} does not exist (from {source})")


def policies(flag: str | None, configured: Path | None = None) -> Path:
    """The policy directory (or file) to read.

    :raises PolicyDirMissing: if the one named by the flag, ``$HUSH_POLICIES`` or the
        config does not exist — one line that says so, rather than a read error at an
        invented ``:1:1``
    """
    for value, source in ((flag, "--policies"), (os.environ.get("HUSH_POLICIES"), "$HUSH_POLICIES"),
                          (configured, "policies in the config")):
        if value:
            path = Path(value)
            if not path.exists():
                raise PolicyDirMissing(path, source)
            return path
    user = config_home() / "policies"
    return user if user.is_dir() else shipped_policies()


def ca_dir(state: Path) -> Path:
    return state / "ca"


def ca_cert(state: Path) -> Path:
    """The CA certificate apps are told to trust (the key stays beside it, 0600)."""
    return ca_dir(state) / "mitmproxy-ca-cert.pem"
