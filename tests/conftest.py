"""Fixtures for every test: an isolated home; and, for the tests that run real
processes (tests/integration, tests/scenarios), an origin that counts what
reaches it, the daemon as a subprocess, and the private Tor network.

The classes and helpers behind them are in tests/integration/harness.py:
tests import those by name; pytest finds the fixtures here.
"""

import os
import ssl
from pathlib import Path

import pytest
import trustme

from hush.daemon.torlab import ExitDNS, TorLab
from tests.integration.harness import NAME, ORIGIN_NAMES, Hush, Origin


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the real user's ~/.config or ~/.local/state."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "HUSH_STATE_DIR", "HUSH_POLICIES", "HUSH_CONFIG",
                "STATE_DIRECTORY", "CONFIGURATION_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    yield home


def pytest_configure(config):
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")


# -- real processes on loopback ---------------------------------------------------------

@pytest.fixture(scope="session")
def ca():
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("origin-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def origin():
    o = Origin("127.0.0.1")
    yield o
    o.close()


@pytest.fixture
def origin2():
    """A second origin, on another loopback address."""
    o = Origin("127.0.0.3")
    yield o
    o.close()


@pytest.fixture
def tls_origin(ca):
    cert = ca.issue_cert(*ORIGIN_NAMES)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    o = Origin("127.0.0.1", ctx)
    yield o
    o.close()


@pytest.fixture
def hush(tmp_path):
    started: list[Hush] = []

    def start(policies: dict[str, str], config: str | None = None, args=(), ready=True, env=None,
              state: Path | None = None) -> Hush:
        d = tmp_path / f"hush{len(started)}"
        d.mkdir()
        h = Hush(d, policies, config, args, env, state)
        started.append(h)
        return h.wait_ready() if ready else h

    yield start
    for h in started:
        if h.proc.poll() is None:
            h.proc.kill()
            h.wait_exit()


# -- the private Tor network (daemon/torlab.py), once per test session -----------------

@pytest.fixture(scope="session")
def exit_dns():
    dns = ExitDNS({NAME: "127.0.0.1", "other.hushtest": "127.0.0.1"})
    yield dns
    dns.close()


@pytest.fixture(scope="session")
def torlab(tmp_path_factory, exit_dns):
    lab = TorLab(tmp_path_factory.mktemp("torlab"), exit_dns.port)
    lab.start()
    yield lab
    lab.stop()
