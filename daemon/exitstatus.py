"""The exit codes of every ``hush`` command (the README's table), in a module
that imports nothing: the CLI needs them before it knows whether it will run
the proxy."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Exit codes of every ``hush`` command."""

    OK = 0
    ERROR = 1
    USAGE = 2
    POLICY_INVALID = 3
    LISTEN_FAILED = 4
    EXAMPLES_FAILED = 5
    NOT_FOUND = 6
    DAEMON_UNREACHABLE = 7
