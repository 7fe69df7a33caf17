"""The active PolicySet, swapped in one step.

Readers take ``holder.current`` once per flow and keep that snapshot; a reload
replaces the reference atomically, so a flow never sees half of two sets.
"""

from __future__ import annotations

from hush.daemon.policy.model import PolicySet


class PolicyHolder:
    def __init__(self, policyset: PolicySet | None = None):
        self._current = policyset

    @property
    def current(self) -> PolicySet | None:
        return self._current

    def swap(self, policyset: PolicySet) -> PolicySet | None:
        """Make ``policyset`` active; return the one it replaces."""
        old, self._current = self._current, policyset
        return old
