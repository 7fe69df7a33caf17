"""action: ask asks about the host hush dials, never a Host header naming another: an app
sending ``GET http://A/… HTTP/1.1`` with ``Host: B`` through a real daemon is not asked
about B (nor joins B's open question and its answer); it is blocked without a question,
and nothing reaches A.  What the origins accepted is what counts."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from .harness import curl
from .test_ask_page import events, start

pytestmark = pytest.mark.integration


def raw(port: int, target: str, host: str) -> bytes:
    """An absolute-form request through the proxy, its Host header set by hand; the answer's status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def questions(found):
    return [d for e, d in found if e == "question"]


def answer(ui_port, headers, question_id, verdict="allow", scope="once"):
    conn = http.client.HTTPConnection("127.0.0.1", ui_port, timeout=10)
    body = json.dumps({"id": question_id, "verdict": verdict, "scope": scope}).encode()
    conn.request("POST", "/api/answer", body, {**headers, "Origin": f"http://127.0.0.1:{ui_port}",
                                               "Content-Type": "application/json"})
    assert conn.getresponse().status == 200


def open_page(hush):
    h, port, ui_port, headers = start(hush)
    found: list = []
    stop = threading.Event()
    reader = threading.Thread(target=events, args=(ui_port, headers, found, stop), daemon=True)
    reader.start()
    time.sleep(0.5)  # the page is open
    return h, port, ui_port, headers, found, stop


def test_a_host_header_naming_another_site_is_never_asked_about(hush, origin2):
    h, port, _, _, found, stop = open_page(hush)
    # dials origin2 (127.0.0.3), names "trusted-bank.example": no question about the bank, nothing sent
    started = time.monotonic()
    status = raw(port, origin2.url("/a"), "trusted-bank.example")
    assert questions(found) == [] and origin2.accepts == []
    assert status.startswith(b"HTTP/1.1 403") and time.monotonic() - started < 5  # at once
    stop.set()
    h.stop()
    assert [r["decision"] for r in h.audit() if r["app"] == "asker"] == ["ask-mismatch"]


def test_a_flow_to_another_host_does_not_join_the_question_its_host_header_names(hush, origin, origin2):
    h, port, ui_port, headers, found, stop = open_page(hush)
    # the user is asked about origin (127.0.0.1); a flow dialling origin2 with origin's Host joins nothing
    result = {}

    def fetch():
        result["code"] = curl("-x", f"http://127.0.0.1:{port}", origin.url("/a"), "-o", "/dev/null", "-w",
                              "%{http_code}").stdout

    client = threading.Thread(target=fetch)
    client.start()
    deadline = time.monotonic() + 8
    while not questions(found):
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    [question] = questions(found)
    assert question["host"] == "127.0.0.1" and question["url"].startswith("http://127.0.0.1")  # redacted
    sneaking: dict = {}
    t = threading.Thread(target=lambda: sneaking.update(status=raw(port, origin2.url("/b"),
                                                                   f"127.0.0.1:{origin.port}")))
    t.start()
    time.sleep(1)  # refused at once (or, joining the question, waiting on it)
    assert origin.accepts == [] and origin2.accepts == []
    answer(ui_port, headers, question["id"])  # allow 127.0.0.1 — not 127.0.0.3
    client.join(15)
    t.join(15)
    assert result["code"] == b"200" and len(origin.accepts) == 1
    assert origin2.accepts == [] and sneaking["status"].startswith(b"HTTP/1.1 403")

    # the same host under another spelling in its Host header: asked about the host dialled
    done: dict = {}
    t = threading.Thread(target=lambda: done.update(status=raw(port, origin2.url("/c"),
                                                              f"127.0.0.3:{origin2.port}")))
    t.start()
    deadline = time.monotonic() + 8
    while len(questions(found)) < 2:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    second = questions(found)[1]
    assert second["host"] == "127.0.0.3" and second["site"] == "127.0.0.3" and origin2.accepts == []
    answer(ui_port, headers, second["id"])
    t.join(15)
    assert done["status"].startswith(b"HTTP/1.1 200") and len(origin2.accepts) == 1 and len(origin.accepts) == 1
    stop.set()
    h.stop()
    rows = [r["decision"] for r in h.audit() if r["app"] == "asker"]
    assert sorted(rows) == ["allow", "allow", "ask-mismatch"], rows
