"""Each app's real fetch pattern, through a daemon running the *shipped*
policies (listeners moved to free ports), with a private Tor network.

Asserts on what the origin saw — requests, headers, which process made the
connection — and on the audit rows.
"""

import concurrent.futures
import time
import urllib.error
import urllib.request

import pytest

from hush.daemon import paths
from hush.daemon.cli.demo import rewrite_ports
from tests.integration.harness import NAME, curl, tor_config, wait_tor_ready

pytestmark = pytest.mark.integration


@pytest.fixture
def shipped(hush, torlab, tmp_path):
    ports = rewrite_ports(paths.shipped_policies(), tmp_path / "policies")
    texts = {p.stem: p.read_text() for p in (tmp_path / "policies").glob("*.yaml")}
    h = hush(texts, config=tor_config(torlab))
    wait_tor_ready(h)
    return h, ports


def get(port, url, headers):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def rows(h, app):
    return [r for r in h.audit() if r["app"] == app]


def test_whatsapp_per_keystroke_previews_leave_once_through_tor(shipped, origin, torlab):
    h, ports = shipped
    typed = "/article.html"
    ua = {"User-Agent": "WhatsApp/2.19.305 A"}
    with concurrent.futures.ThreadPoolExecutor(len(typed)) as pool:
        futures = []
        for i in range(2, len(typed) + 1):
            futures.append(pool.submit(get, ports["whatsapp"], origin.url(typed[:i], host=NAME), ua))
            time.sleep(0.08 + 0.12 * (i % 2))
        statuses = [f.result() for f in futures]
    assert statuses[-1] == 200 and set(statuses[:-1]) == {204}
    assert [r.path for r in origin.requests] == [typed]  # once, the full URL
    assert origin.owners == [torlab.exit_pid]  # from the exit, not from this machine
    assert origin.requests[0].headers["user-agent"] == "WhatsApp/2.19.305 A"
    h.stop()
    audit = rows(h, "whatsapp")
    assert sorted(r["decision"] for r in audit).count("superseded") == len(typed) - 2
    [sent] = [r for r in audit if r["decision"] == "debounce"]
    assert sent["tor_exit"].endswith("~exit0") and sent["ip_exposed"] == 0


def test_signal_previews_go_through_tor_untouched(shipped, tls_origin, ca_file, torlab):
    h, ports = shipped
    # the preview page and its image, over HTTPS that hush must not intercept
    for path in ("/article", "/og.jpg"):
        res = curl("--cacert", str(ca_file), "-A", "WhatsApp/2", "-x", f"http://127.0.0.1:{ports['signal']}",
                   tls_origin.url(path, host=NAME))
        assert res.returncode == 0, res.stderr
    assert [r.path for r in tls_origin.requests] == ["/article", "/og.jpg"]
    assert set(tls_origin.owners) == {torlab.exit_pid}
    h.stop()
    assert [(r["decision"], r["level"], r["ip_exposed"]) for r in rows(h, "signal")] == [("tor", "connect", 0)] * 2


def test_simplex_socks5_preview_through_tor(shipped, origin, torlab):
    h, ports = shipped
    res = curl("--socks5-hostname", f"127.0.0.1:{ports['simplex']}", origin.url("/shared", host=NAME))
    assert res.returncode == 0, res.stderr
    assert origin.owners == [torlab.exit_pid]
    h.stop()
    # the tunnel's row, and its plain-HTTP request's, read and decided on its own (its Host header too)
    assert sorted((r["decision"], r["level"], r["ip_exposed"]) for r in rows(h, "simplex")) == [
        ("tor", "connect", 0), ("tor", "request", 0)]


def test_element_preview_url_never_reaches_the_homeserver(shipped, origin, hush):
    h, ports = shipped
    auth = {"Authorization": "Bearer syt_secret", "User-Agent": "Element/1.11"}
    preview = "/_matrix/media/v3/preview_url?url=https%3A%2F%2Fexample.com%2Fsecret-doc"
    assert get(ports["element"], origin.url(preview), auth) == 403
    assert get(ports["element"], origin.url("/_matrix/client/v1/media/preview_url?url=x"), auth) == 403
    assert get(ports["element"], origin.url("/_matrix/client/v3/sync"), auth) == 200
    assert [r.path for r in origin.requests] == ["/_matrix/client/v3/sync"]  # the homeserver never saw the URL
    assert origin.owners == [h.proc.pid]
    h.stop()
    assert sorted(r["decision"] for r in rows(h, "element")) == ["allow", "block", "block"]


def test_telegram_leaves_telegrams_networks_only_through_tor(shipped, origin, torlab):
    h, ports = shipped
    proxy = ("--socks5-hostname", f"127.0.0.1:{ports['telegram']}")
    by_name = curl(*proxy, origin.url("/name", host=NAME))
    by_address = curl(*proxy, origin.url("/address"))
    assert by_name.returncode == 0 and by_address.returncode == 0, (by_name.stderr, by_address.stderr)
    assert sorted(r.path for r in origin.requests) == ["/address", "/name"]
    assert origin.owners == [torlab.exit_pid, torlab.exit_pid]  # neither from this machine
    h.stop()
    assert sorted((r["decision"], r["level"], r["ip_exposed"]) for r in rows(h, "telegram")) == [
        ("tor", "connect", 0)] * 2 + [("tor", "request", 0)] * 2  # each tunnel's row and its request's
    # Its data centres (public addresses, never contacted here) pass through: the policy's examples


def test_messenger_third_party_blocked_slack_discord_through_tor(shipped, origin, torlab):
    h, ports = shipped
    cookie = {"Cookie": "c_user=1234", "User-Agent": "Mozilla/5.0 Electron"}
    assert get(ports["messenger"], origin.url("/tracker.js"), cookie) == 403
    assert origin.accepts == []
    assert get(ports["slack"], origin.url("/embed.png", host=NAME), cookie) == 200
    assert get(ports["discord"], origin.url("/embed.png", host=NAME), cookie) == 200
    assert origin.owners == [torlab.exit_pid, torlab.exit_pid]
    h.stop()
    assert [r["decision"] for r in rows(h, "messenger")] == ["block"]
    slack, discord = rows(h, "slack")[0], rows(h, "discord")[0]
    assert slack["tor_circuit"] != discord["tor_circuit"]  # two apps, two circuits
