"""The commands that do not proxy start fast: they never import mitmproxy
(bench/cli.py measures the time; this pins the cause). Each check runs in a
fresh interpreter, as the user's shell starts ``hush``."""

import subprocess
import sys

import pytest

from hush.daemon.audit.store import AuditWriter

CHECK = """
import sys
from hush.daemon.cli.main import main
try:
    code = main(sys.argv[1:])
finally:  # --help exits in argparse
    heavy = sorted(m for m in ("mitmproxy", "hush.addons", "hush.daemon.policy.loader", "tldextract", "requests",
                               "asyncio", "yaml", "sqlite3", "logging") if m in sys.modules)
    print("IMPORTED", ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def imported(*argv: str) -> set[str]:
    """What of the heavy modules ``hush ARGV`` imported (the command's exit code aside)."""
    out = subprocess.run([sys.executable, "-c", CHECK, *argv], capture_output=True, text=True, timeout=60)
    line = [x for x in out.stderr.splitlines() if x.startswith("IMPORTED")][-1]
    return set(filter(None, line.split(" ", 1)[1].split(",")))


def test_importing_the_cli_imports_no_mitmproxy():
    out = subprocess.run([sys.executable, "-c", "import sys, hush.daemon.cli; print('mitmproxy' in sys.modules, "
                          "'hush.addons' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.fixture
def state(tmp_path):
    writer = AuditWriter(tmp_path / "audit.db")
    writer.submit({"ts": 1.0, "app": "x", "decision": "block", "host": "a.org", "port": 443, "ip_exposed": False})
    writer.close()
    return tmp_path


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["audit", "tail", "--json"],
    ["audit", "summary", "--json"],
    ["audit", "show", "1", "--json"],
    ["audit", "export"],
    ["status"],
    ["policy", "suggest", "--app", "x"],
])
def test_commands_that_do_not_proxy_import_no_mitmproxy(argv, state):
    assert "mitmproxy" not in imported(*argv, *(["--state-dir", str(state)] if argv != ["--help"] else []))


def test_policy_commands_import_the_loader_lazily(tmp_path):
    """``hush.daemon.policy``'s names are imported on first use, not with the package."""
    out = subprocess.run([sys.executable, "-c", "import sys, hush.daemon.policy, hush.daemon.config; "
                          "print('hush.daemon.policy.loader' in sys.modules)"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False"]


@pytest.mark.parametrize("argv", [
    ["policy", "check"],
    ["policy", "explain", "--app", "signal", "https://example.com/", "--header", "Host: example.com"],
    ["policy", "explain", "--app", "whatsapp", "https://example.com/a", "--header", "User-Agent: WhatsApp/2"],
])
def test_the_policy_commands_import_no_mitmproxy(argv):
    """They load the actions and classify a request, but hold no flow: mitmproxy stays out, and the
    Public Suffix List is read without tldextract's code (requests, urllib3)."""
    heavy = imported(*argv)
    assert not heavy & {"mitmproxy", "tldextract", "requests", "asyncio", "logging"}, heavy


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["policy", "--help"]])
def test_help_and_version_load_no_yaml_and_no_sqlite(argv):
    assert not imported(*argv) & {"yaml", "sqlite3", "asyncio", "mitmproxy"}


def test_status_asks_the_daemon_without_an_event_loop_or_sqlite(state):
    """``hush status`` is a line over a unix socket: the control module's server side (asyncio) and
    the audit store (SQLite) stay out."""
    assert not imported("status", "--state-dir", str(state)) & {"asyncio", "sqlite3", "mitmproxy"}
