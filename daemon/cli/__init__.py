"""The ``hush`` command: argument parsing, output and exit codes (main.py),
``hush doctor`` and ``hush demo``."""

from hush.daemon.cli.main import main

__all__ = ["main"]
