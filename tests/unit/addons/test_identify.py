import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from hush.addons.identify import Identify
from hush.addons.notes import conn_notes, notes
from hush.daemon.policy.holder import PolicyHolder

from .helpers import http_flow, policyset


def test_stamps_app_listener_and_snapshot():
    ps = policyset()
    identify = Identify(PolicyHolder(ps))
    with taddons.context(identify):
        f = http_flow("http://a.org/")
        identify.requestheaders(f)
    assert notes(f).app == "x"
    assert notes(f).listener == "regular@127.0.0.1:8101"
    assert notes(f).policy is ps


def test_snapshot_taken_once_per_flow():
    holder = PolicyHolder(policyset())
    identify = Identify(holder)
    with taddons.context(identify):
        f = http_flow("http://a.org/")
        identify.requestheaders(f)
        first = notes(f).policy
        holder.swap(policyset())
        identify.requestheaders(f)
    assert notes(f).policy is first


def test_unknown_listener_has_no_app_unless_fallback():
    identify = Identify(PolicyHolder(policyset()))
    with taddons.context(identify) as tctx:
        f = http_flow("http://a.org/", listener="regular@127.0.0.1:9999")
        identify.requestheaders(f)
        assert notes(f).app is None
        tctx.configure(identify, hush_app="x")
        g = http_flow("http://a.org/", listener="regular@127.0.0.1:9999")
        identify.requestheaders(g)
        assert notes(g).app == "x"


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

    from hush.daemon.policy import build, procnet

    ps = build([
        ("a.yaml", "app: a\nlisten: 8101\nidentify: {process: [appa]}\ndefault: allow\n"),
        ("b.yaml", "app: b\nlisten: 8101\nidentify: {process: [appb]}\ndefault: block\n"),
    ])
    appb = procnet.Process(4242, "appb", "/usr/bin/appb")
    monkeypatch.setattr(procnet, "owner", lambda peer, local=None: procnet.Owner(4242, 1234, "appb", appb.exe, (appb,)))
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


# -- identification by executable (issue 11, item 12) ------------------------------------

SHARED = [
    ("strict.yaml", "app: strict\nlisten: 8101\nidentify: {process: [strictcli]}\ndefault: block\n"),
    ("lax.yaml", "app: lax\nlisten: 8101\nidentify: {process: [laxcli, laxhelper]}\ndefault: allow\n"),
]
SPEC = "regular@127.0.0.1:8101"


def _owner(*holders):
    from hush.daemon.policy import procnet

    procs = tuple(procnet.Process(1000 + i, comm, exe) for i, (comm, exe) in enumerate(holders))
    return procnet.Owner(procs[0].pid if procs else None, 1000, procs[0].name if procs else None,
                         procs[0].exe if procs else None, procs)


@pytest.mark.parametrize("holders, app", [
    ([("laxcli", "/opt/lax/laxcli")], "lax"),
    ([("strictcli", "/opt/strict/strictcli")], "strict"),
    # comm is the process's own say (prctl PR_SET_NAME): never trusted
    ([("laxcli", "/opt/strict/strictcli")], "strict"),
    ([("strictcli", "/opt/lax/laxcli")], "lax"),
    # the kernel marks a replaced executable; it is still that file name
    ([("laxcli", "/opt/lax/laxcli (deleted)")], "lax"),
    # two processes of the same app holding the socket
    ([("laxcli", "/opt/lax/laxcli"), ("laxhelper", "/opt/lax/laxhelper")], "lax"),
    # a socket held by processes of two apps (passed over a unix socket, inherited): fail closed
    ([("strictcli", "/opt/strict/strictcli"), ("laxcli", "/opt/lax/laxcli")], None),
    # ... or by a process no policy names
    ([("laxcli", "/opt/lax/laxcli"), ("sh", "/usr/bin/dash")], None),
    # an executable that cannot be read, only a comm
    ([("laxcli", None)], None),
    ([], None),
])
def test_shared_listener_identifies_by_executable(holders, app):
    from mitmproxy.proxy.mode_specs import ProxyMode
    from mitmproxy.test import tflow

    from hush.addons.identify import identified_names, identify_connection
    from hush.daemon.policy import build

    ps = build(SHARED)
    names, found = identified_names(ps, SPEC, _owner(*holders))
    client = tflow.tclient_conn()
    client.proxy_mode = ProxyMode.parse(SPEC)
    assert identify_connection(client, ps, None, names)[0] == app, found


def test_a_process_two_apps_claim_fails_closed():
    """The loader refuses two policies claiming one name; identification does
    not rely on it."""
    import types

    from hush.addons.identify import identified_names
    from hush.daemon.policy import build

    ps = build(SHARED)
    claimed = {"strict": types.SimpleNamespace(processes=frozenset({"strictcli", "laxcli"})),
               "lax": ps.policies["lax"]}
    fake = types.SimpleNamespace(listeners=ps.listeners, policies=claimed)
    names, found = identified_names(fake, SPEC, _owner(("laxcli", "/opt/lax/laxcli")))
    assert names == set() and "claimed by lax, strict" in found


def test_flow_records_the_executable():
    from hush.daemon.policy import build, procnet

    identify = Identify(PolicyHolder(build(SHARED)))
    with taddons.context(identify):
        f = http_flow("http://a.org/")
        state = conn_notes(f.client_conn)
        state.owner, state.shared = _owner(("laxcli", "/opt/strict/strictcli")), True
        identify.requestheaders(f)
    assert notes(f).app == "strict"
    assert notes(f).process == "strictcli" and notes(f).exe == "/opt/strict/strictcli"
    assert isinstance(identify.owner(f.client_conn), procnet.Owner)
