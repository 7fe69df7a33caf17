"""Policy actions: one file per action, found here at import time.

A new action is a new module in this package that defines a subclass of
:class:`~hush.addons.actions.base.Action` decorated with ``@register``; the
policy loader, ``explain`` and the act addon pick it up from ``REGISTRY``.
"""

import importlib
import pkgutil

from hush.addons.actions.base import REGISTRY, Action, ParseContext, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Action", "ParseContext", "register"]
