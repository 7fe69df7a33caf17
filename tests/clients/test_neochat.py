"""NeoChat 23.01 (Matrix, Debian's ``neochat``) through hush with the shipped
element policy, against Synapse on loopback (tests/clients/matrix.py).

What NeoChat does (issue 15, re-measured by these tests): at login it looks the
server of the Matrix ID up at ``https://SERVER/.well-known/matrix/client`` on
every keystroke; in a room it asks the homeserver for
``GET /_matrix/media/r0/preview_url?url=…`` for each https link it shows.  Both
are asserted on the far side: Synapse's own log (every request it served) and a
test site that counts TCP accepts.
"""

from __future__ import annotations

import re
import sqlite3
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.clients.display import Display
from tests.clients.matrix import PASSWORD, SERVER_NAME, SITE_NAME, HushIn, NeoChat, Synapse, World, prefixes, screen
from tests.integration.harness import Origin, curl, free_port, wait_for

pytestmark = pytest.mark.integration

ELEMENT = Path(__file__).resolve().parents[2] / "policies" / "element.yaml"
WELL_KNOWN = "/.well-known/matrix/client"


def rule_line(text: str, name_starts: str) -> int:
    """The line of the shipped element policy's rule whose name starts so (what the audit's ``rule`` names)."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith(f"- name: {name_starts}"):
            return number
    raise AssertionError(f"no rule {name_starts!r} in {ELEMENT}")


def without_rule(text: str, name_starts: str) -> str:
    """The policy without that rule, and without its examples (they expect the rule: hush would refuse it)."""
    start = rule_line(text, name_starts)
    lines = text.splitlines(keepends=True)
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("- name:")
               or lines[i].startswith("examples:"))
    control = "".join(lines[:start - 1] + lines[end:])
    return control[:control.index("\nexamples:")] + "\n"


# Synapse runs on this machine's loopback here (127.x.y.z): a launched app reaches this machine's own
# addresses only where a rule names them, as a user running their own homeserver locally writes it
LOOPBACK_RULE = "  - {match: {net: 127.0.0.0/8, port: 443}, action: allow}  # the test's homeserver\n"


def policy_on(port: int, text: str) -> str:
    """The shipped policy, its listener moved to ``port`` in place (every other line where it was), and
    LOOPBACK_RULE as its last rule (the rules above keep their lines)."""
    moved, n = re.subn(r"(?m)^listen: \d+$", f"listen: {port}", text)
    assert n == 1
    at = moved.find("\nexamples:")
    return moved + LOOPBACK_RULE if at < 0 else moved[:at + 1] + LOOPBACK_RULE + moved[at + 1:]


def audit(hush: HushIn) -> list[dict]:
    """The audit rows written so far (the daemon runs: its writer batches, so callers poll)."""
    path = hush.state / "audit.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM records ORDER BY id")]
    except sqlite3.OperationalError:  # the schema is not there yet
        return []
    finally:
        conn.close()


def last_id(hush: HushIn) -> int:
    return max((r["id"] for r in audit(hush)), default=0)


class Matrix:
    """Everything a test here needs, started once for the module."""

    def __init__(self, tmp: Path):
        self.stack: list = []
        self.world = World(tmp)
        self.synapse = self.started(Synapse(self.world))
        self.alice = self.synapse.register("alice")
        self.bob = self.synapse.register("bob")
        self.room = self.synapse.api("POST", "/_matrix/client/v3/createRoom",
                                     {"name": "links", "preset": "private_chat",
                                      "invite": [f"@alice:{SERVER_NAME}"]}, token=self.bob)["room_id"]
        self.synapse.api("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(self.room)}", {}, token=self.alice)
        self.site = self.started(Origin("127.0.0.1", self.world.tls_context(SITE_NAME)))
        self.display = self.started(Display(size=NeoChat.SCREEN).start())
        self.hush = self.hush_with(ELEMENT.read_text(), "hush")

    def started(self, thing):
        self.stack.append(thing)
        return thing

    def hush_with(self, policy: str, name: str) -> HushIn:
        port = free_port()
        home = self.world.dir / name
        home.mkdir()
        hush = self.started(HushIn(self.world, home, {"element": policy_on(port, policy)},
                                   f"upstream_ca: {self.world.ca_file}\naudit: {{redaction: full}}\n"))
        hush.port = port
        hush.wait_ready()
        self.world.trust(hush.ca_cert)  # NeoChat (Qt) trusts only /etc/ssl/certs: hush's CA goes there
        return hush

    def neochat(self, hush: HushIn, name: str, launch: bool = False) -> NeoChat:
        """A NeoChat of its own (``name``: its HOME and log) with hush's listener as its proxy, or
        under ``hush launch --app element`` (no proxy setting)."""
        client = self.started(NeoChat(self.world, self.display, None if launch else hush.port,
                                      launch=hush.state if launch else None, name=name))
        client.wait_window()
        client.wait_login_page()
        return client

    def screenshot(self, name: str) -> str:
        try:
            path = self.world.dir / f"{name}.png"
            screen(self.display).save(path)
            return str(path)
        except Exception as e:  # a screenshot only helps explain a failure
            return f"(no screenshot: {e!r})"

    def close(self) -> None:
        """Stop everything, the last started first; one that fails to stop does not keep the others."""
        errors = []
        for thing in reversed(self.stack):
            try:
                thing.stop() if hasattr(thing, "stop") else thing.close()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    m = Matrix(tmp_path_factory.mktemp("matrix"))
    try:
        yield m
    finally:
        m.close()


class Login:
    """NeoChat logged in as alice by typing (``mode``: through hush's listener,
    or under ``hush launch``), with what the typing cost: the ``.well-known``
    lookups Synapse served and hush's rows for them."""

    def __init__(self, matrix: Matrix, mode: str, hush: HushIn | None = None, name: str = ""):
        self.mode = mode
        hush = hush or matrix.hush
        self.client = matrix.neochat(hush, name or f"neochat-{mode}", launch=mode == "launch")
        before, since = len(matrix.synapse.requests(WELL_KNOWN)), last_id(hush)
        self.client.type_matrix_id(f"@alice:{SERVER_NAME}")
        # the last lookup leaves once typing has been quiet for the rule's 1.5 s
        wait_for(lambda: len(matrix.synapse.requests(WELL_KNOWN)) > before, timeout=20,
                 message=f"the homeserver's .well-known lookup ({matrix.screenshot(f'typed-{mode}')})")
        time.sleep(2)  # anything still held would have left by now
        self.served = matrix.synapse.requests(WELL_KNOWN)[before:]
        self.rows = [r for r in audit(hush) if r["id"] > since and (r["url"] or "").endswith(WELL_KNOWN)]
        self.client.log_in(PASSWORD)
        wait_for(lambda: [r for r in audit(hush)
                          if r["id"] > since and "/sync" in (r["url"] or "") and r["status"] == 200],
                 timeout=60, message=f"NeoChat's first /sync ({matrix.screenshot(f'login-{mode}')})")


@pytest.fixture(scope="module", params=["proxy", "launch"])
def login(matrix, request):
    """``proxy``: NeoChat's [NetworkProxy] names hush's element listener;
    ``launch``: ``hush launch --app element -- neochat``, no proxy setting."""
    done = Login(matrix, request.param)
    yield done
    done.client.stop()  # before the next mode's NeoChat opens on the same screen


def test_without_the_debounce_rule_each_keystroke_reaches_the_homeserver(matrix):
    """The control: the same typing with the shipped policy minus its debounce rule (first: the
    other tests' NeoChat opens on the same screen once this one is gone)."""
    hush = matrix.hush_with(without_rule(ELEMENT.read_text(), "homeserver discovery"), "hush-undebounced")
    client = matrix.neochat(hush, "neochat-undebounced")
    try:
        before = len(matrix.synapse.requests(WELL_KNOWN))
        client.type_matrix_id(f"@alice:{SERVER_NAME}")
        time.sleep(2)
        served = matrix.synapse.requests(WELL_KNOWN)[before:]
    finally:
        client.stop()  # before the other tests' NeoChat opens on the same screen
        hush.stop()
    assert len(served) >= len(prefixes(SERVER_NAME)) - 3, (served, matrix.screenshot("undebounced"))


def test_without_the_preview_rule_the_homeserver_fetches_the_link(matrix):
    """The control of the preview test: the shipped policy minus its preview rule. NeoChat's request
    reaches Synapse, which fetches the link from the site with its own User-Agent — what the rule
    prevents, seen where the other test sees nothing."""
    hush = matrix.hush_with(without_rule(ELEMENT.read_text(), "URL previews"), "hush-previews")
    client = None
    try:
        client = Login(matrix, "proxy", hush, "neochat-previews").client
        client.open_first_room()
        time.sleep(1.5)
        link = f"https://{SITE_NAME}:{matrix.site.port}/allowed.html"
        matrix.synapse.api("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(matrix.room)}/send/m.room.message/"
                                  "allowed", {"msgtype": "m.text", "body": f"look {link}"}, token=matrix.bob)
        seen = wait_for(lambda: [r for r in matrix.site.requests if r.path == "/allowed.html"], timeout=30,
                        message=f"Synapse's fetch of the link ({matrix.screenshot('previews')})")
    finally:
        if client is not None:
            client.stop()  # before the other tests' NeoChat opens on the same screen
        hush.stop()
    assert [line for line in matrix.synapse.requests("/_matrix/media/r0/preview_url") if "allowed.html" in line]
    assert seen[0].headers["user-agent"].startswith("Synapse (bot; "), seen[0].headers


PREVIEW_PATHS = [  # every preview_url path a Matrix server might serve (spec versions, MSC3916's unstable prefix)
    "/_matrix/media/r0/preview_url", "/_matrix/media/v1/preview_url", "/_matrix/media/v3/preview_url",
    "/_matrix/client/v1/media/preview_url", "/_matrix/client/r0/media/preview_url",
    "/_matrix/client/v3/media/preview_url", "/_matrix/client/unstable/org.matrix.msc3916/media/preview_url",
]


def test_every_preview_url_path_synapse_serves_is_blocked(matrix):
    """Each path Synapse serves (asked directly, it fetches the link) is refused through the shipped policy,
    and Synapse never sees that request."""
    site = f"https://{SITE_NAME}:{matrix.site.port}"
    served = [path for n, path in enumerate(PREVIEW_PATHS)
              if matrix.synapse.status(f"{path}?url={urllib.parse.quote(f'{site}/served-{n}.html', safe='')}",
                                       matrix.alice) != 404]
    # what NeoChat (r0) and Element (v3, authenticated v1) ask, at least
    assert {PREVIEW_PATHS[0], PREVIEW_PATHS[2], PREVIEW_PATHS[3]} <= set(served), served
    asked = len(matrix.synapse.requests("preview_url"))
    for path in served:
        out = curl("-x", f"http://127.0.0.1:{matrix.hush.port}", "--cacert", str(matrix.hush.ca_cert),
                   "-H", f"Authorization: Bearer {matrix.alice}", "-o", "/dev/null", "-w", "%{http_code}",
                   f"https://{SERVER_NAME}{path}?url={urllib.parse.quote(f'{site}/through-hush.html', safe='')}")
        assert out.stdout == b"403", (path, out)
    assert matrix.synapse.requests("preview_url")[asked:] == []
    assert "/through-hush.html" not in matrix.site.paths


def test_wellknown_lookups_while_typing_reach_the_homeserver_once(matrix, login):
    line = rule_line(ELEMENT.read_text(), "homeserver discovery")
    # NeoChat asked per keystroke: hush saw a lookup for the server part as typed so far...
    hosts = [r["host"] for r in login.rows]
    assert len(set(hosts)) >= len(prefixes(SERVER_NAME)) - 3, hosts
    assert all(r["listener"].startswith("launch:element:") == (login.mode == "launch") for r in login.rows)
    assert all(r["rule"].endswith(f"element.yaml:{line}") for r in login.rows), login.rows
    # ...every one but the last was superseded (answered 204 by hush, never sent) or given up by NeoChat...
    released = [r for r in login.rows if r["decision"] == "debounce"]
    assert [r["host"] for r in released] == [SERVER_NAME], login.rows
    assert {r["decision"] for r in login.rows} <= {"debounce", "superseded", "abandoned"}, login.rows
    # ...and the homeserver served exactly one (every prefix of its name resolves to it here)
    assert len(login.served) == 1, login.served


def test_a_link_in_a_room_is_never_previewed_by_the_homeserver(matrix, login):
    client = login.client
    line = rule_line(ELEMENT.read_text(), "URL previews")
    client.open_first_room()
    time.sleep(1.5)
    asked, accepts = len(matrix.synapse.requests("preview_url")), len(matrix.site.accepts)
    links = [f"https://{SITE_NAME}:{matrix.site.port}/{login.mode}-{n}.html" for n in (1, 2)]

    def send(n: int) -> None:
        matrix.synapse.api("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(matrix.room)}/send/m.room.message/"
                                  f"{login.mode}-{n}", {"msgtype": "m.text", "body": f"look {links[n]}"},
                           token=matrix.bob)

    def previews(link: str) -> list[dict]:
        return [r for r in audit(matrix.hush) if (r["url"] or "").endswith(f"/preview_url?url={link}")]

    # NeoChat asked for the preview, and the request reached hush: without this row the test proves nothing
    send(0)
    rows = wait_for(lambda: previews(links[0]), timeout=30,
                    message=f"NeoChat's preview_url request ({matrix.screenshot(f'room-{login.mode}')})")
    row = rows[0]
    assert row["url"] == f"https://{SERVER_NAME}/_matrix/media/r0/preview_url?url={links[0]}", row
    assert (row["decision"], row["status"], row["ip_exposed"]) == ("block", 403, 0), row
    assert row["rule"].endswith(f"element.yaml:{line}"), row
    assert row["listener"].startswith("launch:element:") == (login.mode == "launch"), row
    # a second link: asked for too (NeoChat also asks again for the older ones it shows), blocked alike
    send(1)
    # NeoChat asks for a later link's preview when it renders it, sometimes well after (CI once waited >30 s)
    wait_for(lambda: previews(links[1]), timeout=90, message=f"the second preview ({matrix.screenshot('room2')})")
    time.sleep(1)
    rows = previews(links[0]) + previews(links[1])
    assert {(r["decision"], r["rule"].rsplit(":", 1)[1]) for r in rows} == {("block", str(line))}, rows
    # the far side: the homeserver was never asked, the site never connected to
    assert matrix.synapse.requests("preview_url")[asked:] == []
    assert matrix.site.accepts[accepts:] == []
    # ...and they would have seen it: the same request, made to Synapse directly, is served and fetched
    control = f"https://{SITE_NAME}:{matrix.site.port}/control-{login.mode}.html"
    matrix.synapse.api("GET", f"/_matrix/media/r0/preview_url?url={urllib.parse.quote(control, safe='')}",
                       token=matrix.alice)
    assert len(matrix.synapse.requests("preview_url")[asked:]) == 1
    assert len(matrix.site.accepts[accepts:]) >= 1 and matrix.site.paths[-1] == f"/control-{login.mode}.html"
