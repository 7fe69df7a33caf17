"""A real browser: headless chromium, proxied through hush, builds a link
preview the way a web messenger does — fetch the linked page, read its
og:image, load the image.  The policy blocks the image host; the origins and
the audit agree on what happened."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .harness import free_port
from .test_report import chromium

pytestmark = pytest.mark.integration

APP = """<!doctype html><html><body><div id="preview">loading</div><script>
fetch("http://127.0.0.2:{p2}/article").then(r => r.text()).then(html => {{
  const doc = new DOMParser().parseFromString(html, "text/html");
  const title = doc.querySelector('meta[property="og:title"]').content;
  const img = new Image();
  img.onload = () => {{ document.getElementById("preview").dataset.image = "loaded"; }};
  img.onerror = () => {{ document.getElementById("preview").dataset.image = "failed"; }};
  img.src = doc.querySelector('meta[property="og:image"]').content;
  document.getElementById("preview").textContent = title;
}}).catch(e => {{ document.getElementById("preview").textContent = "fetch failed: " + e; }});
</script></body></html>"""

ARTICLE = """<!doctype html><html><head><meta property="og:title" content="A shared article">
<meta property="og:image" content="http://127.0.0.3:{p3}/og.png"></head><body>text</body></html>"""


class Site:
    def __init__(self, host, port, pages):
        self.seen, self.accepts = [], 0
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                site.seen.append((self.path, self.headers.get("User-Agent", "")))
                body, kind = pages.get(self.path, (b"not found", "text/plain"))
                self.send_response(200 if self.path in pages else 404)
                self.send_header("Content-Type", kind)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                site.accepts += 1
                return super().get_request()

        self.server = Server((host, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_browser_link_preview_through_hush(hush, tmp_path):
    p1, p2, p3, proxy = free_port(), free_port(), free_port(), free_port()
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    sites = [
        Site("127.0.0.1", p1, {"/app.html": (APP.format(p2=p2).encode(), "text/html")}),
        Site("127.0.0.2", p2, {"/article": (ARTICLE.format(p3=p3).encode(), "text/html")}),
        Site("127.0.0.3", p3, {"/og.png": (png, "image/png")}),
    ]
    h = hush({"web": f"app: web\nlisten: {proxy}\ndefault: allow\n"
                     "rules:\n  - {match: {host: 127.0.0.3}, action: block}\n"})
    try:
        res = chromium(f"--proxy-server=http://127.0.0.1:{proxy}", "--proxy-bypass-list=<-loopback>",
                       "--virtual-time-budget=8000", "--dump-dom", f"http://127.0.0.1:{p1}/app.html",
                       profile=tmp_path / "profile")
    finally:
        for s in sites:
            s.close()
    dom = res.stdout
    assert 'data-image="failed"' in dom and "A shared article" in dom, (dom, res.stderr[-2000:])
    assert [p for p, _ in sites[1].seen] == ["/article"]  # the page was fetched…
    assert "Chrome/" in sites[1].seen[0][1]
    assert sites[2].accepts == 0  # …its image host never saw a connection
    h.stop()
    decided = sorted((r["host"], r["decision"]) for r in h.audit())
    assert ("127.0.0.3", "block") in decided
    assert ("127.0.0.2", "allow") in decided and ("127.0.0.1", "allow") in decided
