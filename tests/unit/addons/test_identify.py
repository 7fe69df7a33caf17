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
