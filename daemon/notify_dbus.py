"""Desktop prompts: an ``ask`` question as a freedesktop notification with action buttons.

The notification service on the user's session bus (``org.freedesktop.Notifications``:
GNOME Shell, KDE Plasma, dunst, mako, xfce4-notifyd…) shows the question;
the button the user presses comes back as its ``ActionInvoked`` signal, whose
action key is ``VERDICT:SCOPE`` (``allow:once``, ``block:always``…) and is
handed to ``answer(question_id, verdict, scope)``::

    prompt = DesktopPrompt(answer=lambda qid, verdict, scope: board.answer(qid, verdict, scope, "dbus"))
    shown = await prompt.show(question)      # False: no session bus, or no service owns the name
    ...
    await prompt.close(question)             # CloseNotification once answered elsewhere or timed out
    await prompt.aclose()

D-Bus through jeepney (pure Python, no dependencies, asyncio-native, by the
maintainers of SecretStorage): one connection to the bus named by
``DBUS_SESSION_BUS_ADDRESS``, opened on first use, every call with a deadline,
all on the daemon's event loop — never blocking it.  A signal counts only
when it comes from the connection that answered that notification's
``Notify`` (the bus stamps the sender; another client on the session bus
cannot answer for it), and only for a notification shown here.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jeepney import Message
    from jeepney.io.asyncio import DBusConnection, DBusRouter

    from hush.daemon.ui.questions import Question

log = logging.getLogger("hush.prompt")

NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
INTERFACE = "org.freedesktop.Notifications"
# the buttons offered, in order (a service shows as many as it can: GNOME three, KDE and dunst more);
# any VERDICT:SCOPE key the question allows is taken, whichever button sent it
BUTTONS = (
    ("allow:once", "Allow once"),
    ("block:once", "Block once"),
    ("allow:1h", "Allow for 1 h"),
    ("tor:once", "Via Tor once"),
    ("allow:always", "Always allow"),
    ("block:always", "Always block"),
    ("allow:restart", "Allow until restart"),
    ("block:1h", "Block for 1 h"),
)
CALL_TIMEOUT = 2.0  # seconds for connecting and for each call: a bus that does not answer is none
MAX_SHOWN = 256  # notifications tracked at once (questions open: ui.questions.MAX_PENDING)

Answerer = Callable[[str, str, str], object]  # (question id, verdict, scope)


class DesktopPrompt:
    def __init__(self, answer: Answerer, address: str | None = None, app_name: str = "hush"):
        self.answer = answer
        self.address = address if address is not None else os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        self.app_name = app_name
        self._conn: DBusConnection | None = None
        self._router: DBusRouter | None = None
        self._signals: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        # notification id → (question id, the unique name of the service that showed it)
        self._shown: OrderedDict[int, tuple[str, str]] = OrderedDict()
        self._ids: dict[str, int] = {}  # question id → notification id
        self.shown = 0  # notifications shown since start (hush status)
        self.answered = 0
        self.last_error: str | None = None

    # -- the connection ---------------------------------------------------------------

    async def _connect(self) -> DBusRouter | None:
        if self._router is not None and self._signals is not None and not self._signals.done():
            return self._router
        await self._drop()
        if not self.address:
            self.last_error = "no session bus (DBUS_SESSION_BUS_ADDRESS is not set)"
            return None
        from jeepney import MatchRule, message_bus
        from jeepney.io.asyncio import DBusRouter, Proxy, open_dbus_connection

        try:
            self._conn = await asyncio.wait_for(open_dbus_connection(self.address), CALL_TIMEOUT)
            self._router = DBusRouter(self._conn)
            rule = MatchRule(type="signal", interface=INTERFACE, path=PATH)
            queue: asyncio.Queue[Message] = asyncio.Queue(64)  # bounded: jeepney drops past it
            handle = self._router.filter(rule, queue=queue)
            await asyncio.wait_for(Proxy(message_bus, self._router).AddMatch(rule), CALL_TIMEOUT)
        except Exception as e:  # no socket, refused, no answer in time, a bad address
            self.last_error = f"cannot reach the session bus at {self.address}: {e!r}"
            log.info("desktop prompts: %s", self.last_error)
            await self._drop()
            return None
        self._signals = asyncio.ensure_future(self._read(queue, handle))
        return self._router

    async def _drop(self) -> None:
        if self._signals is not None:
            self._signals.cancel()
            self._signals = None
        router, conn = self._router, self._conn
        self._router = self._conn = None
        if router is not None:
            with contextlib.suppress(Exception):
                await router.__aexit__(None, None, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def aclose(self) -> None:
        await self._drop()

    # -- a question -------------------------------------------------------------------

    async def show(self, question: Question) -> bool:
        """Show ``question``; True if a notification service took it."""
        from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call

        keys = [k for k, _ in BUTTONS if _allowed(question, k)]
        actions = [part for k, label in BUTTONS if k in keys for part in (k, label)]
        summary = f"{question.app} wants to reach {question.site}"
        waiting = f" ({question.waiting} requests waiting)" if question.waiting > 1 else ""
        body = html.escape(f"{question.host}{waiting}. No answer in {question.timeout:g} s: {question.fallback}.")
        msg = new_method_call(DBusAddress(PATH, bus_name=NAME, interface=INTERFACE), "Notify", "susssasa{sv}i",
                              (self.app_name, 0, "", summary, body, actions, {"urgency": ("y", 1)},
                               int(question.timeout * 1000)))
        reply = None
        for attempt in (1, 2):  # a connection the bus closed since (a restarted session bus): once more, anew
            async with self._lock:
                router = await self._connect()
            if router is None:
                return False
            try:
                reply = await asyncio.wait_for(router.send_and_get_reply(msg), CALL_TIMEOUT)
                break
            except Exception as e:
                self.last_error = f"Notify failed: {e!r}"
                log.info("desktop prompts: %s%s", self.last_error, "; reconnecting" if attempt == 1 else "")
                await self._drop()
        if reply is None:
            return False
        if reply.header.message_type != MessageType.method_return:
            self.last_error = f"Notify refused: {reply.header.fields.get(HeaderFields.error_name)} {reply.body!r}"
            log.info("desktop prompts: %s", self.last_error)  # typically ServiceUnknown: no service
            return False
        nid = int(reply.body[0])
        sender = str(reply.header.fields.get(HeaderFields.sender, ""))
        self._shown[nid] = (question.id, sender)
        self._ids[question.id] = nid
        while len(self._shown) > MAX_SHOWN:
            _, (qid, _) = self._shown.popitem(last=False)
            self._ids.pop(qid, None)
        self.shown += 1
        self.last_error = None
        return True

    async def close(self, question: Question) -> None:
        """Take the notification down (answered elsewhere, or timed out)."""
        from jeepney import DBusAddress, new_method_call

        nid = self._ids.pop(question.id, None)
        if nid is None:
            return
        self._shown.pop(nid, None)
        router = self._router
        if router is None:
            return
        msg = new_method_call(DBusAddress(PATH, bus_name=NAME, interface=INTERFACE), "CloseNotification", "u",
                              (nid,))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(router.send_and_get_reply(msg), CALL_TIMEOUT)

    async def _read(self, queue: asyncio.Queue[Message], handle) -> None:
        from jeepney import HeaderFields

        with handle:
            while True:
                msg = await queue.get()
                try:
                    member = msg.header.fields.get(HeaderFields.member)
                    sender = msg.header.fields.get(HeaderFields.sender)
                    nid = int(msg.body[0])
                    shown = self._shown.get(nid)
                    if shown is None or shown[1] != sender:
                        continue  # not ours, or not from the service that showed it
                    qid = shown[0]
                    if member == "ActionInvoked":
                        key = str(msg.body[1])
                        verdict, _, scope = key.partition(":")
                        self.answered += 1
                        self.answer(qid, verdict, scope)
                    elif member == "NotificationClosed":
                        self._shown.pop(nid, None)
                        self._ids.pop(qid, None)
                except Exception:
                    log.exception("desktop prompts: a signal could not be read")


def _allowed(question: Question, key: str) -> bool:
    verdict, _, scope = key.partition(":")
    return verdict in question.verdicts and scope in question.scopes
