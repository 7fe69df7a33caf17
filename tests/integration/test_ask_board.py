"""action: ask's board through a real daemon: the questions of flows whose app went away are
withdrawn (nothing stays posted), and one app's flood of questions leaves another app asked
(not ``ask-unavailable``).  The page's event stream is what is counted."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from hush.daemon.ui.questions import MAX_PER_APP
from hush.daemon.ui.token import read_token

from .harness import free_port
from .test_ask_page import events

pytestmark = pytest.mark.integration


def open_questions(found) -> dict[str, dict]:
    """The questions posted and not closed, by id."""
    out: dict[str, dict] = {}
    for event, data in list(found):
        if event == "question":
            out[data["id"]] = data
        elif event == "question-closed":
            out.pop(data["id"], None)
    return out


def send(port: int, host: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(f"GET http://{host}:9/ HTTP/1.1\r\nHost: {host}:9\r\n\r\n".encode())
    return s


def wait(what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def start(hush):
    flood_port, own_port, ui_port = free_port(), free_port(), free_port()
    policy = "default: {action: ask, timeout: 60s, fallback: allow}\n"
    h = hush({"t2": f"app: t2\nlisten: {flood_port}\n{policy}", "t": f"app: t\nlisten: {own_port}\n{policy}"},
             config=f"ui:\n  listen: '127.0.0.1:{ui_port}'\n", env={"DBUS_SESSION_BUS_ADDRESS": ""})
    headers = {"Host": f"127.0.0.1:{ui_port}", "Cookie": f"hush-ui-{ui_port}={read_token(h.state)}"}
    found: list = []
    stop = threading.Event()
    threading.Thread(target=events, args=(ui_port, headers, found, stop), daemon=True).start()
    time.sleep(0.5)  # the page is open
    return h, flood_port, own_port, found, stop


def test_the_questions_of_flows_that_went_away_are_withdrawn(hush):
    h, flood_port, _, found, stop = start(hush)
    flows = [send(flood_port, f"127.0.1.{i}") for i in range(1, 6)]
    wait(lambda: len(open_questions(found)) == 5)
    started = time.monotonic()
    for s in flows:
        s.close()
    wait(lambda: open_questions(found) == {}, timeout=10)  # well before their 60 s
    assert time.monotonic() - started < 10
    assert [d["reason"] for e, d in found if e == "question-closed"] == ["abandoned"] * 5
    stop.set()
    h.stop()


def test_one_apps_flood_leaves_other_apps_asked(hush):
    h, flood_port, own_port, found, stop = start(hush)
    # t2 asks about more distinct sites (each address its own site) than its share of the board
    flood = [send(flood_port, f"127.0.1.{i}") for i in range(1, MAX_PER_APP + 9)]
    wait(lambda: len(open_questions(found)) >= MAX_PER_APP)
    time.sleep(0.5)
    assert len(open_questions(found)) == MAX_PER_APP  # the rest: ask-unavailable (its fallback) at once

    # t is still asked
    own = send(own_port, "127.0.2.1")
    wait(lambda: any(q["app"] == "t" for q in open_questions(found).values()))

    # every flow goes away: every question is withdrawn
    for s in [*flood, own]:
        s.close()
    wait(lambda: open_questions(found) == {}, timeout=10)
    closed = [d for e, d in found if e == "question-closed"]
    assert {d["reason"] for d in closed} == {"abandoned"} and len(closed) == MAX_PER_APP + 1
    stop.set()
    h.stop()
