"""Gajim 1.7 (Debian's ``gajim``), a real XMPP client, through hush with the shipped XMPP policy.

Prosody runs on port 5222 of a loopback address of its own; Gajim (on Xvfb, as the
unprivileged ``hushdev``) logs in through hush's listener, named in the account's proxy
entry; a second account (slixmpp) sends a message whose body is a URL of the test site and
which carries the same URL as an XEP-0066 out-of-band tag — what makes Gajim download it as
soon as the chat shows it.  hush runs as the same user (it serves only its own uid).

Each test asserts what the far side saw (the site counts TCP accepts; the exit's tor owns
the peer socket of a flow sent through Tor), that the download reached hush (its audit row:
without it Gajim never tried, and the test fails), and that the XMPP stream kept working
(the message is in Gajim's own history database, and the stream's CONNECT was passed through).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hush.daemon import paths
from tests.clients.display import Account, Display
from tests.clients.xmpp import (
    ACCOUNT,
    Prosody,
    UserHush,
    gajim_home,
    history,
    send_link,
    start_gajim,
)
from tests.integration.harness import NAME, free_port, tor_config, wait_for, wait_tor_ready

pytestmark = pytest.mark.integration

SHIPPED = Path(paths.shipped_policies()) / "xmpp.yaml"
DOWNLOADS_RULE = "links and files from other people"
STREAM_RULE = "the XMPP stream to your server"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"  # the config's strip.user_agent


def gajim_version() -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "gajim"], capture_output=True, text=True,
                         timeout=10).stdout
    return out.split("-")[0]  # 1.7.3-2 → 1.7.3


def policy(server: str, port: int | None, downloads: str | None = None) -> str:
    """The shipped policy as its user edits it: ``server`` (the host Gajim connects to) in
    place of ``xmpp.example.org``; listener ``port`` (none: reached only by ``hush launch``);
    with ``downloads``, the downloads rule takes that action (and the examples say so: hush
    refuses a policy whose examples fail)."""
    text = SHIPPED.read_text()
    assert "host: [xmpp.example.org]" in text, "the shipped xmpp policy's server line moved"
    text = text.replace("xmpp.example.org", server)  # the rule and its examples
    text, n = re.subn(r"(?m)^listen: 8109\n", "" if port is None else f"listen: {port}\n", text)
    assert n == 1, "the shipped xmpp policy's listen line moved"
    if downloads is not None:
        head, _ = text.split("\nexamples:", 1)
        head, n = re.subn(rf"(- name: {DOWNLOADS_RULE}[^\n]*\n    action: )block", rf"\g<1>{downloads}", head)
        assert n == 1, "the shipped xmpp policy's downloads rule moved"
        text = (f"{head}\nexamples:\n  - url: http://example.com/photo.png\n    headers: {{User-Agent: Gajim 1.7.3}}\n"
                f"    expect: {downloads}\n")
    return text


def rule_line(text: str, name: str = DOWNLOADS_RULE) -> int:
    """The line a rule starts on (the downloads rule by default) — what the audit's ``rule`` names."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if f"- name: {name}" in line)


class Run:
    """One Gajim session through one hush: what a test looks at afterwards."""

    def __init__(self, hush: UserHush, server: Prosody, home: Path, display: Display, policy_text: str):
        self.hush, self.server, self.home, self.display, self.policy_text = hush, server, home, display, policy_text

    def rows(self) -> list[dict]:
        return self.hush.audit()

    def download_rows(self, url_part: str = "") -> list[dict]:
        return [r for r in self.rows() if r["level"] == "request" and r["method"] == "GET"
                and url_part in json.dumps(r)]

    def stream_rows(self) -> list[dict]:
        return [r for r in self.rows() if r["method"] == "CONNECT" and r["host"] == self.server.host
                and r["port"] == self.server.port]

    def logs(self) -> str:
        return f"{self.display.logs()}\n{self.server.logs()}\n--- hush ---\n{self.hush.log[-4000:]}"


@pytest.fixture
def gajim():
    """``gajim(downloads, config)`` → a Run with Gajim logged in through hush (the shipped
    policy, its downloads rule set to ``downloads`` if given), the chat with alice shown;
    everything it started is stopped after the test."""
    user = Account.of("hushdev", uid=1001)
    cleanup = []

    def start(downloads: str | None = None, config: str | None = None, ready=None) -> Run:
        host = f"127.{random.randint(16, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        server = Prosody(user, host).start()
        cleanup.append(server.stop)
        port = free_port()
        policy_text = policy(host, port, downloads)
        hush = UserHush(user, {"xmpp": policy_text}, config)
        cleanup.append(hush.close)
        hush.wait_ready()
        if ready is not None:
            ready(hush)
        alice = server.jid("alice")
        home = gajim_home(user, server, proxy=("http", "127.0.0.1", port), open_chat=alice)
        cleanup.append(lambda: shutil.rmtree(home, ignore_errors=True))
        display = Display(user)
        cleanup.append(display.close)
        display.start()
        proc = start_gajim(display, home, open_chat=alice)
        run = Run(hush, server, home, display, policy_text)
        wait_for(lambda: server.logged_in(ACCOUNT) or proc.poll() is not None, 60, message="Gajim to log in")
        assert proc.poll() is None, f"Gajim exited with {proc.returncode}:\n{run.logs()}"
        return run

    yield start
    for stop in reversed(cleanup):
        stop()


def assert_stream_passed_through(run: Run, url: str) -> None:
    # Gajim stored the message it received over the XMPP stream, which went through hush untouched
    wait_for(lambda: history(run.home, url), 20, message="the message in Gajim's history")
    rows = run.stream_rows()
    assert rows, f"the XMPP stream did not go through hush:\n{run.logs()}"
    assert {r["decision"] for r in rows} == {"passthrough"}
    assert all(r["level"] == "connect" for r in rows)
    assert all(r["rule"].endswith(f"xmpp.yaml:{rule_line(run.policy_text, STREAM_RULE)}") for r in rows)
    assert not run.display.windows("Error"), f"Gajim showed an error:\n{run.display.logs()}"


def test_shipped_policy_blocks_the_download_and_the_stream_passes(gajim, origin):
    run = gajim(config="audit: {redaction: no-query}\n")
    text = run.policy_text
    url = origin.url("/shared/photo.png?k=secret-token")
    send_link(run.server, "alice", ACCOUNT, url)

    # the fetch attempt reached hush (else Gajim never tried: fail)
    [row] = wait_for(lambda: run.download_rows(origin.url("/shared/")), 30, message="Gajim's download in the audit")
    assert_stream_passed_through(run, url)
    assert origin.accepts == [], "the site saw a connection"
    assert row["app"] == "xmpp" and row["decision"] == "block"
    assert row["rule"].endswith(f"xmpp.yaml:{rule_line(text)}")
    assert row["kind"] == "preview"  # Gajim's User-Agent is a previewer's (addons/classify.py)
    carried = json.loads(row["carried"])
    assert carried["user_agent"] == f"Gajim {gajim_version()}"  # what Gajim would have told the site
    assert row["url"] == origin.url("/shared/photo.png")  # redacted as configured: no query
    assert row["sent"] is None and row["route"] == "none" and row["ip_exposed"] == 0
    assert origin.accepts == []


def test_strip_sends_the_download_without_gajims_user_agent(gajim, origin):
    run = gajim("strip")
    url = origin.url("/shared/strip.png")
    send_link(run.server, "alice", ACCOUNT, url)

    wait_for(lambda: origin.requests, 30, message=f"the download at the site:\n{run.logs()}")
    assert_stream_passed_through(run, url)
    [seen] = origin.requests
    assert seen.path == "/shared/strip.png"
    assert seen.headers["user-agent"] == FIREFOX
    assert "gajim" not in json.dumps(seen.headers).lower()
    [row] = wait_for(lambda: run.download_rows("/shared/strip.png") or run.download_rows("127.0.0.1"), 10)
    assert row["decision"] == "strip" and row["route"] == "direct"
    assert json.loads(row["carried"])["user_agent"].startswith("Gajim ")
    assert json.loads(row["sent"])["user_agent"] == FIREFOX


def test_tor_sends_the_download_from_the_exit(gajim, origin, torlab, exit_dns):
    run = gajim("tor", config=tor_config(torlab), ready=wait_tor_ready)
    url = origin.url("/shared/tor.png", host=NAME)  # a name only the exit's DNS knows
    send_link(run.server, "alice", ACCOUNT, url)

    wait_for(lambda: origin.requests, 60, message=f"the download at the site:\n{run.logs()}")
    assert_stream_passed_through(run, url)
    assert origin.owners == [torlab.exit_pid]  # the exit relay made the connection, not hush
    assert origin.owners != [run.hush.proc.pid]
    assert NAME in exit_dns.queries
    assert origin.requests[0].path == "/shared/tor.png"
    [row] = wait_for(lambda: run.download_rows(NAME), 10)
    assert row["decision"] == "tor" and row["route"] == "tor" and row["ip_exposed"] == 0


def test_under_hush_launch_with_no_proxy_setting():
    """``hush launch --app xmpp -- gajim``, Gajim with no proxy setting at all: the launch's
    namespace sends the stream and the download through hush.  A launch keeps 127.0.0.0/8
    inside its namespace, so prosody and the site live on TEST-NET addresses of a network
    namespace of the test's own (tests/launch/world.py), where hush runs as ``nobody``."""
    from tests.launch.world import ALLOWED_IP, BLOCKED_IP, NOBODY, World, WorldHush

    world = World().start()
    nobody = Account("nobody", NOBODY, NOBODY)
    stops = []
    try:
        enter = ["nsenter", "-t", str(world.pid), "-n", "-m", "--"]
        server = Prosody(nobody, BLOCKED_IP, enter=enter).start()  # the stream's server: c2s on 203.0.113.11:5222
        stops.append(server.stop)
        text = policy(BLOCKED_IP, None)  # no listener: reached only by hush launch
        hush = WorldHush(world, {"xmpp": text}).wait_ready()
        stops.append(hush.stop)
        site = world.origin(ALLOWED_IP)
        stops.append(site.close)
        alice = server.jid("alice")
        home = gajim_home(nobody, server, proxy=None, open_chat=alice)
        stops.append(lambda: shutil.rmtree(home, ignore_errors=True))
        display = Display(nobody)
        stops.append(display.close)
        display.start()
        # in the world, as nobody: hush launch --state-dir … --app xmpp -- (gajim …, added by start_gajim)
        launch = [*enter, "setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--",
                  *hush.launch_argv("xmpp", [])]
        proc = start_gajim(display, home, open_chat=alice, prefix=launch, as_user=False)
        logs = lambda: f"{display.logs()}\n{server.logs()}\n--- hush ---\n{hush.log[-4000:]}"  # noqa: E731
        wait_for(lambda: server.logged_in(ACCOUNT) or proc.poll() is not None, 60, message="Gajim to log in")
        assert proc.poll() is None, f"Gajim (under hush launch) exited with {proc.returncode}:\n{logs()}"

        url = site.url("/shared/launch.png")
        world.in_net(send_link, server, "alice", ACCOUNT, url)
        rows = hush.wait_rows(lambda r: r["host"] == ALLOWED_IP, 30, "Gajim's download in the audit")
        wait_for(lambda: history(home, url), 20, message="the message in Gajim's history")
        assert site.accepts == [], "the site saw a connection"
        [download] = [r for r in rows if r["host"] == ALLOWED_IP]
        assert download["listener"].startswith("launch:xmpp:")
        assert download["decision"] == "block" and download["rule"].endswith(f"xmpp.yaml:{rule_line(text)}")
        assert json.loads(download["carried"])["user_agent"] == f"Gajim {gajim_version()}"
        stream = [r for r in hush.audit() if r["host"] == BLOCKED_IP and r["port"] == 5222]
        assert stream and {r["decision"] for r in stream} == {"passthrough"}
        assert all(r["listener"].startswith("launch:xmpp:") for r in stream)
        assert not display.windows("Error"), f"Gajim showed an error:\n{display.logs()}"
    finally:
        for stop in reversed(stops):
            stop()
        world.close()
