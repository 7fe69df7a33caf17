"""The active PolicySet, swapped in one step.

Readers take ``holder.current`` once per flow and keep that snapshot; a reload
replaces the reference atomically, so a flow never sees half of two sets.

The active set is derived from the loaded one (:func:`~hush.daemon.policy.expiry.derive`):
rules whose ``expires:`` has passed are left out, and the temporary rules an
``ask`` answer added (:meth:`add_temporary`) are put first.  When the next rule
expires the holder derives the set again on the event loop (a timer, never a
sleep) and tells ``on_change``, as a reload does — no restart, no reload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from hush.daemon.policy.expiry import derive, live, next_expiry
from hush.daemon.policy.model import PolicySet, Rule

log = logging.getLogger("hush.policy")

MAX_TEMPORARY = 1000  # temporary rules (answers "for 1 h" / "until restart") kept, in all


class PolicyHolder:
    def __init__(self, policyset: PolicySet | None = None):
        self._loaded = policyset
        self._current = policyset
        self._temporary: dict[str, tuple[Rule, ...]] = {}
        self._timer: asyncio.TimerHandle | None = None
        # told (old, new) when the holder itself derived a new active set (a rule
        # expired, a temporary rule was added): the daemon re-decides what is open
        self.on_change: Callable[[PolicySet | None, PolicySet], object] | None = None
        if policyset is not None:
            self._derive()

    @property
    def current(self) -> PolicySet | None:
        return self._current

    @property
    def loaded(self) -> PolicySet | None:
        """The set as loaded from the files, before expiry and temporary rules."""
        return self._loaded

    def swap(self, policyset: PolicySet) -> PolicySet | None:
        """Make ``policyset`` active (as derived); return the one it replaces."""
        self._loaded = policyset
        return self._derive()

    def add_temporary(self, app: str, rule: Rule) -> PolicySet | None:
        """Put ``rule`` before ``app``'s own rules until it expires (or hush
        stops, if it has no ``expires``); tells ``on_change``."""
        kept = [r for r in self._temporary.get(app, ()) if r.match != rule.match]  # a newer answer replaces one
        self._temporary[app] = (rule, *kept)
        while sum(map(len, self._temporary.values())) > MAX_TEMPORARY:  # bounded: drop the oldest
            longest = max(self._temporary, key=lambda a: len(self._temporary[a]))
            self._temporary[longest] = self._temporary[longest][:-1]
        return self._changed()

    def temporary(self, app: str) -> tuple[Rule, ...]:
        return self._temporary.get(app, ())

    def _changed(self) -> PolicySet | None:
        old = self._derive()
        new = self._current
        if new is not None and (old is None or new.version != old.version) and self.on_change is not None:
            try:
                self.on_change(old, new)
            except Exception:
                log.exception("re-deciding open flows under policy set %s failed", new.version)
        return old

    def _derive(self) -> PolicySet | None:
        old = self._current
        if self._loaded is None:
            return old
        now = time.time()
        self._temporary = {app: kept for app, rules in self._temporary.items()
                           if (kept := tuple(r for r in rules if live(r, now)))}
        self._current = derive(self._loaded, self._temporary, now)
        if self._current is not old and old is not None:
            log.info("policy set %s in force (was %s)", self._current.version, old.version)
        self._schedule(now)
        return old

    def _schedule(self, now: float) -> None:
        """A timer for the next expiry, on the running loop (none without one:
        then the next swap derives the set anew)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self._loaded is not None
        when = next_expiry(self._loaded, self._temporary, now)
        if when is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # call_later holds at most ~24 days on some platforms' timers; a longer wait re-arms
        self._timer = loop.call_later(min(max(when - now, 0.0) + 0.01, 86400.0), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._changed()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
