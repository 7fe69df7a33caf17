from hush.daemon.policy import build
from hush.daemon.mitmaddons import mitmproxy_addons
from hush.daemon.run import uses_tor


def policy(rules):
    return build([("p.yaml", f"app: a\nlisten: 8101\ndefault: allow\nrules:\n{rules}")])


def test_uses_tor_sees_through_holding_actions():
    assert not uses_tor(policy("  - {action: debounce}\n"))
    assert uses_tor(policy("  - {action: debounce, then: tor}\n"))  # the shipped WhatsApp policy's shape
    assert uses_tor(policy("  - {action: delay, delay: 1s, then: {action: tor, isolation: site}}\n"))
    assert uses_tor(policy("  - {action: tor}\n"))


def test_only_the_mitmproxy_addons_hush_needs():
    names = sorted(type(a).__name__ for a in mitmproxy_addons())
    assert names == ["Block", "Core", "DisableH2C", "NextLayer", "Proxyserver", "TlsConfig"]
