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
        monkeypatch.setattr(run, "load_checked", broken)
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
