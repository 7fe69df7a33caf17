"""The live view's HTTP server: asyncio streams on the daemon's event loop.

Hand-written HTTP/1.1 (one request per connection, ``Connection: close``;
server-sent events keep theirs open): the page needs a few GET routes, an
event stream and three JSON POSTs, and every request has to pass the same
checks first — a web framework would add dependencies without removing any
of them.  Bounded everywhere: the request head (``MAX_HEAD`` bytes,
``MAX_HEADERS`` fields), the body (``MAX_BODY``), open connections
(``MAX_CONNECTIONS``), event-stream clients (``MAX_CLIENTS``) and each
client's queue (``QUEUE``: a page that does not read is dropped and
reconnects).

Every connection, when it is accepted: the uid holding its client end
(asked of the kernel, daemon/peeruid.py) must be the daemon's own; another
user's (root's too, unless the daemon runs as root), or one the kernel cannot
name, is closed with no answer before it counts against ``MAX_CONNECTIONS``.

Every request, in this order:

1. ``Host`` must be the UI's own address and port (``127.0.0.1:8100``):
   a page from another site that rebinds its name to 127.0.0.1 gets 421.
2. The token: the cookie ``hush-ui-PORT`` (``HttpOnly; SameSite=Strict``)
   must hold the daemon's secret (``STATE_DIR/ui-token``, 0600, new at each
   start).  ``GET /?token=NONCE`` (the URL ``hush ui`` opens) carries not the
   secret but a one-time nonce made with it (daemon/ui/token.py): taken once,
   within ``NONCE_TTL`` seconds, it sets that cookie and redirects to ``/``.
   A used, expired or forged nonce, no cookie, or a wrong one: 403.
3. A state-changing request (POST) needs the token *and* ``Origin`` equal to
   the UI's own origin (``http://127.0.0.1:8100``), and a JSON body: 403
   otherwise.

Every response carries a strict Content-Security-Policy (``default-src
'self'``, no inline script or style, no remote source, no framing).

Routes: ``GET /`` (the page), ``GET /static/NAME``, ``GET /api/state`` (apps,
held flows, tor, open tunnels, policy set), ``GET /api/history`` (per app and
hour of the last 24, from the audit: kept from the site, via Tor, direct), ``GET /api/events`` (SSE:
``hello`` with the recent records and open questions, then ``decision``,
``question``, ``question-closed``), ``POST /api/held`` (``{"id", "do":
"release"|"drop"}``), ``POST /api/rule`` (``{"app", "match": "host"|"site",
"value", "action"}``), ``POST /api/answer`` (``{"id", "verdict", "scope"}``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from hush.daemon import peeruid
from hush.daemon.ui.questions import BOARD, Board
from hush.daemon.ui.token import NONCE_SKEW, NONCE_TTL, check_nonce, token_path, write_token

log = logging.getLogger("hush.ui")

STATIC = Path(__file__).parent / "static"
MAX_HEAD = 8 * 1024  # request line and headers, bytes
MAX_HEADERS = 40
MAX_BODY = 16 * 1024
MAX_CONNECTIONS = 64
MAX_CLIENTS = 8  # event streams open at once
QUEUE = 1000  # events waiting for one client
RECENT = 2000  # decisions kept for a page that opens now
HEAD_TIMEOUT = 10.0
PING = 15.0  # seconds between keep-alive comments on an idle event stream
MAX_USED = 1024  # one-time nonces remembered as used (until they expire); only the token's holder makes them
REFUSAL_LOG = 10.0  # seconds between log lines about other users' connections refused

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'none'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
SECURITY_HEADERS = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 411: "Length Required", 413: "Content Too Large",
           415: "Unsupported Media Type", 421: "Misdirected Request", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}


class Backend(Protocol):
    """What the page reads and does through the daemon (daemon/ui/live.py)."""

    def state(self) -> dict[str, Any]: ...

    def held(self, flow_id: str, do: str) -> str | None: ...  # None: done; else why not

    def make_rule(self, app: str, match: str, value: str, action: str) -> Awaitable[dict[str, Any]]: ...

    def history(self) -> Awaitable[dict[str, Any]]: ...  # per app and hour, from the audit


def authority(host: str, port: int) -> str:
    """``127.0.0.1:8100``, ``[::1]:8100``: the Host header the page's requests carry."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Request:
    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes = b""):
        self.method = method
        self.target = target
        self.headers = headers  # lower-case names
        self.body = body
        parts = urllib.parse.urlsplit(target)
        self.path = parts.path
        self.query = urllib.parse.parse_qs(parts.query)

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value
        return None


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def read_request(reader: asyncio.StreamReader) -> Request:
    """One request head (and body), bounded. :raises HTTPError: for what is refused."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
    except asyncio.LimitOverrunError:
        raise HTTPError(431, f"the request head is longer than {MAX_HEAD} bytes") from None
    except ValueError:  # the limit hit while the separator was not yet seen (StreamReader's wording)
        raise HTTPError(431, f"the request head is longer than {MAX_HEAD} bytes") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(400, "not an HTTP/1 request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise HTTPError(431, f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or name != name.strip() or " " in name:
            raise HTTPError(400, "a malformed header field")
        if name in headers and name in ("host", "origin", "cookie", "content-length"):
            raise HTTPError(400, f"more than one {name} header")
        headers[name] = value.strip()
    if "transfer-encoding" in headers:
        raise HTTPError(501, "chunked bodies are not accepted; send Content-Length")
    body = b""
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number") from None
        if not 0 <= length <= MAX_BODY:
            raise HTTPError(413, f"the body is longer than {MAX_BODY} bytes")
        body = await asyncio.wait_for(reader.readexactly(length), HEAD_TIMEOUT)
    return Request(parts[0], parts[1], headers, body)


class Client:
    """One open event stream."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE)

    def send(self, data: bytes) -> bool:
        try:
            self.queue.put_nowait(data)
            return True
        except asyncio.QueueFull:
            return False


def sse(event: str, data: Any) -> bytes:
    text = json.dumps(data, default=str, separators=(",", ":"))
    return f"event: {event}\ndata: {text}\n\n".encode()


class UIServer:
    """``await start()``; ``publish_record(record)`` from the audit; ``await stop()``."""

    def __init__(self, host: str, port: int, state_dir: Path, backend: Backend, board: Board = BOARD,
                 redaction: str = "no-query"):
        self.host = host
        self.port = port
        self.state_dir = Path(state_dir)
        self.backend = backend
        self.board = board
        self.board.redaction = redaction
        self.token = ""
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[Client] = set()
        self._connections = 0
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self._seq = 0
        self._static: dict[str, tuple[bytes, str]] = {}
        self.dropped = 0  # event-stream clients dropped for not reading
        self.refused = 0  # connections from another uid, closed unanswered
        self._logged_refusal = -REFUSAL_LOG
        self._used: dict[str, float] = {}  # nonce's random part → when it expires (monotonic)

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Write the token, load the page's files, bind (``OSError`` if it cannot: no token is left)."""
        self.token = await asyncio.to_thread(write_token, self.state_dir)
        self._static = await asyncio.to_thread(_load_static)
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD,
                                                      reuse_address=True)
        except OSError:
            self.token = ""
            await asyncio.to_thread(token_path(self.state_dir).unlink, True)
            raise
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: the one the kernel chose
        self.board.subscribe(self._question_event)
        self.board.count_pages(lambda: len(self._clients))

    async def stop(self) -> None:
        self.board.unsubscribe(self._question_event)
        self.board.count_pages(lambda: 0)
        for client in list(self._clients):
            self._close(client)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        await asyncio.to_thread(token_path(self.state_dir).unlink, True)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def origin(self) -> str:
        return f"http://{authority(self.host, self.port)}"

    @property
    def url(self) -> str:
        return self.origin + "/"

    @property
    def cookie_name(self) -> str:
        return f"hush-ui-{self.port}"

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "clients": len(self._clients), "dropped": self.dropped, "refused": self.refused}

    # -- events -------------------------------------------------------------------------

    def publish_record(self, record: dict[str, Any]) -> None:
        """An audit record (redacted as the audit keeps it), as it is written."""
        self._seq += 1
        event = {**record, "seq": self._seq}
        self._recent.append(event)
        if self._clients:
            self._broadcast(sse("decision", event))

    def _question_event(self, event: str, data: dict[str, Any]) -> None:
        self._broadcast(sse(event, data))

    def _broadcast(self, data: bytes) -> None:
        for client in list(self._clients):
            if not client.send(data):  # it does not read: drop it (its page reconnects and reloads)
                self.dropped += 1
                self._close(client)

    def _close(self, client: Client) -> None:
        """End a client's stream: it takes None as the end (room is made for it)."""
        self._clients.discard(client)
        while True:
            try:
                client.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    client.queue.get_nowait()

    # -- HTTP ---------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await self._same_user(writer):
            writer.transport.abort()  # no answer, and nothing counted
            return
        if self._connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        try:
            try:
                request = await read_request(reader)
            except HTTPError as e:
                await self._send(writer, e.status, e.message)
                return
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            try:
                await self._route(request, reader, writer)
            except HTTPError as e:
                await self._send(writer, e.status, e.message)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("ui: request failed")
            with contextlib.suppress(Exception):
                await self._send(writer, 500, "internal error; see hush's log")
        finally:
            self._connections -= 1
            writer.close()

    async def _same_user(self, writer: asyncio.StreamWriter) -> bool:
        """Whether the connection's client end is held by the daemon's own uid (the kernel says;
        an answer it cannot give is a no).  Root is another user unless the daemon is root."""
        peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        try:
            entry = await peeruid.uid_inode(peer, local) if peer and local else None
        except Exception:  # netlink and /proc both failed: fail closed
            log.exception("ui: cannot tell whose connection this is")
            entry = None
        uid = entry[0] if entry else None
        if uid == os.geteuid():
            return True
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_refusal >= REFUSAL_LOG:
            self._logged_refusal = now
            log.warning("ui: refused a connection from %s (%d so far): the live view serves only uid %d",
                        f"uid {uid}" if uid is not None else "an unknown process", self.refused, os.geteuid())
        return False

    def _redeem(self, nonce: str) -> bool:
        """Take a one-time nonce from `hush ui`'s URL: made with the token, not expired, not used."""
        now = time.monotonic()
        for used, until in list(self._used.items()):
            if until < now:
                del self._used[used]
        key = check_nonce(self.token, nonce)
        if key is None or key in self._used or len(self._used) >= MAX_USED:
            return False
        self._used[key] = now + NONCE_TTL + NONCE_SKEW  # longer than it could be taken for
        return True

    def _check(self, request: Request) -> None:
        host = request.headers.get("host", "").lower()
        if host != authority(self.host, self.port).lower():
            raise HTTPError(421, f"this is hush's live view at {authority(self.host, self.port)}; "
                                 "the Host header names another")
        supplied = request.cookie(self.cookie_name) or ""
        if not self.token or not hmac.compare_digest(supplied.encode(), self.token.encode()):
            raise HTTPError(403, "no token: open the live view with `hush ui` (or `hush ui --print-url`)")
        if request.method == "POST":
            if request.headers.get("origin") != self.origin:
                raise HTTPError(403, "a change must come from the live view's own page (Origin)")
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                raise HTTPError(415, "send JSON (Content-Type: application/json)")

    async def _route(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if request.method == "GET" and request.path == "/" and "token" in request.query:
            self._check_host_only(request)
            if not self._redeem(request.query["token"][0]):
                raise HTTPError(403, "this URL has been used, has expired (it works once, for "
                                     f"{NONCE_TTL} s) or is from another run of hush: run `hush ui` again")
            cookie = f"{self.cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            await self._send(writer, 303, "", extra=[("Location", "/"), ("Set-Cookie", cookie)])
            return
        self._check(request)
        if request.method == "GET":
            if request.path == "/api/events":
                await self._events(reader, writer)
                return
            if request.path == "/api/state":
                await self._json(writer, 200, self.backend.state())
                return
            if request.path == "/api/history":
                await self._json(writer, 200, await self.backend.history())
                return
            name = "index.html" if request.path == "/" else request.path.removeprefix("/static/")
            if (request.path == "/" or request.path.startswith("/static/")) and name in self._static:
                body, ctype = self._static[name]
                await self._send(writer, 200, body, ctype)
                return
            raise HTTPError(404, "no such page")
        if request.method != "POST":
            raise HTTPError(405, "GET or POST only")
        try:
            data = json.loads(request.body or b"null")
        except ValueError:
            raise HTTPError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "the body must be a JSON object")
        if request.path == "/api/held":
            why = self.backend.held(str(data.get("id", "")), str(data.get("do", "")))
            await self._json(writer, 409 if why else 200, {"ok": why is None, "error": why})
        elif request.path == "/api/answer":
            why = self.board.answer(str(data.get("id", "")), str(data.get("verdict", "")),
                                    str(data.get("scope", "")))
            await self._json(writer, 409 if why else 200, {"ok": why is None, "error": why})
        elif request.path == "/api/rule":
            result = await self.backend.make_rule(str(data.get("app", "")), str(data.get("match", "")),
                                                  str(data.get("value", "")), str(data.get("action", "")))
            await self._json(writer, 200 if result.get("ok") else 409, result)
        else:
            raise HTTPError(404, "no such action")

    def _check_host_only(self, request: Request) -> None:
        if request.headers.get("host", "").lower() != authority(self.host, self.port).lower():
            raise HTTPError(421, "the Host header names another server")

    async def _events(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= MAX_CLIENTS:
            raise HTTPError(503, f"{MAX_CLIENTS} live views are open already; close one")
        client = Client()
        self._clients.add(client)
        # a page sends nothing more on its event stream: the read ends (b"") when it goes away —
        # a reloaded or closed page frees its place at once, not at the next event it fails to take
        gone = asyncio.ensure_future(reader.read(1))
        try:
            head = _head(200, "text/event-stream", None, [("X-Accel-Buffering", "no")])
            writer.write(head + b"retry: 1000\n\n")
            # up to RECENT records: ~1.6 MB of JSON, ~20 ms to encode — off the event loop (the
            # records are not changed once published: a tunnel's later rows are new records)
            hello = {"records": list(self._recent), "questions": self.board.questions()}
            writer.write(await asyncio.to_thread(sse, "hello", hello))
            await writer.drain()
            while True:
                get = asyncio.ensure_future(client.queue.get())
                done, _ = await asyncio.wait({get, gone}, timeout=PING, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                if gone in done:
                    return
                data = get.result() if get in done else b": ping\n\n"
                if data is None:
                    return
                writer.write(data)
                await writer.drain()
        finally:
            gone.cancel()
            self._clients.discard(client)

    async def _json(self, writer: asyncio.StreamWriter, status: int, data: Any) -> None:
        await self._send(writer, status, json.dumps(data, default=str).encode(), "application/json")

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes | str,
                    ctype: str = "text/plain; charset=utf-8", extra: list[tuple[str, str]] | None = None) -> None:
        data = body.encode() + (b"\n" if body else b"") if isinstance(body, str) else body
        writer.write(_head(status, ctype, len(data), extra or []) + data)
        await writer.drain()


def _head(status: int, ctype: str, length: int | None, extra: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"Content-Type: {ctype}", "Connection: close",
             *(f"{k}: {v}" for k, v in SECURITY_HEADERS), *(f"{k}: {v}" for k, v in extra)]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _load_static() -> dict[str, tuple[bytes, str]]:
    out = {}
    for path in STATIC.iterdir():
        if path.is_file() and path.suffix in TYPES:
            out[path.name] = (path.read_bytes(), TYPES[path.suffix])
    return out
