"""What the policy loader takes from the daemon's config (``ParseContext``), in a
module that imports neither mitmproxy nor the loader: the config file and the
CLI need it without loading the proxy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import yaml

    from hush.addons.actions.base import Action
    from hush.daemon.yamlschema import Reader

GENERIC_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@dataclasses.dataclass(frozen=True)
class ParseContext:
    """Defaults the policy loader takes from the daemon's config."""

    user_agent: str = GENERIC_USER_AGENT
    listen_host: str = "127.0.0.1"  # for policies whose `listen` gives only a port
    allow_non_loopback: bool = False  # the config's explicit allow_non_loopback_listeners
    # set by the loader: parses a nested action (`then:`) → Action or None
    parse_action: Callable[[Reader, yaml.Node, ParseContext], Action | None] | None = dataclasses.field(
        default=None, compare=False)
