"""The organisation's floor (config ``organisation_policies``) with a real daemon.

Each test asserts on what the origin saw: its TCP accepts, and for flows sent
through Tor the process that made the connection (the private network's exit
relay).  The floor must be root's: the tests run as root (CI does) and make
the bad cases with chmod and chown to uid 1001 (``hushdev``)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys

import pytest

from .harness import NAME, curl, free_port, tor_config, wait_for, wait_tor_ready
from .hostile import read_head
from .wire import EchoOrigin, recv_exactly, tunnel_rows

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the floor must be root's: run as root (CI does)"),
]

HUSHDEV = 1001


def floor(tmp_path, files: dict[str, str]):
    """A root-owned floor directory (0755) with root-owned 0644 files."""
    d = tmp_path / "etc-hush-policies"
    d.mkdir(mode=0o755, exist_ok=True)
    os.chmod(d, 0o755)
    for name, text in files.items():
        (d / f"{name}.yaml").write_text(text)
        os.chmod(d / f"{name}.yaml", 0o644)
    return d


def config(d, extra=""):
    return f"organisation_policies: {d}\n{extra}"


def hush_cli(h, *args):
    return subprocess.run([sys.executable, "-m", "hush.daemon.cli", *args, "--state-dir", str(h.state)],
                          capture_output=True, text=True, timeout=120)


def test_an_organisation_block_beats_a_user_allow(hush, tmp_path, origin, origin2, tls_origin, ca_file):
    port = free_port()
    org = floor(tmp_path, {"a": "app: a\ndefault: allow\nrules:\n"
                                "  - {match: {host: 127.0.0.1}, action: block}\n"})
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\n"}, config=config(org))
    assert f"organisation floor from {org}: a" in h.log
    proxy = ["-x", f"http://127.0.0.1:{port}"]

    res = curl("-D", "-", *proxy, origin.url("/typed-link"))  # plain HTTP, decided per request
    head = res.stdout.decode()
    assert head.startswith("HTTP/1.1 403"), head
    assert "\r\nX-Hush-Decision: block organisation/a.yaml:4\r\n" in head, head
    res = curl("--cacert", str(ca_file), *proxy, tls_origin.url("/typed-link"))  # a CONNECT, refused
    assert res.returncode == 56 and "403" in res.stderr.decode(), res.stderr
    assert origin.accepts == [] and tls_origin.accepts == []  # the site never saw the user

    res = curl(*proxy, origin2.url("/other"))  # what the floor does not block goes out: the test can fail
    assert res.returncode == 0 and len(origin2.accepts) == 1, res.stderr

    h.stop()
    rows = h.audit()
    assert [(r["decision"], r["rule"]) for r in rows] == [
        ("block", f"{org}/a.yaml:4 (organisation)"),
        ("block", f"{org}/a.yaml:4 (organisation)"),
        ("allow", f"{h.policies}/a.yaml:3"),  # the user's default: as strict as the floor's
    ]


def test_a_user_tor_stands_over_an_organisation_allow(hush, tmp_path, torlab, exit_dns, origin):
    port = free_port()
    org = floor(tmp_path, {"a": "app: a\ndefault: allow\nrules:\n  - {match: {host: '*.hushtest'}, action: allow}\n"})
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\nrules:\n"
                   "  - {match: {host: '*.hushtest'}, action: tor}\n"}, config=config(org, tor_config(torlab)))
    wait_tor_ready(h)
    res = curl("-x", f"http://127.0.0.1:{port}", origin.url("/via-tor", host=NAME))
    assert res.returncode == 0, res.stderr
    assert origin.owners == [torlab.exit_pid]  # the exit relay connected, not hush
    h.stop()
    [row] = [r for r in h.audit() if r["host"] == NAME]
    assert (row["decision"], row["rule"], row["route"]) == ("tor", f"{h.policies}/a.yaml:5", "tor")


@pytest.mark.parametrize("user_rule, org_rule, layer", [
    ("tor", "allow", "user"),  # the case: the user's tor stands
    ("allow", "tor", "organisation"),  # the floor sends it through tor whatever the user says
])
def test_tor_from_either_layer_fails_closed_when_tor_is_down(hush, tmp_path, origin, user_rule, org_rule, layer):
    port = free_port()
    org = floor(tmp_path, {"a": f"app: a\ndefault: allow\nrules:\n"
                                f"  - {{match: {{host: 127.0.0.1}}, action: {org_rule}}}\n"})
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\nrules:\n"
                   f"  - {{match: {{host: 127.0.0.1}}, action: {user_rule}}}\n"},
             config=config(org, "tor:\n  binary: /nonexistent/tor\n"))
    res = curl("-D", "-", "-x", f"http://127.0.0.1:{port}", origin.url("/x"))
    head = res.stdout.decode()
    assert head.startswith("HTTP/1.1 503"), head
    assert origin.accepts == []  # never sent directly
    h.stop()
    [row] = h.audit()
    assert row["decision"] == "tor-unavailable"
    assert row["rule"].endswith(" (organisation)") == (layer == "organisation"), row["rule"]


@pytest.mark.parametrize("spoil, why", [
    (lambda f: os.chmod(f, 0o664), "it is group-writable (mode 0664)"),
    (lambda f: os.chmod(f, 0o646), "it is world-writable (mode 0646)"),
    (lambda f: os.chown(f, HUSHDEV, -1), f"it is owned by uid {HUSHDEV}, not root"),
    (lambda f: os.chmod(f.parent, 0o777), "it is group and world-writable (mode 0777)"),
])
def test_a_floor_others_can_write_stops_the_daemon_from_starting(hush, tmp_path, spoil, why):
    port = free_port()
    org = floor(tmp_path, {"a": "app: a\ndefault: block\n"})
    spoil(org / "a.yaml")
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\n"}, config=config(org), ready=False)
    assert h.wait_exit() == 3
    where = org if "0777" in why else org / "a.yaml"
    assert f"{where}:1:1: refused: organisation policies must be writable only by root, but {why}" in h.log
    assert f"the organisation's in {org}" in h.log
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing was left listening


def test_a_reload_takes_both_layers_or_neither(hush, tmp_path, origin, origin2):
    port = free_port()
    org = floor(tmp_path, {"a": "app: a\ndefault: allow\nrules:\n  - {match: {host: 127.0.0.1}, action: block}\n"})
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\n"}, config=config(org))
    proxy = ["-x", f"http://127.0.0.1:{port}"]
    v1 = h.status()["policies"]["version"]
    assert h.status()["policies"]["organisation"] == {"dir": str(org), "apps": ["a"]}

    # a floor file others can write: the reload is refused, naming it, and the last good set stays
    os.chmod(org / "a.yaml", 0o666)
    res = hush_cli(h, "reload")
    assert res.returncode == 3, res
    assert f"{org}/a.yaml:1:1: refused: organisation policies must be writable only by root" in res.stderr
    assert h.status()["policies"]["version"] == v1
    assert curl("-o", "/dev/null", "-w", "%{http_code}", *proxy, origin.url("/still")).stdout == b"403"
    assert origin.accepts == []

    # both layers change at once: the user's file and the floor's, one reload
    os.chmod(org / "a.yaml", 0o644)
    (h.policies / "a.yaml").write_text(f"app: a\nlisten: {port}\ndefault: allow\nrules:\n"
                                       "  - {match: {host: 127.0.0.1}, action: allow}\n")
    (org / "a.yaml").write_text("app: a\ndefault: allow\nrules:\n  - {match: {host: 127.0.0.3}, action: block}\n")
    res = hush_cli(h, "reload")
    assert res.returncode == 0, res
    assert h.status()["policies"]["version"] != v1
    assert curl("-o", "/dev/null", "-w", "%{http_code}", *proxy, origin.url("/now")).stdout == b"200"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", *proxy, origin2.url("/now")).stdout == b"403"
    assert len(origin.accepts) == 1 and origin2.accepts == []

    # SIGHUP reloads the floor too
    (org / "a.yaml").write_text("app: a\ndefault: block\n")
    os.chmod(org / "a.yaml", 0o644)
    h.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: h.status()["last_reload"]["trigger"] in ("SIGHUP", "policy files changed")
             and h.status()["policies"]["version"] not in (v1,), message="the SIGHUP reload")
    wait_for(lambda: curl("-o", "/dev/null", "-w", "%{http_code}", *proxy, origin.url("/x")).stdout == b"403",
             message="the floor's new default")
    assert len(origin.accepts) == 1


def test_explain_shows_both_layers(hush, tmp_path):
    port = free_port()
    org = floor(tmp_path, {"a": "app: a\ndefault: allow\nrules:\n  - {match: {host: x.org}, action: block}\n"})
    users = tmp_path / "user"
    users.mkdir()
    (users / "a.yaml").write_text(f"app: a\nlisten: {port}\ndefault: tor\n")
    (tmp_path / "c.yaml").write_text(config(org))
    res = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "policy", "explain", "--policies", str(users),
                          "--config", str(tmp_path / "c.yaml"), "--app", "a", "https://x.org/", "--table"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[:3] == [
        f"block (answer 403)   by rule 1 ({org}/a.yaml:4)",
        f"  user:         tor (circuits isolated per app)   by default ({users}/a.yaml:3)",
        f"  organisation: block (answer 403)   by rule 1 ({org}/a.yaml:4)   ← applies",
    ]


def test_an_app_only_the_organisation_has_runs_on_the_floors_policy(hush, tmp_path, origin):
    user_port, org_port = free_port(), free_port()
    org = floor(tmp_path, {"b": f"app: b\nlisten: {org_port}\ndefault: block\nrules:\n"
                                f"  - {{match: {{path: /ok}}, action: allow}}\n"})
    h = hush({"a": f"app: a\nlisten: {user_port}\ndefault: allow\n"}, config=config(org))
    assert sorted(x["app"] for x in h.status()["listeners"]) == ["a", "b"]  # the floor's listener is open
    assert code(org_port, origin.url("/ok")) == b"200"
    assert code(org_port, origin.url("/other")) == b"403"
    assert len(origin.accepts) == 1
    h.stop()
    assert [(r["app"], r["decision"], r["rule"]) for r in h.audit()] == [
        ("b", "allow", f"{org}/b.yaml:5 (organisation)"),
        ("b", "block", f"{org}/b.yaml:3 (organisation)"),
    ]


def code(port, url):
    return curl("-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{port}", url).stdout


def test_a_floor_that_now_blocks_closes_an_open_tunnel_on_reload(hush, tmp_path):
    echo = EchoOrigin()
    try:
        port = free_port()
        org = floor(tmp_path, {"a": "app: a\ndefault: allow\n"})
        h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\n"}, config=config(org))
        s = socket.create_connection(("127.0.0.1", port), timeout=15)
        s.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: 127.0.0.1:{echo.port}\r\n\r\n".encode())
        assert read_head(s).startswith(b"HTTP/1.1 200")
        s.sendall(b"before")
        assert recv_exactly(s, 11) == b"echo:before"
        (org / "a.yaml").write_text("app: a\ndefault: allow\nrules:\n  - {match: {host: 127.0.0.1}, action: block}\n")
        os.chmod(org / "a.yaml", 0o644)
        assert hush_cli(h, "reload").returncode == 0
        wait_for(lambda: echo.closed == 1, message="hush closing the tunnel to the origin")
        with contextlib.suppress(OSError):
            s.sendall(b"after")
        s.close()
        assert echo.received == b"before" and len(echo.accepts) == 1
        h.stop()
        [row] = tunnel_rows(h)
        assert row["decision"] == "revoked" and f"{org}/a.yaml:4" in row["error"], row
    finally:
        echo.close()
