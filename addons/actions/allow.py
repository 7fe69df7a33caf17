"""``allow``: the request goes to the site unchanged, from this machine."""

from __future__ import annotations

import dataclasses

from hush.addons.actions.base import Action, register


@register
@dataclasses.dataclass(frozen=True)
class Allow(Action):
    name = "allow"
