"""The live view's server (daemon/ui/server.py) with a stand-in daemon: each refusal
(Host, token, Origin) seen by a raw HTTP client, the token exchange, the event
stream, and the bounds."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import stat
import time
import urllib.parse
from pathlib import Path

import pytest

from hush.daemon.ui import server as ui_server
from hush.daemon.ui.questions import Board, Question
from hush.daemon.ui.server import CSP, UIServer
from hush.daemon.ui.token import NONCE_TTL, check_nonce, make_nonce, read_token, token_path
from tests.unit.daemon.ui import otheruser


class Backend:
    def __init__(self) -> None:
        self.done: list[tuple] = []

    def state(self) -> dict:
        return {"apps": {}, "held": [], "tunnels": [], "tor": None}

    def held(self, flow_id: str, do: str) -> str | None:
        self.done.append(("held", flow_id, do))
        return None

    async def history(self) -> dict:
        return {"since": 0, "hours": 24, "apps": {}}

    async def make_rule(self, app: str, match: str, value: str, action: str) -> dict:
        self.done.append(("rule", app, match, value, action))
        return {"ok": True, "file": "a.yaml:3", "version": "v2"}


def run(test):
    @functools.wraps(test)
    def wrapper(tmp_path: Path) -> None:
        asyncio.run(test(tmp_path))
    return wrapper


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, board: Board | None = None):
    ui = UIServer("127.0.0.1", 0, tmp_path, Backend(), board or Board())
    await ui.start()
    try:
        yield ui
    finally:
        await ui.stop()


async def raw(ui: UIServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection(ui.host, ui.port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(": ")
        headers[k.lower()] = v
    return int(lines[0].split()[1]), headers, body


def request(ui: UIServer, method: str = "GET", path: str = "/", host: str | None = None, cookie: bool = True,
            origin: str | None = None, body: bytes | None = None, extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {f'127.0.0.1:{ui.port}' if host is None else host}"]
    if cookie:
        lines.append(f"Cookie: other=1; {ui.cookie_name}={ui.token}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode() + (body or b"")


@run
async def test_the_page_with_the_token(tmp_path: Path) -> None:
    async with serving(tmp_path) as ui:
        status, headers, body = await raw(ui, request(ui))
        assert status == 200
        assert b'<script src="/static/app.js"' in body
        assert headers["content-security-policy"] == CSP
        assert "default-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert headers["x-content-type-options"] == "nosniff"
        status, headers, body = await raw(ui, request(ui, path="/static/app.js"))
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert b"innerHTML" not in body  # the page builds its DOM with textContent
        status, _, body = await raw(ui, request(ui, path="/api/state"))
        assert status == 200 and json.loads(body)["held"] == []


@run
async def test_the_token_file_is_the_owners_only(tmp_path: Path) -> None:
    async with serving(tmp_path) as ui:
        assert read_token(tmp_path) == ui.token and len(ui.token) >= 40
        assert stat.S_IMODE(os.stat(token_path(tmp_path)).st_mode) == 0o600
    assert not token_path(tmp_path).exists()  # gone with the daemon


@run
async def test_no_token_is_403(tmp_path: Path) -> None:
    async with serving(tmp_path) as ui:
        for path in ("/", "/static/app.js", "/api/state", "/api/events"):
            status, _, body = await raw(ui, request(ui, path=path, cookie=False))
            assert status == 403, path
            assert b"hush ui" in body
        wrong = request(ui, cookie=False, extra=f"Cookie: {ui.cookie_name}=nope\r\n")
        assert (await raw(ui, wrong))[0] == 403
        # another daemon's cookie (another port) is not this one's
        other = request(ui, cookie=False, extra=f"Cookie: hush-ui-1={ui.token}\r\n")
        assert (await raw(ui, other))[0] == 403


@run
async def test_the_url_nonce_becomes_a_cookie_once(tmp_path: Path) -> None:
    """The URL `hush ui` opens carries a one-time nonce, never the token (another local user can
    read a browser's command line in /proc): taken once it is the cookie; a second time, 403."""
    async with serving(tmp_path) as ui:
        nonce = make_nonce(ui.token)
        assert ui.token not in nonce
        status, headers, _ = await raw(ui, request(ui, path=f"/?token={nonce}", cookie=False))
        assert status == 303 and headers["location"] == "/"
        assert headers["set-cookie"] == f"{ui.cookie_name}={ui.token}; Path=/; HttpOnly; SameSite=Strict"
        status, headers, body = await raw(ui, request(ui, path=f"/?token={nonce}", cookie=False))
        assert status == 403 and "set-cookie" not in headers and b"has been used" in body
        assert (await raw(ui, request(ui, path=f"/?token={make_nonce(ui.token)}", cookie=False)))[0] == 303


def _tampered(nonce: str) -> str:
    """The nonce with its last character changed (to "0" unless it is one: then the nonce is still good)."""
    return nonce[:-1] + ("1" if nonce.endswith("0") else "0")


@pytest.mark.parametrize("make", [
    pytest.param(lambda token: make_nonce(token, time.time() - NONCE_TTL - 2), id="expired"),
    pytest.param(lambda token: make_nonce(token, time.time() + 60), id="from-the-future"),
    pytest.param(lambda token: make_nonce("another daemon's token"), id="another-token"),
    pytest.param(lambda token: token, id="the-token-itself"),
    pytest.param(lambda token: "wrong", id="garbage"),
    pytest.param(lambda token: _tampered(make_nonce(token)), id="tampered"),
])
def test_a_bad_nonce_is_403(tmp_path: Path, make) -> None:
    async def main() -> None:
        async with serving(tmp_path) as ui:
            path = "/?" + urllib.parse.urlencode({"token": make(ui.token)})
            status, headers, _ = await raw(ui, request(ui, path=path, cookie=False))
            assert status == 403 and "set-cookie" not in headers
    asyncio.run(main())


def test_a_nonce_lasts_its_ttl() -> None:
    token = "t" * 43
    now = 1_800_000_000
    nonce = make_nonce(token, now)
    assert check_nonce(token, nonce, now + NONCE_TTL) is not None
    assert check_nonce(token, nonce, now + NONCE_TTL + 1) is None
    assert check_nonce(token, nonce, now - 5) is not None and check_nonce(token, nonce, now - 6) is None
    assert check_nonce("", nonce, now) is None


@run
async def test_another_users_connection_is_closed_unanswered_and_not_counted(tmp_path: Path) -> None:
    """uid 1001 — even with the token — gets no answer: its connections are closed at accept, and
    80 of them (more than MAX_CONNECTIONS), held open at its end, do not keep the owner out."""
    async with serving(tmp_path) as ui:
        rule = json.dumps({"app": "a", "match": "site", "value": "evil.test", "action": "allow"}).encode()
        attack = request(ui, "POST", "/api/rule", origin=ui.origin, body=rule)
        proc = await asyncio.to_thread(otheruser.start, ui.host, ui.port, 1, attack)
        try:
            seen = await asyncio.to_thread(otheruser.report, proc)
        finally:
            await asyncio.to_thread(otheruser.end, proc)
        assert seen == {"uid": 1001, "closed": 1, "answered": ""}
        assert ui.backend.done == []  # type: ignore[attr-defined]
        count = ui_server.MAX_CONNECTIONS + 16
        proc = await asyncio.to_thread(otheruser.start, ui.host, ui.port, count, b"GET / HTTP/1.1\r\n")  # half-sent
        try:
            seen = await asyncio.to_thread(otheruser.report, proc)
            assert seen == {"uid": 1001, "closed": count, "answered": ""}
            status, _, _ = await raw(ui, request(ui, path="/api/state"))  # its sockets still open at its end
            assert status == 200
        finally:
            await asyncio.to_thread(otheruser.end, proc)
        assert ui.refused == count + 1 and ui.status()["refused"] == count + 1
        assert ui._connections == 0


@run
async def test_the_owners_idle_connections_time_out(tmp_path: Path) -> None:
    """The owner's own half-sent requests hold a place for HEAD_TIMEOUT at most."""
    old = ui_server.HEAD_TIMEOUT
    ui_server.HEAD_TIMEOUT = 0.3
    try:
        async with serving(tmp_path) as ui:
            idle = [await asyncio.open_connection(ui.host, ui.port) for _ in range(ui_server.MAX_CONNECTIONS)]
            for _reader, writer in idle:
                writer.write(b"GET / HTTP/1.1\r\n")
            await asyncio.sleep(0.1)
            assert ui._connections == ui_server.MAX_CONNECTIONS
            reader, writer = await asyncio.open_connection(ui.host, ui.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # full: closed
            writer.close()
            for reader, _writer in idle:
                assert await asyncio.wait_for(reader.read(), 5) == b""
            for _reader, writer in idle:
                writer.close()
            assert (await raw(ui, request(ui)))[0] == 200
    finally:
        ui_server.HEAD_TIMEOUT = old


@pytest.mark.parametrize("host", ["evil.example:{port}", "localhost:{port}", "127.0.0.1", "127.0.0.1:1",
                                  "127.0.0.2:{port}", ""])
def test_another_host_is_refused(tmp_path: Path, host: str) -> None:
    """DNS rebinding: a page from evil.example whose name now points at 127.0.0.1
    sends Host: evil.example:PORT — with the token even (it has none), it is refused."""
    async def main() -> None:
        async with serving(tmp_path) as ui:
            for path in ("/", f"/?token={make_nonce(ui.token)}", "/api/state"):
                status, headers, _ = await raw(ui, request(ui, path=path, host=host.format(port=ui.port)))
                assert status == 421, (host, path)
                assert "set-cookie" not in headers
    asyncio.run(main())


@run
async def test_a_change_needs_the_token_and_the_same_origin(tmp_path: Path) -> None:
    async with serving(tmp_path) as ui:
        body = json.dumps({"id": "f1", "do": "drop"}).encode()
        own = ui.origin
        for origin, cookie in ((None, True), ("http://evil.example", True), (f"http://localhost:{ui.port}", True),
                               ("null", True), (own, False)):
            status, _, _ = await raw(ui, request(ui, "POST", "/api/held", origin=origin, cookie=cookie, body=body))
            assert status == 403, (origin, cookie)
        assert ui.backend.done == []  # type: ignore[attr-defined]
        status, _, answer = await raw(ui, request(ui, "POST", "/api/held", origin=own, body=body))
        assert status == 200 and json.loads(answer) == {"ok": True, "error": None}
        rule = json.dumps({"app": "a", "match": "site", "value": "example.com", "action": "block"}).encode()
        status, _, answer = await raw(ui, request(ui, "POST", "/api/rule", origin=own, body=rule))
        assert status == 200 and json.loads(answer)["file"] == "a.yaml:3"
        assert ui.backend.done == [("held", "f1", "drop"),  # type: ignore[attr-defined]
                                   ("rule", "a", "site", "example.com", "block")]
        # a form post (no JSON) from the page's own origin is refused too
        form = request(ui, "POST", "/api/held", origin=own).replace(b"\r\n\r\n", b"\r\nContent-Type: "
                                                                    b"application/x-www-form-urlencoded\r\n"
                                                                    b"Content-Length: 2\r\n\r\nx=")
        assert (await raw(ui, form))[0] == 415


@run
async def test_bounds(tmp_path: Path) -> None:
    async with serving(tmp_path) as ui:
        many = "".join(f"X-{i}: {i}\r\n" for i in range(ui_server.MAX_HEADERS + 1))
        assert (await raw(ui, request(ui, extra=many)))[0] == 431
        long = f"X-Long: {'a' * ui_server.MAX_HEAD}\r\n"
        assert (await raw(ui, request(ui, extra=long)))[0] == 431
        big = request(ui, "POST", "/api/held", origin=ui.origin, body=b"{}").replace(
            b"Content-Length: 2", f"Content-Length: {ui_server.MAX_BODY + 1}".encode())
        assert (await raw(ui, big))[0] == 413
        assert (await raw(ui, b"GARBAGE\r\n\r\n"))[0] == 400
        chunked = request(ui, "POST", "/api/held", origin=ui.origin, extra="Transfer-Encoding: chunked\r\n")
        assert (await raw(ui, chunked))[0] == 501


async def read_event(reader: asyncio.StreamReader) -> tuple[str, dict]:
    while True:
        block = (await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)).decode()
        fields = dict(line.split(": ", 1) for line in block.strip().split("\n") if ": " in line)
        if "event" in fields:
            return fields["event"], json.loads(fields["data"])


@run
async def test_events_stream_decisions_and_questions(tmp_path: Path) -> None:
    board = Board()
    async with serving(tmp_path, board) as ui:
        ui.publish_record({"app": "a", "decision": "block", "host": "x.org"})
        reader, writer = await asyncio.open_connection(ui.host, ui.port)
        writer.write(request(ui, path="/api/events"))
        await reader.readuntil(b"\r\n\r\n")
        event, hello = await read_event(reader)
        assert event == "hello" and [r["host"] for r in hello["records"]] == ["x.org"]
        assert board.listening()
        ui.publish_record({"app": "a", "decision": "allow", "host": "<script>alert(1)</script>"})
        event, data = await read_event(reader)
        assert event == "decision" and data["host"] == "<script>alert(1)</script>" and data["seq"] == 2
        question = Question(app="a", host="h.org", site="h.org")
        board.post(question)
        event, data = await read_event(reader)
        assert event == "question" and data["id"] == question.id
        body = json.dumps({"id": question.id, "verdict": "allow", "scope": "once"}).encode()
        status, _, _ = await raw(ui, request(ui, "POST", "/api/answer", origin=ui.origin, body=body))
        assert status == 200
        assert (await question.answer).verdict == "allow"
        event, data = await read_event(reader)
        assert event == "question-closed" and data["reason"] == "answered"
        writer.close()


@run
async def test_event_clients_are_bounded(tmp_path: Path) -> None:
    async with serving(tmp_path) as ui:
        streams = []
        for _ in range(ui_server.MAX_CLIENTS):
            reader, writer = await asyncio.open_connection(ui.host, ui.port)
            writer.write(request(ui, path="/api/events"))
            await reader.readuntil(b"event: hello")
            streams.append(writer)
        assert (await raw(ui, request(ui, path="/api/events")))[0] == 503
        for writer in streams:
            writer.close()


def test_a_port_in_use_is_an_oserror(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        async def main() -> None:
            ui = UIServer("127.0.0.1", port, tmp_path, Backend(), Board())
            with pytest.raises(OSError):
                await ui.start()
        asyncio.run(main())


@run
async def test_a_page_that_goes_frees_its_place_at_once(tmp_path: Path) -> None:
    """A reloaded page's old event stream is closed by the browser: its place is free before
    any event is sent (else eight reloads would lock the page out until the next ping)."""
    async with serving(tmp_path) as ui:
        for _ in range(ui_server.MAX_CLIENTS * 2):
            reader, writer = await asyncio.open_connection(ui.host, ui.port)
            writer.write(request(ui, path="/api/events"))
            await reader.readuntil(b"event: hello")
            writer.close()
            for _ in range(100):
                if not ui._clients:
                    break
                await asyncio.sleep(0.01)
            assert not ui._clients
        assert not ui.board.listening()


def test_on_ipv6_loopback(tmp_path: Path) -> None:
    """ui.listen [::1]:PORT: the page's Host and Origin are [::1]:PORT."""
    async def main() -> None:
        ui = UIServer("::1", 0, tmp_path, Backend(), Board())
        await ui.start()
        try:
            assert ui.url == f"http://[::1]:{ui.port}/"
            reader, writer = await asyncio.open_connection("::1", ui.port)
            writer.write(request(ui, host=f"[::1]:{ui.port}"))
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            writer.close()
            reader, writer = await asyncio.open_connection("::1", ui.port)
            writer.write(request(ui))  # Host: 127.0.0.1:PORT is not this page's
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 421")
            writer.close()
        finally:
            await ui.stop()
    asyncio.run(main())
