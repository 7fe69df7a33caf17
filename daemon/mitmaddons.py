"""The six mitmproxy addons hush runs, imported without the other twenty-five.

Importing any ``mitmproxy.addons.X`` first executes the package's
``__init__.py``, which imports every default addon and with them flask and
werkzeug (the mitm.it onboarding app), ldap3 (proxy authentication), jinja2,
click: about 280 modules and 11 MB the daemon never uses, code that would
only be surface.  So the package object is created from its spec without
running its ``__init__``; its submodules then import as usual.

If the package was imported already (mitmproxy's own tools, a test), nothing
changes.
"""

from __future__ import annotations

import importlib.util
import sys


def _package_without_init() -> None:
    name = "mitmproxy.addons"
    if name in sys.modules:
        return
    import mitmproxy

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return  # not a regular package here: import it the ordinary way
    sys.modules[name] = package = importlib.util.module_from_spec(spec)
    mitmproxy.addons = package


_package_without_init()

from mitmproxy.addons import block, core, disable_h2c, next_layer, proxyserver, tlsconfig  # noqa: E402


def mitmproxy_addons() -> list:
    """The few of mitmproxy's default addons hush needs.  The others (scripts,
    onboarding at mitm.it, map-local/remote, replay, sticky cookies, …) would
    only add a hook call to every event and surface to attack."""
    return [core.Core(), block.Block(), disable_h2c.DisableH2C(), proxyserver.Proxyserver(),
            next_layer.NextLayer(), tlsconfig.TlsConfig()]
