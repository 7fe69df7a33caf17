from hush.daemon.mitmaddons import mitmproxy_addons
from hush.daemon.policy import build
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


def test_a_reload_that_crashes_the_loader_keeps_the_running_set(tmp_path, monkeypatch):
    import asyncio

    from hush.daemon import run
    from hush.daemon.config import Config

    def broken(*args, **kwargs):
        raise KeyError("delay")  # the shape of a real loader bug the fuzz tests found

    async def scenario():
        good = policy("  - {action: block}\n")
        daemon = run.Daemon(good, Config(), tmp_path, tmp_path)
        monkeypatch.setattr(run, "load", broken)
        ok = await daemon.reload("test")
        return ok, daemon.holder.current is good, daemon.reloads[-1]

    ok, kept, record = asyncio.run(scenario())
    assert not ok and kept
    assert not record.ok and record.errors == ["internal error while loading: KeyError('delay')"]
