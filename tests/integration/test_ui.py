"""The live view in a real browser: Debian's chromium driven by Playwright
(``executable_path``; Playwright's own browser download is never used), a
real daemon, and an origin that counts TCP accepts.

Set ``HUSH_UI_SCREENSHOTS=DIR`` to keep the screenshots (docs/img/ has them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import curl, free_port, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

POLICY = """\
# the web app's policy: this comment must survive "make a rule"
app: web
listen: {port}
default: allow
rules:
  # a rule of the user's own, with its comment
  - name: nothing to see
    match: {{host: [nothing.invalid,
                   "*.nothing.invalid"]}}   # a flow list over two lines
    action: block
"""

HOLD = """\
app: web
listen: {port}
default: allow
rules:
  - {{match: {{path: "/hold/*"}}, action: delay, delay: 60s}}
"""

# the same check as tests/unit/daemon/cli/test_imports.py: what ``hush ARGV`` imported
CHECK = """
import sys
from hush.daemon.cli.main import main
try:
    code = main(sys.argv[1:])
finally:
    print("IMPORTED", ",".join(m for m in ("mitmproxy", "hush.addons", "asyncio") if m in sys.modules),
          file=sys.stderr)
sys.exit(code)
"""


def ui_url(state: Path) -> tuple[str, set[str]]:
    """``hush ui --print-url``: the URL, and what of mitmproxy, hush.addons, asyncio it imported."""
    out = subprocess.run([sys.executable, "-c", CHECK, "ui", "--print-url", "--state-dir", str(state)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    imported = [x for x in out.stderr.splitlines() if x.startswith("IMPORTED")][-1].split(" ", 1)[1]
    return out.stdout.strip(), set(filter(None, imported.split(",")))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "chromium is not installed (.ci/run installs it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def live(hush, browser, tmp_path):
    """A daemon with the live view on a free port, and a page opened as `hush ui` opens it."""
    started = {}

    def start(policy: str = POLICY, redaction: str = "full", config: str = ""):
        port, ui_port = free_port(), free_port()
        h = hush({"web": policy.format(port=port)},
                 config=f"ui:\n  listen: '127.0.0.1:{ui_port}'\naudit:\n  redaction: {redaction}\n{config}")
        url, imported = ui_url(h.state)
        assert url.startswith(f"http://127.0.0.1:{ui_port}/?token=")
        assert not imported & {"mitmproxy", "hush.addons"}, imported  # as `hush status` (control.py: asyncio)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        assert page.url == f"http://127.0.0.1:{ui_port}/"  # the token left the address bar for a cookie
        page.wait_for_selector("#conn.ok", timeout=10_000)
        started.update(h=h, page=page, context=context, errors=errors)
        return h, page, port

    yield start
    if "context" in started:
        started["context"].close()


def rows(page) -> list[str]:
    return page.locator("#decisions tbody tr").all_inner_texts()


def shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    keep = os.environ.get("HUSH_UI_SCREENSHOTS")
    if keep:
        shutil.copy(tmp_path / name, Path(keep) / name)


def test_a_request_appears_within_a_second(live, origin, tmp_path):
    _h, page, port = live()
    assert page.title() == "hush — live view"
    start = time.monotonic()
    out = curl("-x", f"http://127.0.0.1:{port}", origin.url("/seen-live"))
    assert out.returncode == 0 and b"origin" in out.stdout
    page.wait_for_function("() => [...document.querySelectorAll('#decisions td.url')]"
                           ".some(td => td.textContent.endsWith('/seen-live'))", timeout=1000)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + 0.5, elapsed  # the curl itself included
    assert len(origin.accepts) == 1
    row = page.locator("#decisions tbody tr", has_text="/seen-live")
    assert row.locator("td.decision").inner_text() == "allow"
    assert row.locator("td.rule").inner_text().endswith("web.yaml:4")  # the default, in its file
    # filters: by decision and by site
    page.select_option("#f-decision", "allow")
    page.fill("#f-site", "no-such-site.example")
    assert rows(page) == []
    page.fill("#f-site", "127.0.0.1")
    assert len(rows(page)) == 1
    # the per-app card: sites contacted and a chart drawn in the page
    page.wait_for_selector(".app[data-app=web] .chart rect.direct")
    assert "127.0.0.1 — 1" in page.locator(".app[data-app=web] .sites").inner_text()
    page.fill("#f-site", "")
    page.select_option("#f-decision", "")
    # a blocked one: refused by hush, shown with its rule
    out = curl("-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}",
               "http://www.nothing.invalid/pixel.gif?id=123")
    assert out.stdout == b"403"
    blocked = page.locator("#decisions tbody tr", has_text="nothing.invalid")
    blocked.wait_for(timeout=5000)
    assert blocked.locator("td.decision").inner_text() == "block"
    assert blocked.locator("td.rule").inner_text() == "web.yaml:7"
    assert len(origin.accepts) == 1
    page.wait_for_selector(".app[data-app=web] .chart rect.none")
    # the 24-hour chart comes from the audit (read when the page opens, and each minute)
    def audited() -> bool:
        page.reload()
        page.wait_for_selector(".app[data-app=web] svg.chart >> nth=1", timeout=10_000)  # history came
        return page.locator(".app[data-app=web] svg.chart").nth(1).locator("rect.none").count() == 1
    wait_for(audited, timeout=20, interval=1, message="the audit's chart never showed the blocked request")
    assert page.locator(".app[data-app=web] svg.chart").nth(1).locator("rect.direct").count() == 1
    shot(page, tmp_path, "ui-live.png")


def test_make_a_rule_blocks_the_site(live, origin, tmp_path):
    h, page, port = live()
    policy_file = h.policies / "web.yaml"
    before = policy_file.read_text()
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/first")).returncode == 0
    assert len(origin.accepts) == 1
    row = page.locator("#decisions tbody tr", has_text="/first")
    row.wait_for(timeout=5000)
    row.locator("button.make-rule").click()
    form = page.locator(".rule-form")
    form.locator(".r-action").select_option("block")
    form.locator(".r-match").select_option("site")
    assert "for web" in form.inner_text()
    shot(page, tmp_path, "ui-make-a-rule.png")
    form.locator(".r-save").click()
    page.wait_for_selector("#notice:not([hidden])", timeout=10_000)
    assert "Rule written to web.yaml:7" in page.inner_text("#notice"), page.inner_text("#notice")
    after = policy_file.read_text()
    added = after.splitlines()[5:9]
    assert added[0].startswith("  # added with `hush ui` on ")
    assert added[1:] == ['  - name: "block 127.0.0.1 (hush ui)"', '    match: {site: "127.0.0.1"}',
                         "    action: block"]
    assert "\n".join(after.splitlines()[:5] + after.splitlines()[9:]) + "\n" == before  # comments, layout: kept
    assert "reloaded (hush ui: make a rule)" in h.log
    out = curl("-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", origin.url("/second"))
    assert out.stdout == b"403"
    assert len(origin.accepts) == 1  # the blocked request cost the origin nothing
    page.locator("#decisions tbody tr", has_text="/second").wait_for(timeout=5000)
    blocked = page.locator("#decisions tbody tr", has_text="/second")
    assert blocked.locator("td.decision").inner_text() == "block"
    assert blocked.locator("td.rule").inner_text().endswith("web.yaml:7")


def test_a_rule_the_reload_refuses_is_undone_and_shown(live, origin, tmp_path):
    """An example the new rule would break: the reload refuses the set, the last good one
    runs on, the file is put back, and the page says why."""
    policy = POLICY + "examples:\n  - url: http://127.0.0.1/\n    expect: allow\n"
    h, page, port = live(policy)
    policy_file = h.policies / "web.yaml"
    before = policy_file.read_text()
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/x")).returncode == 0
    row = page.locator("#decisions tbody tr", has_text="/x")
    row.wait_for(timeout=5000)
    row.locator("button.make-rule").click()
    page.locator(".rule-form .r-save").click()
    page.wait_for_selector("#notice.error", timeout=10_000)
    text = page.inner_text("#notice")
    assert "The rule was not taken" in text and "the file is back as it was" in text, text
    assert "expect" in text or "example" in text, text
    assert policy_file.read_text() == before
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/y")).returncode == 0
    assert len(origin.accepts) == 2  # still allowed: the last good set runs


def test_markup_in_a_url_is_text(live, origin, tmp_path):
    _h, page, port = live()
    evil = "/<script>window.pwned=1</script><svg/onload=window.pwned=2>"
    out = curl("-x", f"http://127.0.0.1:{port}", "--path-as-is", origin.url(evil))
    assert out.returncode == 0
    assert origin.paths[-1] == evil  # it really carried the markup
    cell = page.locator("#decisions td.url", has_text="<script>")
    cell.wait_for(timeout=5000)
    assert cell.inner_text().endswith(evil)
    assert page.locator("#decisions script, #decisions tbody svg").count() == 0
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("#decisions tbody tr", has_text="<script>").locator("td.host").inner_text() \
        == f"127.0.0.1:{origin.port}"


def test_held_flows_send_now_and_drop(live, origin, tmp_path):
    """A delayed flow is listed while held; "send now" releases it as the rule says (it
    reaches the origin), "drop" ends it with 503 and the origin never sees it."""
    import threading

    h, page, port = live(HOLD)
    results: dict[str, subprocess.CompletedProcess] = {}

    def fetch(path: str) -> None:
        results[path] = curl("-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}",
                             origin.url(path), timeout=60)

    threads = [threading.Thread(target=fetch, args=(p,)) for p in ("/hold/send", "/hold/drop")]
    for t in threads:
        t.start()
    page.wait_for_function("() => document.querySelectorAll('#held tbody tr').length === 2", timeout=10_000)
    assert origin.accepts == []
    shot(page, tmp_path, "ui-held.png")
    page.locator("#held tbody tr", has_text="/hold/send").locator("button.send-now").click()
    wait_for(lambda: "/hold/send" in results, timeout=10, message="the released flow was not answered")
    assert results["/hold/send"].stdout == b"200" and origin.paths == ["/hold/send"]
    page.locator("#held tbody tr", has_text="/hold/drop").locator("button.drop").click()
    wait_for(lambda: "/hold/drop" in results, timeout=10, message="the dropped flow was not answered")
    for t in threads:
        t.join(10)
    assert results["/hold/drop"].stdout == b"503"
    assert origin.paths == ["/hold/send"] and len(origin.accepts) == 1
    dropped = page.locator("#decisions tbody tr", has_text="/hold/drop")
    dropped.wait_for(timeout=5000)
    assert dropped.locator("td.decision").inner_text() == "dropped"
    h.stop()
    record = next(r for r in h.audit() if r["url"] and r["url"].endswith("/hold/drop"))
    assert record["decision"] == "dropped" and record["egress"] == "none" and not record["ip_exposed"]


def test_a_page_without_the_token_gets_nothing(live, browser, origin):
    _h, page, _port = live()
    other = browser.new_context()
    try:
        stranger = other.new_page()
        response = stranger.goto(page.url)
        assert response is not None and response.status == 403
        assert "hush ui" in stranger.inner_text("body")
        assert re.search(r"hush-ui-\d+", str(other.cookies())) is None
    finally:
        other.close()


# A tor that can never bootstrap (no reachable authority), as in test_lifecycle.py
DEAD_TOR = ("tor:\n  torrc:\n    - TestingTorNetwork 1\n"
            "    - DirAuthority dead orport={dead} no-v2 v3ident={a} 127.0.0.1:{dead} {b}\n")


def test_tor_bootstrap_is_shown(live, origin):
    """A policy that sends through Tor starts hush's tor; the page shows where its bootstrap stands,
    and a flow refused while tor is not ready is kept from the site."""
    dead = DEAD_TOR.format(dead=free_port(), a="A" * 40, b="B" * 40)
    _h, page, port = live("app: web\nlisten: {port}\ndefault: tor\n", config=dead)
    page.wait_for_function("() => /^tor (starting|bootstrapping|down)/.test("
                           "document.getElementById('tor-state').textContent)", timeout=15_000)
    assert "bootstrapped" in page.inner_text("#tor-state")
    assert "tor:" in page.inner_text("#tor") and "bad" in (page.get_attribute("#tor", "class") or "")
    out = curl("-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", origin.url("/via-tor"))
    assert out.stdout == b"503" and origin.accepts == []
    row = page.locator("#decisions tbody tr", has_text="/via-tor")
    row.wait_for(timeout=5000)
    assert row.locator("td.decision").inner_text() == "tor-unavailable"


def test_a_long_tunnel_is_visible_while_open(live, origin):
    """A CONNECT relayed untouched is listed under open tunnels while its connection lives,
    with its row marked open; it leaves the list when the app closes it."""
    import socket

    _h, page, port = live()
    app = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        app.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
        assert app.recv(4096).startswith(b"HTTP/1.1 200")
        app.sendall(f"GET /keep/long HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
        assert app.recv(4096).startswith(b"HTTP/1.1 200 OK")  # relayed to the origin, which keeps it open
        page.wait_for_function("() => [...document.querySelectorAll('#tunnels td.host')]"
                               f".some(td => td.textContent === '127.0.0.1:{origin.port}')", timeout=5000)
        assert page.locator("#decisions tbody tr.open", has_text=f"127.0.0.1:{origin.port}").count() == 1
        time.sleep(1.6)  # still listed a while later: it is open
        assert page.locator("#tunnels tbody tr").count() == 1
    finally:
        app.close()
    page.wait_for_function("() => document.querySelectorAll('#tunnels tbody tr').length === 0", timeout=10_000)
    page.wait_for_function("() => document.querySelectorAll('#decisions tbody tr.open').length === 0",
                           timeout=10_000)
    assert len(origin.accepts) == 1


ASK = "app: web\nlisten: {port}\ndefault: {{action: ask, timeout: {timeout}, fallback: block}}\n"


def test_a_question_answered_in_the_page(live, origin, tmp_path):
    """action: ask — the question appears in the open page; clicking once / allow sends the
    held flow, which reaches the origin exactly once; the card goes away."""
    import threading

    _h, page, port = live(ASK.replace("{timeout}", "20s"))
    result: dict[str, subprocess.CompletedProcess] = {}
    fetch = threading.Thread(target=lambda: result.update(r=curl(
        "-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", origin.url("/asked"),
        timeout=60)))
    fetch.start()
    card = page.locator(".question")
    card.wait_for(timeout=10_000)
    assert "web wants to reach 127.0.0.1" in card.inner_text()
    assert origin.accepts == []  # held while asked
    shot(page, tmp_path, "ui-question.png")
    card.locator("button.a-allow-once").click()
    fetch.join(20)
    assert result["r"].stdout == b"200"
    assert origin.paths == ["/asked"] and len(origin.accepts) == 1
    page.wait_for_function("() => document.querySelectorAll('.question').length === 0", timeout=5000)
    assert page.locator("#questions-section").is_hidden()


def test_a_question_left_alone_gets_its_fallback(live, origin):
    _h, page, port = live(ASK.replace("{timeout}", "2s"))
    start = time.monotonic()
    out = curl("-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", origin.url("/alone"),
               timeout=30)
    assert time.monotonic() - start >= 1.9  # it waited for an answer
    assert out.stdout != b"200" and origin.accepts == []
    page.wait_for_function("() => document.querySelectorAll('.question').length === 0", timeout=5000)
    row = page.locator("#decisions tbody tr", has_text="/alone")
    row.wait_for(timeout=5000)
    assert row.locator("td.decision").inner_text() == "ask-timeout"


def test_a_restarted_daemon_asks_for_hush_ui_again(live, hush):
    """A new daemon has a new token: the open page's cookie is refused, and the page says what to do."""
    h, page, port = live()
    ui_port = int(page.url.rstrip("/").rsplit(":", 1)[1])
    assert h.stop() == 0
    hush({"web": POLICY.format(port=port)}, config=f"ui:\n  listen: '127.0.0.1:{ui_port}'\n", state=h.state)
    page.wait_for_selector("#notice.error", timeout=10_000)
    assert "open the live view again with `hush ui`" in page.inner_text("#notice")
