"""hush's mitmproxy addons: identify → classify → decide → act → audit,
with timing (held flows), torroute (flows sent through Tor) and cap (download
limits) serving act.

Each addon is one file and one class; they pass notes to each other only in
``flow.metadata`` under ``hush.*`` keys (see docs/architecture.md).
"""


def chain(holder=None, tor=None):
    """A fresh instance of every addon, in pipeline order.

    ``holder`` (a :class:`~hush.daemon.policy.holder.PolicyHolder`) is the
    policy set the daemon swaps on reload; without it, set ``hush_policies``.
    ``tor`` (a :class:`~hush.daemon.tor.TorManager`) is the tor flows go through.
    """
    from hush.addons.act import Act
    from hush.addons.audit import Audit
    from hush.addons.classify import Classify
    from hush.addons.decide import Decide
    from hush.addons.cap import Cap
    from hush.addons.identify import Identify
    from hush.addons.intake import Intake
    from hush.addons.timing import Timing
    from hush.addons.torroute import TorRoute

    router = TorRoute()
    if tor is not None:
        router.set_manager(tor)
    return [Identify(holder), Intake(), Classify(), Decide(), Act(), Timing(), router, Cap(), Audit()]


class Pipeline:
    """hush's addons as the children of one mitmproxy addon.

    mitmproxy pays a context manager and a coroutine per top-level addon on
    every event, whether or not the addon has that hook; children are only
    looked up.  Nine children under one parent measurably raise throughput
    (docs/performance.md).  Hook order is the children's order.
    """

    name = "hush"

    def __init__(self, children):
        self.addons = list(children)
