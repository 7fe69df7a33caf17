"""delay, debounce, bounds and download caps through a real daemon."""

import concurrent.futures
import contextlib
import socket
import time
import urllib.error
import urllib.request

import pytest

from .harness import curl, free_port, payload, wait_for

pytestmark = pytest.mark.integration

POLICY = """\
app: wa
listen: {port}
default: allow
rules:
  - name: previews, per keystroke
    match: {{header: {{User-Agent: "WhatsApp/*"}}}}
    action: debounce
    quiet: 600ms
  - match: {{path: "/slow*"}}
    action: delay
    delay: {{min: 2s, max: 2.2s}}  # room for `hush status` (a process) to see it held
  - match: {{path: "/hold*"}}
    action: delay
    delay: 30s
  - match: {{path: "/bytes/*"}}
    action: allow
    max_bytes: 10KiB
"""


def get(port, url, headers=None, timeout=40):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
    req = urllib.request.Request(url, headers=headers or {})
    start = time.monotonic()
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read(), time.monotonic() - start
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.monotonic() - start


def test_per_keystroke_fetches_reach_the_origin_once(hush, origin):
    port = free_port()
    h = hush({"wa": POLICY.format(port=port)})
    typed = "/file.html"
    prefixes = [typed[:i] for i in range(2, len(typed) + 1)]  # /f, /fi, … /file.html
    ua = {"User-Agent": "WhatsApp/2.19.305 A"}
    with concurrent.futures.ThreadPoolExecutor(len(prefixes)) as pool:
        futures = []
        for i, path in enumerate(prefixes):
            futures.append(pool.submit(get, port, origin.url(path), ua))
            time.sleep(0.08 + 0.12 * (i % 2))  # 80–200 ms apart, like typing
        results = [f.result() for f in futures]
    assert [r.path for r in origin.requests] == ["/file.html"]  # exactly one, the full URL
    assert len(origin.accepts) == 1
    assert [status for status, _, _ in results] == [204] * (len(prefixes) - 1) + [200]
    h.stop()
    rows = h.audit()
    superseded = [r for r in rows if r["decision"] == "superseded"]
    assert len(superseded) == len(prefixes) - 1
    assert all(r["ip_exposed"] == 0 and r["superseded_by"] for r in superseded)
    [sent] = [r for r in rows if r["decision"] == "debounce"]
    assert sent["ip_exposed"] == 1 and sent["held_ms"] >= 600


def test_delay_holds_one_flow_while_others_move(hush, origin):
    port = free_port()
    h = hush({"wa": POLICY.format(port=port)})
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(get, port, origin.url("/slow"))
        wait_for(lambda: h.held() == 1, message="/slow held")
        status, _, _ = get(port, origin.url("/fast"))
        # answered while the other is still held: not queued behind it
        assert status == 200 and not slow.done() and [r.path for r in origin.requests] == ["/fast"]
        status, _, slow_elapsed = slow.result()
    assert status == 200 and slow_elapsed >= 2.0  # no earlier than its minimum
    assert [r.path for r in origin.requests] == ["/fast", "/slow"]
    h.stop()


def test_overflow_is_refused_and_shutdown_releases_nothing(hush, origin):
    port = free_port()
    h = hush({"wa": POLICY.format(port=port)}, config="timing:\n  max_held_per_app: 3\n")
    pool = concurrent.futures.ThreadPoolExecutor(4)
    held = [pool.submit(get, port, origin.url(f"/hold/{i}")) for i in range(3)]
    wait_for(lambda: h.held() == 3, message="three flows held")
    status, body, elapsed = get(port, origin.url("/hold/overflow"))
    assert status == 503 and b"overflow" in body and elapsed < 2
    h.stop()  # with three flows held
    for f in held:
        with contextlib.suppress(Exception):  # answered 503 or the connection closed: either way nothing was sent
            f.result(timeout=10)
    pool.shutdown()
    assert origin.accepts == []
    outcomes = sorted(r["decision"] for r in h.audit())
    assert outcomes == ["overflow", "shutdown", "shutdown", "shutdown"]


def test_max_bytes_cuts_the_response(hush, origin):
    port = free_port()
    h = hush({"wa": POLICY.format(port=port)})
    res = curl("-x", f"http://127.0.0.1:{port}", origin.url("/bytes/200000"))
    assert res.returncode != 0  # the body ends early: curl reports the short transfer
    assert res.stdout == payload(200000)[:10 * 1024]
    h.stop()
    [row] = h.audit()
    assert row["truncated"] == 1 and row["bytes_down"] == 10 * 1024


def send_held(port, url):
    """Open a connection whose request the daemon holds; the caller closes it."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {url} HTTP/1.1\r\nHost: {url.split('/')[2]}\r\n\r\n".encode())
    return s


def test_a_held_flow_the_app_gave_up_on_frees_its_place_and_is_never_sent(hush, origin):
    port = free_port()
    h = hush({"wa": POLICY.format(port=port)}, config="timing:\n  max_held_per_app: 2\n")
    gone = [send_held(port, origin.url(f"/hold/gone{i}")) for i in range(2)]
    wait_for(lambda: h.held() == 2, message="two flows held")
    assert get(port, origin.url("/hold/full"))[0] == 503  # both places taken
    for s in gone:
        s.close()  # the app cancels its preview fetches
    wait_for(lambda: h.held() == 0, message="the sweep to drop them")
    kept = [send_held(port, origin.url(f"/hold/kept{i}")) for i in range(2)]  # admitted again
    wait_for(lambda: h.held() == 2, message="two flows held again")
    status, body, _ = get(port, origin.url("/hold/full2"))
    assert status == 503 and b"overflow" in body
    h.stop()
    for s in kept:
        s.close()
    assert origin.accepts == []
    rows = h.audit()
    abandoned = [r for r in rows if r["decision"] == "abandoned"]
    assert len(abandoned) == 2
    assert all(r["held_ms"] < 5000 and r["ip_exposed"] == 0 for r in abandoned)  # freed, not held 30 s
    assert sorted(r["decision"] for r in rows) == ["abandoned", "abandoned", "overflow", "overflow",
                                                   "shutdown", "shutdown"]
