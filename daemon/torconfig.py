"""hush's tor settings and the file its launched tor's control port is named in.

Apart from :mod:`hush.daemon.tor` (which imports asyncio and manages the tor
process) so that the config and the CLI's ``tor status`` can use them without it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class TorConfig:
    mode: str = "launch"  # launch | attach
    control: str | None = None  # attach: "HOST:PORT" or a unix socket path
    password: str | None = None  # attach: control password (else cookie/none)
    torrc: tuple[str, ...] = ()  # launch: extra torrc lines ("Key value")
    binary: str = "tor"

    @property
    def attach_to(self) -> str:
        """The control port an attached tor is reached on (tor's default if none is configured)."""
        return self.control or "127.0.0.1:9051"


def control_port_file(state_dir: Path) -> Path:
    """Where the tor hush launched writes its control port, as ``PORT=127.0.0.1:9051``."""
    return Path(state_dir) / "tor" / "control-port"


def read_control_port(port_file: Path) -> str:
    """The ``HOST:PORT`` of a control port file."""
    return port_file.read_text().strip().split("=", 1)[-1]
