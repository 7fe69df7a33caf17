"""Per-app policies: the loader, the immutable PolicySet, and decisions.

The names are imported on first use: the loader imports the actions, and they
mitmproxy, which the CLI's commands that do not proxy must not pay for."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hush.daemon.policy.loader import build, check_examples, load, policy_files
    from hush.daemon.policy.model import Decision, Listener, Policy, PolicySet, RequestInfo, Rule

_WHERE = {
    "build": "loader", "check_examples": "loader", "load": "loader", "policy_files": "loader",
    "Decision": "model", "Listener": "model", "Policy": "model", "PolicySet": "model",
    "RequestInfo": "model", "Rule": "model",
}

__all__ = [
    "Decision", "Listener", "Policy", "PolicySet", "RequestInfo", "Rule",
    "build", "check_examples", "load", "policy_files",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
