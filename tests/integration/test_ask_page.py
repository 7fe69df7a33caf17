"""action: ask answered in the live view: the question reaches an open page (its event
stream), the page's answer (POST /api/answer, with the token and the page's Origin) is
applied — and with no page and no notification service the fallback comes at once.
A raw HTTP client stands in for the browser (test_ui drives chromium)."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from hush.daemon.ui.token import read_token

from .harness import curl, free_port

pytestmark = pytest.mark.integration


def start(hush, fallback="block"):
    port, ui_port = free_port(), free_port()
    h = hush({"asker": f"app: asker\nlisten: {port}\ndefault: {{action: ask, timeout: 10s, fallback: {fallback}}}\n"},
             config=f"ui:\n  listen: '127.0.0.1:{ui_port}'\n", env={"DBUS_SESSION_BUS_ADDRESS": ""})
    # the cookie a page holds is the daemon's secret (what `hush ui`'s URL gives is only good once)
    token = read_token(h.state)
    return h, port, ui_port, {"Host": f"127.0.0.1:{ui_port}", "Cookie": f"hush-ui-{ui_port}={token}"}


def events(ui_port, headers, found: list, stop: threading.Event):
    conn = http.client.HTTPConnection("127.0.0.1", ui_port, timeout=15)
    conn.putrequest("GET", "/api/events", skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 200
    event = None
    while not stop.is_set():
        line = response.fp.readline().decode()
        if not line:
            break
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            found.append((event, json.loads(line.split(":", 1)[1])))
    conn.close()


def test_a_question_answered_in_the_page_once_allow_reaches_the_origin_once(hush, origin):
    h, port, ui_port, headers = start(hush)
    found: list = []
    stop = threading.Event()
    reader = threading.Thread(target=events, args=(ui_port, headers, found, stop), daemon=True)
    reader.start()
    time.sleep(0.5)  # the page is open
    result = {}

    def fetch():
        result["code"] = curl("-x", f"http://127.0.0.1:{port}", origin.url("/a"), "-o", "/dev/null", "-w",
                              "%{http_code}").stdout

    client = threading.Thread(target=fetch)
    client.start()
    deadline = time.monotonic() + 8
    while not [d for e, d in found if e == "question"]:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    [question] = [d for e, d in found if e == "question"]
    assert question["app"] == "asker" and question["site"] == "127.0.0.1" and question["fallback"] == "block"
    assert origin.accepts == []  # held while asked
    conn = http.client.HTTPConnection("127.0.0.1", ui_port, timeout=10)
    body = json.dumps({"id": question["id"], "verdict": "allow", "scope": "once"}).encode()
    conn.request("POST", "/api/answer", body, {**headers, "Origin": f"http://127.0.0.1:{ui_port}",
                                               "Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    client.join(15)
    assert result["code"] == b"200" and len(origin.accepts) == 1
    stop.set()
    h.stop()
    [row] = [r for r in h.audit() if r["app"] == "asker"]
    assert row["decision"] == "allow"


def test_no_page_and_no_notification_service_is_the_fallback_at_once(hush, origin):
    h, port, _, _ = start(hush)
    started = time.monotonic()
    code = curl("-x", f"http://127.0.0.1:{port}", origin.url("/a"), "-o", "/dev/null", "-w", "%{http_code}").stdout
    assert code == b"403" and time.monotonic() - started < 5 and origin.accepts == []
    h.stop()
    [row] = [r for r in h.audit() if r["app"] == "asker"]
    assert row["decision"] == "ask-unavailable"
