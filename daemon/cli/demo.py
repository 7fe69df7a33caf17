"""``hush demo``: a newcomer's first look, with no messenger and no internet.

It starts the daemon with the shipped policies (on free ports), a small site
on 127.0.0.1, and replays what each app really does when a link is typed or
received — at the HTTP level: the User-Agent, the order, the per-keystroke
fetches, ranges, proxy modes.  Then it prints the audit summary: what each
app would have revealed, and what hush let through.

Nothing leaves 127.0.0.1.  By default hush's tor is pointed at a control
port where no tor runs, so flows the policies send through Tor are refused
(fail closed, audited ``tor-unavailable``), as they would be on a machine whose
tor is down.  ``hush demo --tor`` shows the ``tor`` action at work offline
instead: it starts a private Tor network on loopback (three relays, one of
them the exit: :mod:`hush.daemon.torlab`, the one the test suite uses; about
15 s to build), hush launches its own tor into it, and the site says, for each
request it saw, whether it came from hush directly or from the Tor exit.

Each app's line says what it does and what its audit rows show; the rows
themselves are printed at the end.  The temporary directory (policies, state,
log) is removed when the demo ends.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from hush.daemon import paths
from hush.daemon.torlab import free_ports

ARTICLE = b"""<!doctype html><html><head><title>A shared article</title>
<meta property="og:title" content="A shared article">
<meta property="og:image" content="/og.png"></head><body>An article someone shared.</body></html>"""


def rewrite_ports(src: Path, dst: Path, free: list[int] | None = None) -> dict[str, int]:
    """Copy policies, giving each listener one of the ``free`` ports (distinct
    free ones by default): {app: port}."""
    dst.mkdir(parents=True, exist_ok=True)
    policies = sorted(src.glob("*.yaml"))
    ports = {}
    for policy, port in zip(policies, free or free_ports(len(policies)), strict=True):
        text = policy.read_text()
        text, n = re.subn(r"^(listen: (?:\{port: )?)\d+", rf"\g<1>{port}", text, flags=re.M)
        if n != 1:
            raise RuntimeError(f"{policy}: expected one 'listen:' line to rewrite")
        (dst / policy.name).write_text(text)
        ports[policy.stem] = port
    return ports


class Site:
    """The pages and images the apps fetch, on 127.0.0.1; it counts what reaches it."""

    def __init__(self):
        self.seen: list[tuple[str, str, int | None]] = []  # path, User-Agent, the pid that connected
        self.who: dict[int, str] = {}  # pid → "hush", "the Tor exit"
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                site.seen.append((self.path, self.headers.get("User-Agent", ""), site.peer_pid(self)))
                if self.path.startswith("/og.png"):
                    body, kind = b"\x89PNG\r\n\x1a\n" + b"\0" * 2000, "image/png"
                elif self.path.startswith("/_matrix/"):
                    body, kind = b'{"og:title": "A shared article"}', "application/json"
                else:
                    body, kind = ARTICLE, "text/html"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def peer_pid(self, handler: BaseHTTPRequestHandler) -> int | None:
        """Which process connected: the owner of the peer socket (every request comes from
        127.0.0.1, so the address cannot tell hush from the Tor exit)."""
        from hush.daemon.policy import procnet

        found = procnet.owner(handler.client_address, handler.connection.getsockname())
        return found.pid if found else None

    def said(self) -> str:
        """``The site saw 2 requests: /a (from hush), /og.png (from the Tor exit)``."""
        n = len(self.seen)
        items = [f"{path} (from {self.who.get(pid, 'another process') if pid else 'an unknown process'})"
                 for path, _, pid in self.seen[:6]]
        return (f"The site saw {n} request{'' if n == 1 else 's'}" + (": " if items else ".")
                + ", ".join(items) + (" …" if n > 6 else ""))


def _get(proxy: str, url: str, headers: dict) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=20) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _socks_get(port: int, url: str, headers: dict) -> int:
    import socks  # PySocks

    parts = urllib.parse.urlsplit(url)
    s = socks.socksocket()
    s.set_proxy(socks.SOCKS5, "127.0.0.1", port, rdns=True)
    s.settimeout(20)
    try:
        s.connect((parts.hostname, parts.port))
        lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
                 *(f"{k}: {v}" for k, v in headers.items())]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = s.recv(64)
        return int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    except (OSError, socks.ProxyError, ValueError, IndexError):
        return 0
    finally:
        s.close()


def replay(ports: dict[str, int], site: Site, say=print, tor: bool = False) -> None:
    """What each app does when a link is typed or received.  ``tor``: a Tor
    network is up, and the flows the policies send through Tor reach the site
    from its exit."""
    http = {app: f"http://127.0.0.1:{port}" for app, port in ports.items()}
    via_tor = "through Tor (the site sees the Tor exit)" if tor else "through Tor (refused: no tor here)"
    cookie = {"Cookie": "session=4f2a9c; tracking=u-1234", "Accept-Language": "de-CH,de;q=0.9"}

    say("whatsapp  types http://…/article: a preview fetch per keystroke (User-Agent WhatsApp/2.19.305 A); "
        f"debounced: each superseded by the next, the last one sent {via_tor}")
    typed = "/article"
    with concurrent.futures.ThreadPoolExecutor(len(typed)) as pool:
        futures = []
        for i in range(2, len(typed) + 1):
            futures.append(pool.submit(_get, http["whatsapp"], site.url(typed[:i]),
                                       {"User-Agent": "WhatsApp/2.19.305 A", **cookie}))
            time.sleep(0.08 + 0.12 * (i % 2))
        [f.result() for f in futures]

    say("signal    fetches the page, then its og:image (/og.png), itself (User-Agent WhatsApp/2): both "
        f"{via_tor}")
    _get(http["signal"], site.url("/article"), {"User-Agent": "WhatsApp/2", **cookie})
    _get(http["signal"], site.url("/og.png"), {"User-Agent": "WhatsApp/2", "Range": "bytes=0-1048575"})

    say(f"simplex   fetches the preview itself, over its SOCKS5 proxy: {via_tor}")
    _socks_get(ports["simplex"], site.url("/article"), {"User-Agent": "SimpleX Chat"})

    say("element   asks its homeserver to fetch the typed URL (/preview_url): blocked; and syncs: allowed, "
        "the one request the site sees")
    homeserver = site.url("/_matrix/media/v3/preview_url?url=https%3A%2F%2Fexample.com%2Farticle")
    _get(http["element"], homeserver, {"User-Agent": "Element/1.11", "Authorization": "Bearer syt_x"})
    _get(http["element"], site.url("/_matrix/client/v3/sync"), {"User-Agent": "Element/1.11",
                                                               "Authorization": "Bearer syt_x"})

    say("telegram  the whole app goes over SOCKS5: its data centres pass through; this host is not one of "
        f"them, so {via_tor}")
    _socks_get(ports["telegram"], site.url("/api"), {"User-Agent": "TDesktop"})

    for app, what in (("messenger", "blocked (only Meta's hosts pass)"), ("slack", via_tor), ("discord", via_tor)):
        say(f"{app:<9} previews are built by the server; the client still loads the preview image (/og.png) "
            f"from a third-party host: {what}")
        _get(http[app], site.url("/og.png"), {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Electron", **cookie})


def print_summary(summary: dict, site: Site, say=print) -> None:
    say("")
    say(f"{'app':<10} {'requests':>8} {'IP reached site':>16} {'IP kept':>8}  decisions")
    for app, s in summary["apps"].items():
        decisions = ", ".join(f"{k} {v}" for k, v in s["by_decision"].items())
        say(f"{app:<10} {s['requests']:>8} {s['ip_exposed']:>16} {s['prevented']['ip']:>8}  {decisions}")
    say("")
    total = sum(s["requests"] for s in summary["apps"].values())
    reached = sum(s["ip_exposed"] for s in summary["apps"].values())
    say(f"{total} requests from {len(summary['apps'])} apps would each have told a site your IP address; "
        f"{reached} did.")
    say(site.said())


def print_records(rows: list[dict], say=print) -> None:
    """Each audit record, as ``hush audit tail`` would list them."""
    from hush.daemon.cli.main import _table

    say("\nthe audit's records (hush audit tail):")
    table = [[r["app"], r["decision"], r.get("method") or "-",
              r.get("url") or f"{r.get('host') or '?'}:{r.get('port') or '?'}",
              r["rule"].rsplit("/", 1)[-1] if r.get("rule") else "-"] for r in rows]
    for line in _table(["app", "decision", "method", "url", "rule"], table):
        say("  " + line)


def run(say=print, tor: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="hush-demo-"))
    lab = dns = None
    try:
        if tor:
            from hush.daemon.torlab import ExitDNS, TorLab

            say("building a private Tor network on 127.0.0.1: three relays, one of them the exit (about 15 s)")
            dns = ExitDNS({})  # the site is 127.0.0.1: the exit needs no name, and is told none
            try:
                lab = TorLab(root / "torlab", dns.port).start()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                say(f"hush: the private Tor network did not start (is Debian's tor package installed?): {e}")
                return 1
        return _run(root, say, lab)
    finally:
        if lab is not None:
            lab.stop()
        if dns is not None:
            dns.close()
        shutil.rmtree(root, ignore_errors=True)


def _tor_config(lab, control: int) -> str:
    if lab is None:  # no tor: Tor flows fail closed
        return f"tor:\n  mode: attach\n  control: 127.0.0.1:{control}\n"
    return "tor:\n  mode: launch\n  torrc:\n" + "".join(f"    - {json.dumps(line)}\n" for line in lab.client_torrc())


def _wait_for(log: Path, text: bytes, daemon: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while text not in log.read_bytes():
        if daemon.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _run(root: Path, say, lab) -> int:
    from hush.daemon.audit import queries

    shipped = paths.shipped_policies()
    *listeners, control = free_ports(len(list(shipped.glob("*.yaml"))) + 1)
    ports = rewrite_ports(shipped, root / "policies", listeners)
    (root / "config.yaml").write_text(_tor_config(lab, control) + "audit:\n  redaction: no-query\n"
                                      "ui: false\n")  # the demo shows its rows itself; no live view to bind
    site = Site()
    with open(root / "hush.log", "wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "hush.daemon.cli", "run", "--policies", str(root / "policies"),
             "--state-dir", str(root / "state"), "--config", str(root / "config.yaml")],
            stdout=log, stderr=subprocess.STDOUT)
        site.who[daemon.pid] = "hush"
        try:
            if not _wait_for(root / "hush.log", b"hush is running", daemon, 30):
                say((root / "hush.log").read_text())
                return 1
            say(f"hush is running with the shipped policies (in a temporary directory, removed at the end); "
                f"the site is {site.url('/')}")
            if lab is None:
                say("no tor runs here (without --tor the demo has no Tor network), so flows the policies send "
                    "through Tor are refused, never sent directly\n")
            else:
                site.who[lab.exit_pid] = "the Tor exit"
                if not _wait_for(root / "hush.log", b"tor ready", daemon, 90):
                    say("hush's tor did not join the private network:\n" + (root / "hush.log").read_text())
                    return 1
                say("hush's tor has joined the private Tor network: flows the policies send through Tor reach "
                    "the site from its exit\n")
            replay(ports, site, say, tor=lab is not None)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
            site.server.shutdown()
    conn = queries.open_db(root / "state")
    try:
        summary = queries.summary(conn)
        rows = queries.tail(conn, limit=1000)
    finally:
        conn.close()
    print_records(rows, say)
    print_summary(summary, site, say)
    return 0
