"""Fixtures of the ``hush launch`` tests: the world (tests/launch/world.py), origins
and sinks in it, hush in it as nobody, and the private Tor network inside it."""

from __future__ import annotations

import ssl

import pytest
import trustme

from hush.daemon.torlab import ExitDNS, TorLab

from .world import TOR_NAME, World, WorldHush

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def world():
    w = World().start()
    yield w
    w.close()


@pytest.fixture
def far(world):
    """Make origins and sinks in the world; all closed after the test."""
    made = []
    world.dns.queries.clear()  # what the world's resolver was asked during this test

    class Far:
        def origin(self, host, port=0, tls=None):
            made.append(world.origin(host, port, tls))
            return made[-1]

        def udp(self, host, port):
            from .world import UDPSink
            made.append(UDPSink(world, host, port))
            return made[-1]

        def tcp(self, host, port):
            from .world import TCPSink
            made.append(TCPSink(world, host, port))
            return made[-1]

    yield Far()
    for m in reversed(made):
        m.close()


@pytest.fixture(scope="session")
def tls_ctx():
    ca = trustme.CA()
    cert = ca.issue_cert("quic.test", "allowed.test", "203.0.113.12")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def whush(world):
    """Start ``hush run`` in the world as nobody: ``whush(policies, config=None)``."""
    started: list[WorldHush] = []

    def start(policies: dict[str, str], config: str | None = None, args=(), ready=True) -> WorldHush:
        h = WorldHush(world, policies, config, args)
        started.append(h)
        return h.wait_ready() if ready else h

    yield start
    for h in started:
        world.kill_tree(h.proc)  # hush and its tor


# -- the private Tor network, inside the world, once per session ---------------------

@pytest.fixture(scope="session")
def world_exit_dns(world):
    dns = world.in_net(ExitDNS, {TOR_NAME: "127.0.0.1"})
    yield dns
    dns.close()


@pytest.fixture(scope="session")
def world_torlab(world, world_exit_dns, tmp_path_factory):
    lab = TorLab(tmp_path_factory.mktemp("world-torlab"), world_exit_dns.port)
    world.in_net(lab.start)  # its tors are forked from a thread in the world's network namespace
    yield lab
    lab.stop()
