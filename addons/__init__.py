"""hush's mitmproxy addons: identify → classify → decide → act → audit.

Each addon is one file and one class; they pass notes to each other only in
``flow.metadata`` under ``hush.*`` keys (see docs/architecture.md).
"""


def chain(holder=None):
    """A fresh instance of every addon, in pipeline order.

    ``holder`` (a :class:`~hush.daemon.policy.holder.PolicyHolder`) is the
    policy set the daemon swaps on reload; without it, set ``hush_policies``.
    """
    from hush.addons.act import Act
    from hush.addons.audit import Audit
    from hush.addons.classify import Classify
    from hush.addons.decide import Decide
    from hush.addons.identify import Identify

    return [Identify(holder), Classify(), Decide(), Act(), Audit()]
