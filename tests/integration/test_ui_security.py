"""The live view's refusals, seen by a raw HTTP client (http.client) against a real
daemon: another local user (closed unanswered, even with the token), no token,
another Host (DNS rebinding), a change from another Origin, a used or expired
nonce; and the token file, `ui: false`, a non-loopback address, `hush ui` with no
daemon."""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import sys
import time
import urllib.parse

import pytest

from hush.daemon.ui.token import NONCE_TTL, make_nonce, read_token, token_path
from tests.unit.daemon.ui import otheruser

from .harness import curl, free_port

pytestmark = pytest.mark.integration

POLICY = ("# keep me\napp: web\nlisten: {port}\ndefault: allow\n"
          "rules:\n  - {{match: {{host: a.invalid}}, action: block}}\n")


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hush.daemon.cli", *argv], capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def daemon(hush):
    port, ui_port = free_port(), free_port()
    h = hush({"web": POLICY.format(port=port)}, config=f"ui:\n  listen: '127.0.0.1:{ui_port}'\n")
    return h, ui_port, read_token(h.state), port


def print_url(h) -> str:
    out = cli("ui", "--print-url", "--state-dir", str(h.state))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def ask(ui_port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", ui_port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


def test_no_token_is_403(daemon):
    _h, ui_port, token, _ = daemon
    host = {"Host": f"127.0.0.1:{ui_port}"}
    for path in ("/", "/api/state", "/api/events", "/static/app.js"):
        status, _, body = ask(ui_port, "GET", path, host)
        assert status == 403, path
    status, _, _ = ask(ui_port, "GET", "/api/state", {**host, "Cookie": f"hush-ui-{ui_port}=guess"})
    assert status == 403
    status, _, body = ask(ui_port, "GET", "/api/state", {**host, "Cookie": f"hush-ui-{ui_port}={token}"})
    assert status == 200 and "web" in json.loads(body)["apps"]  # the same request with the token: served


def test_another_host_is_refused_even_with_the_token(daemon):
    """DNS rebinding: evil.example's page, its name now 127.0.0.1, reaches the port with
    Host: evil.example:PORT.  It would not have the cookie; with it, it is refused all the same."""
    _h, ui_port, token, _ = daemon
    cookie = {"Cookie": f"hush-ui-{ui_port}={token}"}
    for host in (f"evil.example:{ui_port}", f"localhost:{ui_port}", "127.0.0.1", f"127.0.0.1:{ui_port + 1}"):
        status, headers, _ = ask(ui_port, "GET", "/api/state", {"Host": host, **cookie})
        assert status == 421, host
        status, headers, _ = ask(ui_port, "GET", f"/?token={make_nonce(token)}", {"Host": host})
        assert status == 421 and "Set-Cookie" not in headers, host


def test_a_change_from_another_origin_is_refused(daemon, origin):
    h, ui_port, token, port = daemon
    policy_file = h.policies / "web.yaml"
    before = policy_file.read_text()
    headers = {"Host": f"127.0.0.1:{ui_port}", "Cookie": f"hush-ui-{ui_port}={token}",
               "Content-Type": "application/json"}
    rule = json.dumps({"app": "web", "match": "site", "value": "127.0.0.1", "action": "block"}).encode()
    for extra in ({"Origin": "http://evil.example"}, {"Origin": f"http://localhost:{ui_port}"}, {"Origin": "null"},
                  {}):
        status, _, _ = ask(ui_port, "POST", "/api/rule", {**headers, **extra}, rule)
        assert status == 403, extra
    no_token = {k: v for k, v in headers.items() if k != "Cookie"}
    status, _, _ = ask(ui_port, "POST", "/api/rule", {**no_token, "Origin": f"http://127.0.0.1:{ui_port}"}, rule)
    assert status == 403
    assert policy_file.read_text() == before
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/still")).returncode == 0
    assert len(origin.accepts) == 1
    # the page's own origin with the token: taken (the control for the refusals above)
    status, _, body = ask(ui_port, "POST", "/api/rule", {**headers, "Origin": f"http://127.0.0.1:{ui_port}"}, rule)
    assert status == 200, body
    assert policy_file.read_text().startswith("# keep me\n")
    out = curl("-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", origin.url("/now"))
    assert out.stdout == b"403" and len(origin.accepts) == 1


def test_the_token_file(daemon):
    h, ui_port, token, _ = daemon
    path = token_path(h.state)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() == token
    url = urllib.parse.urlsplit(print_url(h))
    assert token not in url.query  # the secret is never on a command line
    status, headers, _ = ask(ui_port, "GET", f"/?{url.query}", {"Host": f"127.0.0.1:{ui_port}"})
    assert status == 303 and headers["Location"] == "/"
    assert headers["Set-Cookie"] == f"hush-ui-{ui_port}={token}; Path=/; HttpOnly; SameSite=Strict"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    h.stop()
    assert not path.exists()


def test_ui_false_serves_nothing(hush):
    port, ui_port = free_port(), free_port()
    h = hush({"web": POLICY.format(port=port)}, config=f"ui: false\n# would be {ui_port}\n")
    out = cli("ui", "--print-url", "--state-dir", str(h.state))
    assert out.returncode == 1 and "serves no live view" in out.stderr
    assert "live view" not in h.log
    assert not token_path(h.state).exists()


def test_non_loopback_is_refused(hush, tmp_path):
    h = hush({"web": POLICY.format(port=free_port())}, config="ui:\n  listen: '0.0.0.0:8100'\n", ready=False)
    assert h.wait_exit() != 0
    assert "ui listen must be a loopback address (127.0.0.0/8 or ::1), not 0.0.0.0" in h.log


def test_hush_ui_without_a_daemon_is_7(tmp_path):
    out = cli("ui", "--print-url", "--state-dir", str(tmp_path))
    assert out.returncode == 7 and out.stdout == ""
    assert out.stderr.startswith("hush ui: hush is not running")


def test_a_busy_ui_port_leaves_the_proxy_running(hush, origin):
    """The proxy matters more than its view: one warning line, and the daemon runs on."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ui_port, port = busy.getsockname()[1], free_port()
        h = hush({"web": POLICY.format(port=port)}, config=f"ui:\n  listen: '127.0.0.1:{ui_port}'\n")
        assert (f"WARNING hush: no live view: cannot listen on 127.0.0.1:{ui_port}: address already in use; "
                "change ui.listen in the config, or `ui: false`") in h.log
        assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/ok")).returncode == 0
        assert len(origin.accepts) == 1
        out = cli("ui", "--print-url", "--state-dir", str(h.state))
        assert out.returncode == 1 and "serves no live view" in out.stderr


def test_the_default_address_taken_gives_any_free_port(hush, origin):
    """Another hush (a second state dir, hush demo) has 127.0.0.1:8100: a daemon whose config
    does not name ui.listen serves its page on a free port, says so, and `hush ui` finds it."""
    import socket

    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", 8100))
            busy.listen()
        except OSError:
            pass  # taken already: the same case
        h = hush({"web": POLICY.format(port=free_port())})
        line = next(x for x in h.log.splitlines() if "live view:" in x)
        assert "(127.0.0.1:8100 is taken, by another hush?)" in line and " INFO " in line, line
        assert "WARNING" not in h.log
        url = cli("ui", "--print-url", "--state-dir", str(h.state)).stdout.strip()
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.port not in (None, 8100)
        status, headers, _ = ask(parts.port, "GET", f"/?{parts.query}", {"Host": parts.netloc})
        assert status == 303 and headers["Set-Cookie"].startswith(f"hush-ui-{parts.port}=")


def test_hush_ui_opens_the_browser(daemon, tmp_path):
    """`hush ui` hands the URL with its token to the browser (Python's webbrowser: $BROWSER first)."""
    h, ui_port, token, _ = daemon
    seen = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f"#!/bin/sh\nprintf '%s' \"$1\" > {seen}\n")
    browser.chmod(0o755)
    out = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "ui", "--state-dir", str(h.state)],
                         capture_output=True, text=True, timeout=30, env={**os.environ, "BROWSER": str(browser)})
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"opened the live view: http://127.0.0.1:{ui_port}/\n"
    opened = seen.read_text()
    assert opened.startswith(f"http://127.0.0.1:{ui_port}/?token=") and token not in opened
    query = urllib.parse.urlsplit(opened).query
    status, headers, _ = ask(ui_port, "GET", f"/?{query}", {"Host": f"127.0.0.1:{ui_port}"})
    assert status == 303 and headers["Set-Cookie"].startswith(f"hush-ui-{ui_port}={token};")


def test_the_url_works_once_and_not_after_it_expires(daemon):
    """What another user reads from the browser's /proc/PID/cmdline is a nonce: used once, it is dead;
    unused, it dies after NONCE_TTL seconds.  `hush ui --print-url` makes a new one each time."""
    h, ui_port, token, _ = daemon
    host = {"Host": f"127.0.0.1:{ui_port}"}
    first, second = urllib.parse.urlsplit(print_url(h)).query, urllib.parse.urlsplit(print_url(h)).query
    assert first != second
    status, headers, _ = ask(ui_port, "GET", f"/?{first}", host)
    assert status == 303 and headers["Set-Cookie"].startswith(f"hush-ui-{ui_port}={token};")
    status, headers, body = ask(ui_port, "GET", f"/?{first}", host)
    assert status == 403 and "Set-Cookie" not in headers and b"run `hush ui` again" in body
    assert ask(ui_port, "GET", f"/?{second}", host)[0] == 303  # another, unused: works once too
    expired = make_nonce(token, time.time() - NONCE_TTL - 1)
    status, headers, _ = ask(ui_port, "GET", f"/?token={expired}", host)
    assert status == 403 and "Set-Cookie" not in headers
    status, headers, _ = ask(ui_port, "GET", f"/?token={token}", host)  # the secret itself is no nonce
    assert status == 403 and "Set-Cookie" not in headers


def test_another_user_gets_no_answer_even_with_the_token(daemon, origin):
    """The review's reproduction: uid 1001 read the URL from /proc and POSTed /api/rule.  Now, even
    holding the long-lived token itself, its connection is closed at accept with no answer; the
    policy file and the proxy's behaviour are unchanged, and the daemon's log says why."""
    h, ui_port, token, port = daemon
    policy_file = h.policies / "web.yaml"
    before = policy_file.read_text()
    rule = json.dumps({"app": "web", "match": "site", "value": "127.0.0.1", "action": "block"}).encode()
    attack = (f"POST /api/rule HTTP/1.1\r\nHost: 127.0.0.1:{ui_port}\r\nCookie: hush-ui-{ui_port}={token}\r\n"
              f"Origin: http://127.0.0.1:{ui_port}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(rule)}\r\n\r\n").encode() + rule
    proc = otheruser.start("127.0.0.1", ui_port, 1, attack)
    try:
        assert otheruser.report(proc) == {"uid": 1001, "closed": 1, "answered": ""}
    finally:
        otheruser.end(proc)
    assert policy_file.read_text() == before
    assert "ui: refused a connection from uid 1001" in h.log
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/still")).returncode == 0
    assert len(origin.accepts) == 1  # the rule that would block it was never written


def test_another_users_idle_connections_do_not_block_the_owner(daemon):
    """80 half-sent requests from uid 1001 (more than the 64 the view takes at once), held open at
    its end: each is closed at accept, none counts, and the owner is served while they are held."""
    h, ui_port, token, _ = daemon
    count = 80
    proc = otheruser.start("127.0.0.1", ui_port, count, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{ui_port}\r\n".encode())
    try:
        assert otheruser.report(proc) == {"uid": 1001, "closed": count, "answered": ""}
        started = time.monotonic()
        status, _, body = ask(ui_port, "GET", "/api/state", {"Host": f"127.0.0.1:{ui_port}",
                                                              "Cookie": f"hush-ui-{ui_port}={token}"})
        assert status == 200 and "web" in json.loads(body)["apps"]
        assert time.monotonic() - started < 2  # not after the 10 s head timeout
    finally:
        otheruser.end(proc)
    status = json.loads(cli("status", "--json", "--state-dir", str(h.state)).stdout)
    assert status["ui"]["refused"] == count
