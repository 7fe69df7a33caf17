import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from hush.addons.identify import Identify
from hush.daemon.policy.holder import PolicyHolder

from .helpers import http_flow, policyset


def test_stamps_app_listener_and_snapshot():
    ps = policyset()
    identify = Identify(PolicyHolder(ps))
    with taddons.context(identify):
        f = http_flow("http://a.org/")
        identify.requestheaders(f)
    assert f.metadata["hush.app"] == "x"
    assert f.metadata["hush.listener"] == "regular@127.0.0.1:8101"
    assert f.metadata["hush.policy"] is ps


def test_snapshot_taken_once_per_flow():
    holder = PolicyHolder(policyset())
    identify = Identify(holder)
    with taddons.context(identify):
        f = http_flow("http://a.org/")
        identify.requestheaders(f)
        first = f.metadata["hush.policy"]
        holder.swap(policyset())
        identify.requestheaders(f)
    assert f.metadata["hush.policy"] is first


def test_unknown_listener_has_no_app_unless_fallback():
    identify = Identify(PolicyHolder(policyset()))
    with taddons.context(identify) as tctx:
        f = http_flow("http://a.org/", listener="regular@127.0.0.1:9999")
        identify.requestheaders(f)
        assert f.metadata["hush.app"] is None
        tctx.configure(identify, hush_app="x")
        g = http_flow("http://a.org/", listener="regular@127.0.0.1:9999")
        identify.requestheaders(g)
        assert g.metadata["hush.app"] == "x"


def test_policies_option_loads_and_rejects(tmp_path):
    (tmp_path / "x.yaml").write_text("app: x\nlisten: 8101\ndefault: allow\n")
    identify = Identify()
    with taddons.context(identify) as tctx:
        tctx.configure(identify, hush_policies=str(tmp_path))
        assert list(identify.holder.current.policies) == ["x"]
        (tmp_path / "bad.yaml").write_text("app: y\nlisten: 8101\ndefault: nope\n")
        with pytest.raises(exceptions.OptionsError) as e:
            tctx.configure(identify, hush_policies=str(tmp_path / "bad.yaml"))
        assert "bad.yaml:3:10: unknown action 'nope'" in str(e.value)
        assert list(identify.holder.current.policies) == ["x"]  # the last good set stays


def test_shared_listener_identifies_by_process_even_without_the_uid_check(monkeypatch):
    import asyncio

    from mitmproxy.proxy.mode_specs import ProxyMode
    from mitmproxy.test import tflow

    from hush.daemon import procnet
    from hush.daemon.policy import build

    ps = build([
        ("a.yaml", "app: a\nlisten: 8101\nidentify: {process: [appa]}\ndefault: allow\n"),
        ("b.yaml", "app: b\nlisten: 8101\nidentify: {process: [appb]}\ndefault: block\n"),
    ])
    monkeypatch.setattr(procnet, "owner", lambda peer, local=None: procnet.Owner(4242, 1234, "appb", None))
    identify = Identify(PolicyHolder(ps))
    with taddons.context(identify) as tctx:
        tctx.configure(identify, hush_same_user_only=False)
        client = tflow.tclient_conn()
        client.proxy_mode = ProxyMode.parse("regular@127.0.0.1:8101")
        client.peername = ("127.0.0.1", 50000)
        asyncio.run(identify.client_connected(client))
        assert client.error is None  # uid 1234 is not ours, but the check is off
        assert identify.app_for(client, ps)[0] == "b"
        tctx.configure(identify, hush_same_user_only=True)
        asyncio.run(identify.client_connected(client))
        assert client.error == "hush: connection from uid 1234 refused"
