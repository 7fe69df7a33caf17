"""``passthrough``: bytes relayed untouched, TLS never intercepted.

For an app's own (often certificate-pinned) backends.  A passthrough rule may
only look at host and port: the loader rejects it with request-level matchers,
because seeing the path would mean intercepting the TLS it promises to leave
alone.  Should an earlier request-level rule force interception of a host,
a passthrough decision on a request forwards it unchanged, like ``allow``.
"""

from __future__ import annotations

import dataclasses

from hush.addons.actions.base import Action, register


@register
@dataclasses.dataclass(frozen=True)
class Passthrough(Action):
    name = "passthrough"
