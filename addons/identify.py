"""Identify: which app a flow belongs to, and which policy set decides it.

Notes on each flow (``notes(flow)``) the PolicySet snapshot that will decide
it (``policy``, taken once), its ``app`` and ``listener``.  The app is the one whose policy
owns the listener the client connected to (``proxy_mode.full_spec``); on a
listener several policies share, the one whose ``identify.process`` names the
executable of the client's process (``/proc/PID/exe``, found once per
connection, in a thread; every process holding the socket must name the same
app, else the connection fails closed).  A
User-Agent never names the app.  Under
a stock ``mitmdump -s``, ``--set hush_policies=DIR`` loads the policies and
``--set hush_app=NAME`` names the app for listeners no policy owns.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable

from mitmproxy import addonmanager, connection, ctx, exceptions, http, tcp

from hush.addons.notes import conn_notes, notes
from hush.daemon import peeruid
from hush.daemon.launch.server import app_of_spec
from hush.daemon.policy import load, procnet
from hush.daemon.policy.holder import PolicyHolder
from hush.daemon.policy.model import PolicySet
from hush.daemon.yamlschema import LoadError

log = logging.getLogger("hush.identify")


def identify_connection(client: connection.Client, policyset: PolicySet | None, fallback: str | None = None,
                        processes: set[str] | None = None) -> tuple[str | None, str]:
    """(app or None, listener spec) for a client connection."""
    spec = client.proxy_mode.full_spec
    launched = app_of_spec(spec)
    if launched is not None:  # `hush launch`: the app is the launch's, nothing to look up or spoof
        return (launched if policyset and launched in policyset.policies else None), spec
    app = policyset.app_for_listener(spec, processes) if policyset else None
    if app is None and fallback and policyset and fallback in policyset.policies:
        app = fallback
    return app, spec


def identified_names(policyset: PolicySet | None, spec: str, owner: procnet.Owner | None) -> tuple[set[str], str]:
    """On a shared listener: (the process names to identify the app by, what
    was found).  The names are the file names of the executables of every
    process holding the client's socket (``/proc/PID/exe``, not ``comm``,
    which a process sets itself).  Every holder must name the same one app:
    a holder that names another app, or none, makes the names empty and the
    connection fails closed (a socket handed to another app's process, or a
    process two apps claim)."""
    if owner is None or not owner.holders:
        return set(), "its process is unknown"
    policies = policyset.policies if policyset else {}
    apps = [listener.app for listener in policyset.listeners if listener.spec == spec] if policyset else []
    claims: set[frozenset[str]] = set()
    for holder in owner.holders:
        name = holder.exe_name
        claims.add(frozenset(app for app in apps if name and name in policies[app].processes))
    exes = ", ".join(sorted({h.exe or f"pid {h.pid}: executable unreadable" for h in owner.holders}))
    if len(claims) == 1:
        [claim] = claims
        if len(claim) == 1:
            [app] = claim
            return {n for n in owner.names if n in policies[app].processes}, exes
        if len(claim) > 1:
            return set(), f"{exes} is claimed by {', '.join(sorted(claim))}"
        return set(), f"{exes} is named by no policy"
    return set(), f"the socket is held by processes of different apps or none: {exes}"


class Identify:
    def __init__(self, holder: PolicyHolder | None = None):
        self.holder = holder or PolicyHolder()
        # under mitmdump, hush_policies loaded anew: act's policy_changed (wired in chain())
        self.on_reload: Callable[[PolicySet | None, PolicySet], object] | None = None

    async def client_connected(self, client: connection.Client) -> None:
        """On a shared listener, find the client's process; refuse other local
        users' connections (their uid, from the kernel).  Once per connection,
        off the event loop."""
        if app_of_spec(client.proxy_mode.full_spec) is not None:
            return  # from a launch's namespace: the daemon's own socket there, and no /proc to ask
        if not client.peername or not ipaddress.ip_address(client.peername[0].split("%")[0]).is_loopback:
            return  # another machine (only on listeners the config explicitly opened): no process to ask
        policyset = self.holder.current
        shared = policyset is not None and policyset.is_shared(client.proxy_mode.full_spec)
        check_uid = ctx.options.hush_same_user_only
        uid = None
        if shared:
            owner = await asyncio.to_thread(procnet.owner, client.peername, client.sockname)
            state = conn_notes(client)
            state.owner, state.shared = owner, True
            uid = owner.uid if owner else None
            names, found = identified_names(policyset, client.proxy_mode.full_spec, owner)
            if not names:
                log.warning("connection to shared listener %s fails closed: %s", client.proxy_mode.full_spec, found)
                state.unidentified = f"no policy identifies the process on this shared listener: {found}"
        elif check_uid:
            entry = await peeruid.uid_inode(client.peername, client.sockname)  # no thread hop: docs/performance.md
            uid = entry[0] if entry else None
        if check_uid and uid != os.getuid():
            who = f"uid {uid}" if uid is not None else "an unknown process"
            log.warning("refused a connection to %s from %s: hush serves only uid %d",
                        client.proxy_mode.full_spec, who, os.getuid())
            client.error = f"hush: connection from {who} refused"

    @staticmethod
    def unidentified(client: connection.Client) -> str | None:
        """Why a connection to a shared listener has no app (for the audit), if it has none."""
        return conn_notes(client).unidentified

    @staticmethod
    def owner(client: connection.Client) -> procnet.Owner | None:
        """The process found for a client connection (on a shared listener)."""
        return conn_notes(client).owner

    def app_for(self, client: connection.Client, policyset: PolicySet | None) -> tuple[str | None, str]:
        """(app or None, listener spec): by listener, and by executable where shared."""
        state = conn_notes(client)
        names = None
        if state.shared:  # a shared listener: by the executables holding the socket
            names, _ = identified_names(policyset, client.proxy_mode.full_spec, state.owner)
        return identify_connection(client, policyset, ctx.options.hush_app, names)

    def load(self, loader: addonmanager.Loader) -> None:
        loader.add_option(
            # mitmproxy types typespec as `type`, but takes (and compares equal) X | None
            "hush_policies", str | None, None,  # type: ignore[arg-type]
            "A directory (or file) of hush policies. The hush daemon sets the policy set itself; "
            "use this with a stock mitmdump -s.",
        )
        loader.add_option(
            "hush_same_user_only", bool, True,
            "Refuse connections from processes of other local users (their uid in /proc/net/tcp).",
        )
        loader.add_option(
            "hush_app", str | None, None,  # type: ignore[arg-type]  # (as above)
            "The app for flows on listeners that no policy owns (mitmdump -s users).",
        )

    def configure(self, updated: set[str]) -> None:
        if "hush_policies" in updated and ctx.options.hush_policies:
            try:
                new = load([ctx.options.hush_policies])
            except LoadError as e:
                raise exceptions.OptionsError(f"Cannot load hush policies {ctx.options.hush_policies}:\n{e}") from e
            old = self.holder.swap(new)
            if old is not None and self.on_reload is not None:
                self.on_reload(old, new)  # as the daemon's reload: close what the new set treats more strictly

    def stamp(self, flow: http.HTTPFlow | tcp.TCPFlow) -> None:
        n = notes(flow)
        if n.identified:
            return
        policyset = self.holder.current
        app, listener = self.app_for(flow.client_conn, policyset)
        n.identified = True
        n.policy, n.app, n.listener = policyset, app, listener
        owner = conn_notes(flow.client_conn).owner
        if owner is not None:
            n.process = ", ".join(sorted(owner.names)) or owner.name
            n.exe = ", ".join(sorted({h.exe for h in owner.holders if h.exe})) or None
        if app is None:
            log.warning("no policy owns listener %s: its flows are blocked", listener)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self.stamp(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.stamp(flow)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self.stamp(flow)


addons = [Identify()]
