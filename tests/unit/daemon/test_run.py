import pytest

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
        monkeypatch.setattr(run.PolicySource, "load", broken)
        ok = await daemon.reload("test")
        return ok, daemon.holder.current is good, daemon.reloads[-1]

    ok, kept, record = asyncio.run(scenario())
    assert not ok and kept
    assert not record.ok and record.errors == ["internal error while loading: KeyError('delay')"]


def test_a_bind_error_is_said_once_in_words():
    import errno

    from hush.daemon.run import _explain_bind_error

    def wrapped(code):  # mitmproxy's shape: its own OSError, raised from the socket's
        try:
            try:
                raise OSError(code, f"error while attempting to bind: [errno {code}] ...")
            except OSError as inner:
                raise OSError(code, f"[Errno {code}] HTTP(S) proxy failed to listen ... with {inner}") from inner
        except OSError as e:
            return e

    hint = "change 'listen' in the policy"
    assert _explain_bind_error(wrapped(errno.EADDRINUSE)) == f"another program is using this port; stop it, or {hint}"
    assert _explain_bind_error(wrapped(errno.EACCES)).startswith("permission denied")
    assert _explain_bind_error(wrapped(errno.EADDRNOTAVAIL)) == f"the address is not on this machine; {hint}"
    assert _explain_bind_error(wrapped(errno.ENOBUFS)) == f"no buffer space available; {hint}"
    assert _explain_bind_error("not started") == "not started"


def test_a_state_dir_that_cannot_be_one_is_one_line(tmp_path):
    from hush.daemon.run import prepare_state_dir

    a_file = tmp_path / "f"
    a_file.write_text("")
    assert prepare_state_dir(a_file) == (f"the state directory {a_file} is a file, not a directory; "
                                         "remove it or choose another --state-dir")
    assert prepare_state_dir(a_file / "s") == (f"cannot use the state directory {a_file / 's'}: "
                                               "a part of its path is a file; choose another --state-dir")
    fresh = tmp_path / "a" / "b"
    assert prepare_state_dir(fresh) is None and fresh.is_dir()
    assert oct(fresh.stat().st_mode & 0o777) == "0o700"


def test_a_second_daemon_stops_at_the_lock_before_anything(tmp_path, capsys):
    import asyncio
    import os

    from hush.daemon.config import Config
    from hush.daemon.control import StateLock
    from hush.daemon.exitstatus import ExitStatus
    from hush.daemon.run import serve

    held = StateLock(tmp_path)
    held.acquire()
    try:
        code = asyncio.run(serve(policy("  - {action: tor}\n"), Config(), tmp_path, tmp_path))
    finally:
        held.release()
    assert code == ExitStatus.ERROR
    assert capsys.readouterr().err == f"hush is already running with this state dir (pid {os.getpid()})\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock"]  # no control.sock, launch.sock, tor/, ca/


def test_the_lock_is_taken_before_the_state_dir_is_changed(tmp_path, capsys):
    """A second daemon leaves even the directory's mode as it was."""
    import asyncio
    import os

    from hush.daemon.config import Config
    from hush.daemon.control import StateLock
    from hush.daemon.run import serve

    os.chmod(tmp_path, 0o755)
    held = StateLock(tmp_path)
    held.acquire()
    try:
        asyncio.run(serve(policy("  - {action: block}\n"), Config(), tmp_path, tmp_path))
    finally:
        held.release()
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o755"


# -- the policies a reload reads: the directory the daemon started with, or none ------------------

POLICY = "app: a\nlisten: 8101\ndefault: block\n"


def _daemon(tmp_path, policies):
    """A daemon (made on a loop, as mitmproxy's Master needs) and a function that reloads it."""
    import asyncio

    from hush.daemon import run
    from hush.daemon.config import Config
    from hush.daemon.policy.loader import load_checked

    loop = asyncio.new_event_loop()

    async def make():
        return run.Daemon(load_checked([policies]), Config(organisation_policies=tmp_path / "no-floor"),
                          tmp_path / "state", policies)

    daemon = loop.run_until_complete(make())

    def reload():
        try:
            return loop.run_until_complete(daemon.reload_command())
        finally:
            daemon.source.close()
            loop.close()

    daemon.reload_now = reload
    return daemon


def _reload(daemon):
    return daemon.reload_now()


def test_a_reload_reads_the_same_directory_and_keeps_the_version_when_nothing_changed(tmp_path):
    policies = tmp_path / "cfg" / "hush" / "policies"
    policies.mkdir(parents=True)
    (policies / "a.yaml").write_text(POLICY)
    daemon = _daemon(tmp_path, policies)
    first = daemon.policyset.version
    result = _reload(daemon)
    assert result["ok"] and result["version"] == first


def test_an_edit_in_the_directory_reloads(tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.yaml").write_text(POLICY)
    daemon = _daemon(tmp_path, policies)
    before = daemon.policyset.version
    (policies / "a.yaml").write_text(POLICY.replace("block", "allow"))
    result = _reload(daemon)
    assert result["ok"] and result["version"] != before
    assert daemon.policyset.policies["a"].default.name == "allow"


def test_a_parent_renamed_and_a_new_directory_in_its_place_is_refused(tmp_path):
    """F1: the policy directory is read-only to a launched app, the one above it is not."""
    import os

    policies = tmp_path / "cfg" / "hush" / "policies"
    policies.mkdir(parents=True)
    (policies / "a.yaml").write_text(POLICY)
    daemon = _daemon(tmp_path, policies)
    before = daemon.policyset
    os.rename(tmp_path / "cfg" / "hush", tmp_path / "cfg" / "hush.old")
    policies.mkdir(parents=True)
    (policies / "a.yaml").write_text(POLICY.replace("block", "allow"))
    result = _reload(daemon)
    assert not result["ok"] and not result["examples_failed"]
    assert daemon.holder.current is before and before.policies["a"].default.name == "block"
    assert "no longer leads to the policy directory hush started with" in result["errors"][0]
    assert not daemon.reloads[-1].ok and daemon.reloads[-1].errors == result["errors"]  # hush status last_reload


def test_a_symbolic_link_re_pointed_is_a_refused_reload_not_a_silent_one(tmp_path):
    """`policies -> v1` swapped to `-> v2` (a deploy): the reload must not go on reading v1 and say
    it is in force; it is refused, and a restart reads v2."""
    import os

    for version, action in (("v1", "allow"), ("v2", "block")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "a.yaml").write_text(POLICY.replace("block", action))
    link = tmp_path / "policies"
    link.symlink_to(tmp_path / "v1")
    daemon = _daemon(tmp_path, link)
    assert daemon.policyset.policies["a"].default.name == "allow"
    (tmp_path / "next").symlink_to(tmp_path / "v2")
    os.replace(tmp_path / "next", link)  # atomic, as deploy tools swap it
    result = _reload(daemon)
    assert not result["ok"] and "no longer leads to the policy directory" in result["errors"][0]
    assert daemon.policyset.policies["a"].default.name == "allow"  # kept, and said so: not "ok"


def test_a_policy_directory_removed_is_a_refused_reload(tmp_path):
    import shutil

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.yaml").write_text(POLICY)
    daemon = _daemon(tmp_path, policies)
    shutil.rmtree(policies)
    result = _reload(daemon)
    assert not result["ok"] and "is gone" in result["errors"][0]


def test_a_policy_file_saved_by_renaming_a_new_one_over_it_reloads(tmp_path):
    """--policies FILE: the file's directory is what is compared, so an editor's save still reloads."""
    import os

    policy = tmp_path / "cfg" / "a.yaml"
    policy.parent.mkdir()
    policy.write_text(POLICY)
    daemon = _daemon(tmp_path, policy)
    before = daemon.policyset.version
    (tmp_path / "cfg" / "a.yaml.new").write_text(POLICY.replace("block", "allow"))
    os.rename(tmp_path / "cfg" / "a.yaml.new", policy)
    result = _reload(daemon)
    assert result["ok"] and result["version"] != before


def test_a_policy_file_whose_directory_was_replaced_is_refused(tmp_path):
    import os

    policy = tmp_path / "cfg" / "hush" / "a.yaml"
    policy.parent.mkdir(parents=True)
    policy.write_text(POLICY)
    daemon = _daemon(tmp_path, policy)
    os.rename(tmp_path / "cfg" / "hush", tmp_path / "cfg" / "hush.old")
    policy.parent.mkdir()
    policy.write_text(POLICY.replace("block", "allow"))
    result = _reload(daemon)
    assert not result["ok"] and daemon.policyset.policies["a"].default.name == "block"


def test_hosts_from_next_to_the_policy_is_read_through_the_same_directory(tmp_path):
    policies = tmp_path / "policies"
    (policies / "lists").mkdir(parents=True)
    (policies / "lists" / "ads.txt").write_text("ads.example\n")
    (policies / "a.yaml").write_text(POLICY + "rules:\n  - {match: {hosts_from: lists/ads.txt}, action: allow}\n")
    daemon = _daemon(tmp_path, policies)
    first = daemon.policyset.version
    (policies / "lists" / "ads.txt").write_text("ads.example\ntrack.example\n")
    result = _reload(daemon)
    assert result["ok"] and result["version"] == first  # the version is the policy files' (as at the start)
    rule = daemon.policyset.policies["a"].rules[0]
    assert "track.example" in rule.match.hosts


def test_files_the_policies_read_outside_their_directory_are_guarded_too(tmp_path, monkeypatch):
    """A hosts_from list by absolute path, a policy file that links out: read-only in launches as well."""
    import asyncio
    import os

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))

    lists, policies = tmp_path / "lists", tmp_path / "policies"
    lists.mkdir()
    policies.mkdir()
    (lists / "ads.txt").write_text("ads.example\n")
    (lists / "b.yaml").write_text("app: b\ndefault: block\n")
    (policies / "b.yaml").symlink_to(lists / "b.yaml")
    (policies / "near.txt").write_text("near.example\n")
    (policies / "a.yaml").write_text(POLICY + f"rules:\n  - {{match: {{hosts_from: [{lists}/ads.txt, near.txt]}}, "
                                     "action: allow}\n")
    daemon = _daemon(tmp_path, policies)

    async def start_and_reload():
        await daemon._guard_outside()
        started = list(daemon.launches.guard["readonly"])
        (lists / "ads.txt").unlink()
        (policies / "a.yaml").write_text(POLICY)
        await daemon.reload("test")
        return started, list(daemon.launches.guard["readonly"])

    loop = asyncio.new_event_loop()
    try:
        started, reloaded = loop.run_until_complete(start_and_reload())
    finally:
        daemon.source.close()
        loop.close()
    real = os.path.realpath
    assert started == [real(policies), real(lists / "ads.txt"), real(lists / "b.yaml")]
    assert reloaded == [real(policies), real(lists / "b.yaml")]  # what the new set reads


def test_the_guard_keeps_the_config_from_a_launched_app(tmp_path, monkeypatch):
    import os

    from hush.daemon.config import Config
    from hush.daemon.run import config_guard

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    config = tmp_path / "elsewhere.yaml"
    config.write_text("log_level: info\n")
    assert config_guard(Config()) == []  # no config file, no ~/.config/hush
    (tmp_path / "xdg" / "hush").mkdir(parents=True)
    assert config_guard(Config(file=config)) == [str(config), os.path.realpath(tmp_path / "xdg" / "hush")]


def test_the_daemons_guard_names_its_config(tmp_path, monkeypatch):
    import asyncio

    from hush.daemon import run
    from hush.daemon.config import Config
    from hush.daemon.policy.loader import load_checked

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.yaml").write_text(POLICY)
    config = tmp_path / "config.yaml"
    config.write_text("log_level: info\n")

    async def make():
        daemon = run.Daemon(load_checked([policies]), Config(file=config), tmp_path / "state", policies)
        daemon.source.close()
        return daemon.launches.guard

    guard = asyncio.run(make())
    assert guard["readonly"] == [str(policies.resolve()), str(config.resolve())]


def test_the_open_files_limit_is_raised_to_the_hard_one(monkeypatch):
    import resource

    from hush.daemon import run

    limits = {"now": (1024, 524288)}
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: limits.update(now=value))
    assert run.raise_fd_limit() == 524288 and limits["now"] == (524288, 524288)
    assert run.raise_fd_limit() == 524288  # already there: nothing to do


def test_the_real_soft_limit_is_raised(monkeypatch):
    import resource

    from hush.daemon import run

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard limit above 256")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert run.raise_fd_limit() == hard and resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_serve_raises_the_limit_before_the_daemon_opens_anything():
    import inspect

    from hush.daemon import run

    source = inspect.getsource(run.serve)
    assert source.index("raise_fd_limit()") < source.index("Daemon(policyset")


def test_nothing_of_hush_selects_on_descriptors():
    """select() fails on a descriptor past 1023, which a raised limit allows: poll (or asyncio's epoll) only."""
    from pathlib import Path

    import hush.daemon

    root = Path(hush.daemon.__file__).parent.parent
    users = [str(p.relative_to(root)) for d in ("daemon", "addons") for p in (root / d).rglob("*.py")
             if "select.select(" in p.read_text() or "SelectSelector" in p.read_text()]
    assert users == []
