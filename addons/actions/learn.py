"""``learn``: like ``allow`` — the request goes to the site unchanged, from this
machine — and every audit row it makes says ``learn``.

Meant as a new app's ``default: learn`` for its first day: nothing breaks,
everything is recorded, and ``hush policy suggest --app APP`` then turns the
audit into a policy to read and save (docs/operations.md).  ``hush status``
lists the apps whose policy is learning.
"""

from __future__ import annotations

import dataclasses

from hush.addons.actions.base import Action, register


@register
@dataclasses.dataclass(frozen=True)
class Learn(Action):
    name = "learn"

    def describe(self) -> str:
        return "learn (allow, and audit as learn)"
