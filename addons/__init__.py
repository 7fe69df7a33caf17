"""hush's mitmproxy addons: identify → classify → decide → act → audit,
with timing (held flows), torroute (flows sent through Tor) and cap (download
limits) serving act.

Each addon is one file and one class.  They pass notes to each other on the
flow (``notes(flow)``, one typed record under ``flow.metadata["hush"]``) and
keep per-connection state on the connection (``conn_notes(client)``): see
``addons/notes.py``.  Where one addon calls another, it was handed that addon
here, in :func:`chain`: the whole dependency graph is in that one function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hush.addons.act import Act
    from hush.addons.audit import Audit
    from hush.addons.cap import Cap
    from hush.addons.classify import Classify
    from hush.addons.decide import Decide
    from hush.addons.identify import Identify
    from hush.addons.intake import Intake
    from hush.addons.timing import Timing
    from hush.addons.torroute import Tor, TorRoute
    from hush.daemon.policy.holder import PolicyHolder


@dataclasses.dataclass(frozen=True)
class Chain:
    """Every hush addon, wired; iterates in pipeline order (hook order)."""

    identify: Identify
    intake: Intake
    classify: Classify
    decide: Decide
    act: Act
    timing: Timing
    router: TorRoute
    cap: Cap
    audit: Audit

    def __iter__(self) -> Iterator[object]:
        return iter((self.identify, self.intake, self.classify, self.decide, self.act, self.timing, self.router,
                     self.cap, self.audit))


def chain(holder: PolicyHolder | None = None, tor: Tor | None = None) -> Chain:
    """A fresh instance of every addon, each handed the ones it calls.

    ``holder`` (a :class:`~hush.daemon.policy.holder.PolicyHolder`) is the
    policy set the daemon swaps on reload; without it, set ``hush_policies``.
    ``tor`` (a :class:`~hush.daemon.tor.TorManager`) is the tor flows go through.
    """
    from hush.addons.act import Act
    from hush.addons.audit import Audit
    from hush.addons.cap import Cap
    from hush.addons.classify import Classify
    from hush.addons.decide import Decide
    from hush.addons.identify import Identify
    from hush.addons.intake import Intake
    from hush.addons.timing import Timing
    from hush.addons.torroute import TorRoute

    identify = Identify(holder)  # which app, which policy set
    router = TorRoute(tor)  # into tor's HTTPTunnelPort
    audit = Audit(router)  # tells a connection to tor from one to a site
    timing = Timing(identify, audit)  # re-identifies held flows on a reload; audits them at shutdown
    act = Act(identify, timing, router)  # applies actions: holding (timing), tor (router); reloads
    identify.on_reload = act.policy_changed  # mitmdump's hush_policies loaded anew
    decide = Decide(identify, act)  # identifies SOCKS5 connections; withdraws act's permits
    intake = Intake(identify, audit, decide)  # audits what mitmproxy refuses; refuses SOCKS5 destinations decide blocks
    return Chain(identify, intake, Classify(), decide, act, timing, router, Cap(), audit)


class Pipeline:
    """hush's addons as the children of one mitmproxy addon.

    mitmproxy pays a context manager and a coroutine per top-level addon on
    every event, whether or not the addon has that hook; children are only
    looked up.  Nine children under one parent measurably raise throughput
    (docs/performance.md).  Hook order is the children's order.
    """

    name = "hush"

    def __init__(self, children: Iterable[object]):
        self.addons = list(children)
