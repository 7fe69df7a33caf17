"""Questions asked in the live view ("ask in the page"): the contract between
the ``ask`` action and the UI server.

Everything here runs on the daemon's event loop (call it from there only; it
does no I/O and never blocks).  The ``ask`` action posts a question and awaits
its future; the UI server shows it to every open page (a server-sent event
``question``) and, when the user clicks, resolves the future with an
:class:`Answer`.  Whoever settles the question first wins: the page, a desktop
notification (the ask action sets ``question.answer`` itself), or the asker's
timeout (``withdraw``)::

    import asyncio
    from hush.daemon.ui import questions

    q = questions.Question(app="signal", host="www.example.com", site="example.com",
                           url="https://www.example.com/a?b", rule="signal.yaml:12",
                           timeout=30.0, fallback="block")
    existing = questions.pending(q.app, q.site)   # one question per (app, site): share it
    if existing is None:
        questions.post(q)                         # -> None; the page shows it now
    else:
        q = existing
    try:
        answer = await asyncio.wait_for(asyncio.shield(q.answer), q.timeout)
    except TimeoutError:
        questions.withdraw(q.id, "timeout")       # the page takes it down
        ...                                       # apply q.fallback, audit "ask-timeout"
    else:
        answer.verdict   # "allow" | "tor" | "block"
        answer.scope     # "once" | "1h" | "restart" | "always"
        answer.source    # "page" | "dbus" | ...

Contract:

- ``post(question) -> None``.  Raises :class:`Full` when ``MAX_PENDING``
  questions are open already, or ``MAX_PER_APP`` of the question's app (the
  asker then applies its fallback at once).
  Posting a question whose id is open already is a no-op.
- ``question.answer`` is an :class:`asyncio.Future` resolving to an
  :class:`Answer`; it is created with the question (on the running loop).  The
  page resolves it through :meth:`Board.answer` (only with one of the
  question's ``verdicts`` and ``scopes``; anything else is refused).  A D-Bus
  notification may resolve it too: ``q.answer.set_result(Answer(..., source="dbus"))``
  — check ``q.answer.done()`` first.
- As soon as the future is done (result, cancel, exception) the question
  leaves the board and the page is told (event ``question-closed``: its
  ``reason`` is ``answered`` with the verdict, scope and source, or the reason
  given to ``withdraw``).  ``withdraw(id, reason)`` cancels the future of
  an open question (the asker timed out, or the flow went away): callers
  awaiting it get :class:`asyncio.CancelledError` only if they did not
  ``shield`` it.
- ``listening() -> bool``: whether any page is open right now (an SSE client
  is connected).  No page and no notification service: the asker applies its
  fallback at once instead of waiting for nobody.
- ``pending(app, site) -> Question | None``: the open question for this app
  and site, to share one question between all flows waiting on it.
- The page sees ``url`` redacted as the audit is (``audit.redaction``): the
  board redacts it when it builds the event; pass the URL as the flow has it.

The module-level functions act on one board per process (``BOARD``); the UI
server publishes that board's events.  Tests make a :class:`Board` of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

log = logging.getLogger("hush.ui")

Verdict = Literal["allow", "tor", "block"]
Scope = Literal["once", "1h", "restart", "always"]
VERDICTS: tuple[str, ...] = ("allow", "tor", "block")
SCOPES: tuple[str, ...] = ("once", "1h", "restart", "always")
MAX_PENDING = 256  # open questions at once, in all
MAX_PER_APP = 32  # open questions at once, per app: one app's flood leaves room for the others


class Full(Exception):
    """Too many questions are open already."""


@dataclasses.dataclass(frozen=True)
class Answer:
    verdict: str  # one of VERDICTS
    scope: str  # one of SCOPES
    source: str = "page"  # who answered: "page", "dbus", ...


def _new_future() -> asyncio.Future[Answer]:
    return asyncio.get_running_loop().create_future()


@dataclasses.dataclass(eq=False)
class Question:
    """What the user is asked: may APP reach SITE (HOST)?"""

    app: str
    host: str
    site: str
    url: str | None = None  # as the flow has it; redacted for the page by the board
    rule: str | None = None  # "FILE:LINE" of the ask rule (or default)
    timeout: float = 30.0  # seconds until ``fallback``
    fallback: str = "block"
    verdicts: tuple[str, ...] = VERDICTS  # the answers the page offers
    scopes: tuple[str, ...] = SCOPES
    waiting: int = 1  # flows waiting on it (the asker may raise it; the page shows it)
    id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(8))
    asked: float = dataclasses.field(default_factory=time.time)
    answer: asyncio.Future[Answer] = dataclasses.field(default_factory=_new_future, repr=False)


Listener = Callable[[str, dict[str, Any]], None]  # (event name, JSON-able data)


class Board:
    """The open questions, and who is told about them (the UI server)."""

    def __init__(self, redaction: str = "no-query"):
        self.redaction = redaction  # the UI server sets audit.redaction here
        self._open: dict[str, Question] = {}
        self._reasons: dict[str, str] = {}  # why a withdrawn question was withdrawn
        self._listeners: list[Listener] = []
        self._pages: Callable[[], int] = lambda: 0

    # -- the asker's side ---------------------------------------------------------------

    def post(self, question: Question) -> None:
        if question.id in self._open:
            return
        if len(self._open) >= MAX_PENDING:
            raise Full(f"{MAX_PENDING} questions are open already")
        if sum(q.app == question.app for q in self._open.values()) >= MAX_PER_APP:
            raise Full(f"{question.app} has {MAX_PER_APP} questions open already")
        self._open[question.id] = question
        question.answer.add_done_callback(functools.partial(self._settled, question))
        self._publish("question", self.describe(question))

    def withdraw(self, question_id: str, reason: str = "withdrawn") -> None:
        question = self._open.get(question_id)
        if question is not None and not question.answer.done():
            self._reasons[question_id] = reason
            question.answer.cancel(reason)

    def pending(self, app: str, site: str) -> Question | None:
        for question in self._open.values():
            if question.app == app and question.site == site and not question.answer.done():
                return question
        return None

    def listening(self) -> bool:
        return self._pages() > 0

    # -- the UI server's side ---------------------------------------------------------

    def questions(self) -> list[dict[str, Any]]:
        return [self.describe(q) for q in self._open.values()]

    def answer(self, question_id: str, verdict: str, scope: str, source: str = "page") -> str | None:
        """Resolve an open question.  None if taken, else why not (one line)."""
        question = self._open.get(question_id)
        if question is None or question.answer.done():
            return "no such open question (answered already, or timed out)"
        if verdict not in question.verdicts:
            return f"verdict must be one of {', '.join(question.verdicts)}"
        if scope not in question.scopes:
            return f"scope must be one of {', '.join(question.scopes)}"
        question.answer.set_result(Answer(verdict, scope, source))
        return None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def count_pages(self, pages: Callable[[], int]) -> None:
        """How ``listening()`` learns how many pages are open."""
        self._pages = pages

    def describe(self, question: Question) -> dict[str, Any]:
        from hush.daemon.audit.store import redact

        return {"id": question.id, "app": question.app, "host": question.host, "site": question.site,
                "url": redact(question.url, self.redaction, question.site), "rule": question.rule,
                "timeout": question.timeout, "fallback": question.fallback, "verdicts": list(question.verdicts),
                "scopes": list(question.scopes), "waiting": question.waiting, "asked": question.asked}

    # -- internals ----------------------------------------------------------------------

    def _settled(self, question: Question, fut: asyncio.Future[Answer]) -> None:
        self._open.pop(question.id, None)
        reason = self._reasons.pop(question.id, "withdrawn")
        data: dict[str, Any] = {"id": question.id}
        if fut.cancelled():
            data["reason"] = reason
        elif fut.exception() is not None:
            data["reason"] = "error"
        else:
            answer = fut.result()
            data.update(reason="answered", verdict=answer.verdict, scope=answer.scope, source=answer.source)
        self._publish("question-closed", data)

    def _publish(self, event: str, data: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, data)
            except Exception:
                log.exception("ui: a question listener failed")


BOARD = Board()


def post(question: Question) -> None:
    BOARD.post(question)


def withdraw(question_id: str, reason: str = "withdrawn") -> None:
    BOARD.withdraw(question_id, reason)


def pending(app: str, site: str) -> Question | None:
    return BOARD.pending(app, site)


def listening() -> bool:
    return BOARD.listening()
