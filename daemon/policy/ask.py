"""The asker: one question per (app, site), put to the page and the desktop, and what an answer does.

The ``ask`` action (addons/actions/ask.py) awaits :meth:`Asker.ask`; every flow
of the same app to the same site while a question is open waits on that one
question and gets its answer.  The question is posted on the live view's board
(:mod:`hush.daemon.ui.questions`: the page answers it) and shown as a desktop
notification (:mod:`hush.daemon.notify_dbus`: its buttons answer it).  Whoever
answers first settles it; the asker then applies the answer's scope once:

- ``once``: only the flows waiting now get it;
- ``1h`` / ``restart``: a rule for the site (``allow``, ``tor`` or ``block``)
  before the app's own rules, with ``expires:`` an hour on (or until hush
  stops), kept by the policy holder (:meth:`PolicyHolder.add_temporary`);
- ``always``: that rule is written into the app's policy file (the live
  view's writer, :func:`hush.daemon.ui.rules.write_rule`) and the daemon
  reloads it; meanwhile a temporary rule bridges the reload.

Nobody to ask (no page open and no notification service answering ``Notify``)
gives ``ask-unavailable`` at once; no answer by the deadline ``ask-timeout``
(the question is withdrawn at its deadline by a timer of its own, whether or
not any flow still waits).  A question whose flows all went away (the app
closed them) is withdrawn at once (``abandoned``), so questions never pile up
on the board; and one app holds at most ``questions.MAX_PER_APP`` of the
board's ``MAX_PENDING`` places, so it cannot leave another app unanswerable.
Everything here runs on the daemon's event loop and never blocks it (the file
is written in a thread).  One asker per process (``ASKER``), configured by the
daemon; unconfigured (an addon file loaded alone), it asks the page only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hush.daemon.ui import questions
from hush.daemon.ui.questions import Answer, Question

if TYPE_CHECKING:
    from hush.daemon.policy.holder import PolicyHolder
    from hush.daemon.policy.model import Rule

log = logging.getLogger("hush.ask")

HOUR = 3600.0
BRIDGE = 30.0  # seconds a temporary rule covers an "always" answer until its reload is in force
MAX_TASKS = 64  # "always" answers being written at once; more are applied until restart only


@dataclasses.dataclass(frozen=True)
class Result:
    """What became of a question for one waiting flow: ``answer``, or the
    ``outcome`` that sends it to the fallback (``ask-timeout``,
    ``ask-unavailable``, ``ask-failed``) and why."""

    answer: Answer | None
    outcome: str | None = None
    why: str | None = None


class Prompt(Protocol):
    """A desktop prompt (daemon/notify_dbus.py): shows a question, reports the answer itself."""

    async def show(self, question: Question) -> bool: ...  # delivered to a notification service?

    async def close(self, question: Question) -> None: ...


class Asker:
    def __init__(self, board: questions.Board | None = None):
        self.board = board if board is not None else questions.BOARD
        self.holder: PolicyHolder | None = None
        self.prompt: Prompt | None = None
        # the daemon's reload: an "always" answer wrote the policy file
        self.reload: Callable[[str], Awaitable[bool]] | None = None
        self._why: weakref.WeakKeyDictionary[Question, str] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}  # question id -> its withdrawal at the deadline
        self.asked = 0  # questions put, since start (hush status)

    def configure(self, holder: PolicyHolder | None, prompt: Prompt | None,
                  reload: Callable[[str], Awaitable[bool]] | None) -> None:
        self.holder, self.prompt, self.reload = holder, prompt, reload

    # -- a flow's side ----------------------------------------------------------------

    async def ask(self, app: str, host: str, site: str, url: str | None, rule: str | None, timeout: float,
                  fallback: str) -> Result:
        """Wait for the answer to the open question on (``app``, ``site``), or put one."""
        question = self.board.pending(app, site)
        if question is not None:
            question.waiting += 1
        else:
            question = Question(app=app, host=host, site=site, url=url, rule=rule, timeout=timeout,
                                fallback=fallback)
            try:
                self.board.post(question)
            except questions.Full as e:
                return Result(None, "ask-unavailable", str(e))
            self.asked += 1
            # withdrawn at its deadline whoever waits on it (or nobody: flows that went away)
            self._timers[question.id] = asyncio.get_running_loop().call_later(
                max(0.0, question.asked + question.timeout - time.time()), self._withdraw, question, "ask-timeout")
            question.answer.add_done_callback(functools.partial(self._settled, question))
            # its own task: the question is shown (or found unanswerable) whatever becomes of this flow
            self._spawn(self._show(question))
        try:
            return await self._wait(question)
        finally:  # answered, timed out, or this flow went away (its wait cancelled)
            question.waiting -= 1
            if question.waiting <= 0 and not question.answer.done():
                self._withdraw(question, "ask-abandoned")  # nobody left to answer

    async def _show(self, question: Question) -> None:
        shown = False
        if self.prompt is not None:
            try:
                shown = await self.prompt.show(question)
            except Exception as e:  # a prompt that fails is one that was not shown
                log.warning("desktop prompt failed: %r", e)
        if not shown and not self.board.listening() and not question.answer.done():
            self._withdraw(question, "ask-unavailable")
        elif shown and question.answer.done() and self.prompt is not None:
            await self.prompt.close(question)  # settled (abandoned, say) while it was being shown

    async def _wait(self, question: Question) -> Result:
        remaining = question.asked + question.timeout - time.time()
        if not question.answer.done() and remaining > 0:
            await asyncio.wait({question.answer}, timeout=remaining)  # shields the question: others share it
        if not question.answer.done():
            self._withdraw(question, "ask-timeout")
        if question.answer.cancelled() or question.answer.exception() is not None:
            return Result(None, self._why.get(question, "ask-timeout"))
        return Result(question.answer.result())

    def _withdraw(self, question: Question, outcome: str) -> None:
        self._why[question] = outcome
        self.board.withdraw(question.id, outcome.removeprefix("ask-"))

    # -- once per question: what the answer does beyond the flows waiting ----------------

    def _settled(self, question: Question, fut: asyncio.Future[Answer]) -> None:
        timer = self._timers.pop(question.id, None)
        if timer is not None:
            timer.cancel()
        if self.prompt is not None:
            self._spawn(self.prompt.close(question))
        if fut.cancelled() or fut.exception() is not None:
            return
        answer = fut.result()
        try:
            self.apply(question, answer)
        except Exception:
            log.exception("applying the answer %s/%s for %s failed", answer.verdict, answer.scope, question.site)

    def apply(self, question: Question, answer: Answer) -> None:
        if answer.scope == "once" or self.holder is None:
            return
        now = time.time()
        if answer.scope == "1h":
            self.holder.add_temporary(question.app, self.site_rule(question, answer, now + HOUR))
        elif answer.scope == "restart":
            self.holder.add_temporary(question.app, self.site_rule(question, answer, None))
        elif answer.scope == "always":
            self.holder.add_temporary(question.app, self.site_rule(question, answer, now + BRIDGE))
            if len(self._tasks) < MAX_TASKS:
                self._spawn(self._always(question, answer))

    def site_rule(self, question: Question, answer: Answer, expires: float | None) -> Rule:
        """The rule an answer for a while is: ``match: {site: SITE}``, the answer's action."""
        from hush.addons.actions.ask import verdict_action
        from hush.daemon.policy.model import Match, Rule
        from hush.daemon.yamlschema import Location

        how = "until restart" if expires is None else f"until {time.strftime('%H:%M', time.localtime(expires))}"
        where = self._ask_location(question) or Location("<ask>", 0, 0)
        return Rule(0, f"asked: {answer.verdict} {question.site} {how}", Match(sites=frozenset({question.site})),
                    verdict_action(answer.verdict), where, expires=expires)

    def _ask_location(self, question: Question):
        """Where the ask rule is (``FILE:LINE``), as a Location of the policy file."""
        from hush.daemon.yamlschema import Location

        policyset = self.holder.loaded if self.holder is not None else None
        policy = policyset.policies.get(question.app) if policyset is not None else None
        if policy is None:
            return None
        line = (question.rule or "").rpartition(":")[2]
        return Location(policy.file, int(line) if line.isdigit() else 0, 0)

    async def _always(self, question: Question, answer: Answer) -> None:
        """Write the rule into the app's policy file (the live view's writer,
        :func:`hush.daemon.ui.rules.write_rule`: the file kept byte for byte,
        the rule first) and reload; a refused reload puts the file back."""
        holder = self.holder
        policyset = holder.loaded if holder is not None else None
        if holder is None or policyset is None or question.app not in policyset.policies:
            return
        if policyset.layer(question.app, "user") is None:
            log.warning("ask: %s's policy is the organisation's: 'always' applies until restart only", question.app)
            holder.add_temporary(question.app, self.site_rule(question, answer, None))
            return
        path = Path(policyset.policies[question.app].file)
        try:
            from hush.daemon.ui.rules import undo, write_rule

            old, new, line = await asyncio.to_thread(write_rule, path, question.app, "site", question.site,
                                                     answer.verdict)
        except Exception as e:  # not writable, not a file ruamel reads: the answer holds until restart
            log.error("ask: could not write 'always %s %s' into %s (%s); it applies until restart", answer.verdict,
                      question.site, path, e)
            holder.add_temporary(question.app, self.site_rule(question, answer, None))
            return
        log.info("ask: wrote 'always %s %s' into %s:%d", answer.verdict, question.site, path, line)
        if self.reload is not None and not await self.reload(f"ask: always {answer.verdict} {question.site}"):
            undone = await asyncio.to_thread(undo, path, old, new)
            log.error("ask: the policy with 'always %s %s' was refused%s; it applies until restart", answer.verdict,
                      question.site, " and the file was put back" if undone else "")
            holder.add_temporary(question.app, self.site_rule(question, answer, None))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stopping: every open question withdrawn (its flows are answered by timing's shutdown)."""
        for question in self.board.questions():
            self.board.withdraw(question["id"], "shutdown")
        for task in list(self._tasks):
            task.cancel()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


ASKER = Asker()
