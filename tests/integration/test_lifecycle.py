"""The daemon's life, as a user meets it: one daemon per state dir, `hush stop`
and `hush reload`, what stopping says, and errors in one clear line each."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

from .harness import free_port, wait_for
from .procnet import children

pytestmark = pytest.mark.integration

ALLOW = "app: a\nlisten: {port}\ndefault: allow\n"
HOLD = "app: a\nlisten: {port}\ndefault: allow\nrules:\n  - {{match: {{path: /hold}}, action: delay, delay: 60s}}\n"
# A tor that can never bootstrap (no reachable authority): enough to start, watch and stop it.
DEAD_TOR = ("tor:\n  torrc:\n    - TestingTorNetwork 1\n"
            "    - DirAuthority dead orport={dead} no-v2 v3ident={a} 127.0.0.1:{dead} {b}\n")
TOR_POLICY = "app: a\nlisten: {port}\ndefault: tor\n"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) (\S+): (.*)$")


def dead_tor() -> str:
    return DEAD_TOR.format(dead=free_port(), a="A" * 40, b="B" * 40)


def cli(*args, state) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hush.daemon.cli", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=120)


def messages(log: str, level: str | None = None, loggers: tuple[str, ...] = ()) -> list[str]:
    """The log's messages (``logger: message``), without their timestamps."""
    out = []
    for line in log.splitlines():
        m = LOG_LINE.match(line)
        if m and (level is None or m[1] == level) and (not loggers or m[2] in loggers):
            out.append(f"{m[2]}: {m[3]}")
    return out


def after(items: list[str], first: str) -> list[str]:
    return items[next(i for i, x in enumerate(items) if x.startswith(first)):]


def stopping(log: str) -> list[str]:
    """What the daemon and its tor said from ``stopping:`` on (the pipeline's addons may log too)."""
    return after(messages(log, loggers=("hush", "hush.tor")), "hush: stopping")


# -- 1. one daemon per state dir ------------------------------------------------------------

def test_a_second_daemon_on_the_same_state_dir_exits_at_once_touching_nothing(hush):
    first = hush({"a": TOR_POLICY.format(port=free_port())}, config=dead_tor())
    port_file = first.state / "tor" / "control-port"
    wait_for(lambda: port_file.exists() and port_file.read_text().strip(), message="tor's control port file")
    sockets = [first.state / "control.sock", first.state / "launch.sock"]
    before = [os.stat(p).st_ino for p in sockets], port_file.read_text()  # tor itself may rewrite its file
    second = hush({"a": ALLOW.format(port=free_port())}, config=dead_tor(), state=first.state, ready=False)
    assert second.wait_exit() == 1
    # the one line it prints: nothing before it (not even where the policies come from)
    assert second.log.strip().splitlines() == [f"hush is already running with this state dir (pid {first.proc.pid})"]
    assert messages(second.log, "ERROR") == [] and "Traceback" not in second.log
    assert not children(second.proc.pid, "tor")
    assert ([os.stat(p).st_ino for p in sockets], port_file.read_text()) == before
    assert first.status()["pid"] == first.proc.pid  # still reachable
    assert first.stop() == 0


def test_the_lock_goes_with_the_daemon_however_it_ends(hush):
    first = hush({"a": ALLOW.format(port=free_port())})
    first.proc.kill()
    first.wait_exit()
    again = hush({"a": ALLOW.format(port=free_port())}, state=first.state)  # a stale control.sock is replaced
    assert again.status()["pid"] == again.proc.pid
    assert again.stop() == 0


def test_ports_taken_by_another_program_one_line_each(hush):
    with socket.socket() as s1, socket.socket() as s2:
        for s in (s1, s2):
            s.bind(("127.0.0.1", 0))
            s.listen()
        p1, p2 = s1.getsockname()[1], s2.getsockname()[1]
        h = hush({"a": ALLOW.format(port=p1), "b": ALLOW.replace("app: a", "app: b").format(port=p2)}, ready=False)
        assert h.wait_exit() == 4
    why = "another program is using this port; stop it, or change 'listen' in the policy"
    assert sorted(messages(h.log, "ERROR")) == [f"hush: cannot listen for app a on 127.0.0.1:{p1}: {why}",
                                                f"hush: cannot listen for app b on 127.0.0.1:{p2}: {why}"]
    assert "Traceback" not in h.log and "Errno" not in h.log and "errno" not in h.log
    assert not any(m.startswith(("hush: stopping", "hush: stopped")) for m in messages(h.log))


# -- 2. hush stop, hush reload ---------------------------------------------------------------

def test_stop_and_reload_without_a_daemon_exit_7(tmp_path):
    state = tmp_path / "state"
    for command in ("stop", "reload"):
        res = cli(command, state=state)
        assert res.returncode == 7
        assert res.stderr == (f"hush {command}: hush is not running with --state-dir {state} "
                              f"(no daemon at {state / 'control.sock'})\n")


def test_stop_waits_for_the_daemon_and_says_what_stopping_did(hush):
    h = hush({"a": ALLOW.format(port=free_port())})
    res = cli("stop", state=h.state)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"stopped hush (pid {h.proc.pid})\n", "")
    assert h.wait_exit() == 0  # its lock released when `hush stop` returned: only the interpreter's exit was left
    assert stopping(h.log) == [
        "hush: stopping: 0 held flows answered", "hush: audit: 0 records written", "hush: stopped"]
    assert not (h.state / "control.sock").exists()


def test_reload_says_whether_the_new_set_was_taken_or_refused(hush):
    port = free_port()
    h = hush({"a": ALLOW.format(port=port)})
    old = h.status()["policies"]["version"]
    res = cli("reload", state=h.state)
    assert (res.returncode, res.stdout) == (0, f"reloaded: policy set {old} (unchanged)\n")

    (h.policies / "a.yaml").write_text(ALLOW.replace("allow", "block").format(port=port))
    res = cli("reload", state=h.state)
    new = h.status()["policies"]["version"]
    assert new != old
    assert (res.returncode, res.stdout, res.stderr) == (0, f"reloaded: policy set {new} replaces {old}\n", "")

    (h.policies / "a.yaml").write_text(f"app: a\nlisten: {port}\ndefault: nope\n")
    res = cli("reload", state=h.state)
    assert res.returncode == 3 and res.stdout == ""
    assert res.stderr == (f"reload refused, keeping policy set {new}; 1 error:\n"
                          f"{h.policies / 'a.yaml'}:3:10: unknown action 'nope' "
                          "(expected one of: allow, ask, block, debounce, delay, learn, passthrough, strip, tor)\n")
    assert h.status()["policies"]["version"] == new
    assert h.stop() == 0


# -- 3. what stopping says ------------------------------------------------------------------

def test_stopping_answers_held_flows_and_says_so_in_order(hush, origin):
    port = free_port()
    h = hush({"a": HOLD.format(port=port)})
    replies: list[bytes] = []

    def held():
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(f"GET {origin.url('/hold')} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            replies.append(s.recv(65536))

    client = threading.Thread(target=held)
    client.start()
    wait_for(lambda: h.held() == 1, message="one flow held")
    assert h.stop() == 0
    client.join(30)
    assert not client.is_alive()  # answered or closed at shutdown, not left hanging
    assert replies[0] == b"" or replies[0].startswith(b"HTTP/1.1 503")  # either way nothing was sent
    assert origin.accepts == []
    assert stopping(h.log) == [
        "hush: stopping: 1 held flow answered", "hush: audit: 1 record written", "hush: stopped"]


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_stopping_with_tor_is_quiet_and_final(hush, how):
    h = hush({"a": TOR_POLICY.format(port=free_port())}, config=dead_tor())
    wait_for(lambda: "tor bootstrapping: tor" in h.log, message="tor launched")
    [tor] = children(h.proc.pid, "tor")
    if how == "Ctrl-C":  # the terminal signals the whole foreground process group
        os.kill(tor, signal.SIGINT)
        os.kill(h.proc.pid, signal.SIGINT)
    else:
        h.proc.send_signal(signal.SIGTERM)
    assert h.wait_exit() == 0
    assert stopping(h.log) == [
        "hush: stopping: 0 held flows answered", "hush: audit: 0 records written",
        "hush.tor: tor stopped", "hush: stopped"]
    assert messages(h.log, "WARNING") == [] and messages(h.log, "ERROR") == []
    assert not os.path.exists(f"/proc/{tor}")  # stopped and reaped by hush


def test_stopping_while_tor_is_being_launched_leaves_no_tor(hush):
    h = hush({"a": TOR_POLICY.format(port=free_port())}, config=dead_tor())  # ready before tor's bootstrap
    h.proc.send_signal(signal.SIGTERM)
    assert h.wait_exit() == 0
    tail = stopping(h.log)
    assert tail[-2:] == ["hush.tor: tor stopped", "hush: stopped"]
    assert not any("bootstrap" in m or "starting" in m or "down" in m for m in tail)


# -- 4. one clear line ----------------------------------------------------------------------

def test_a_state_dir_that_is_a_file(hush, tmp_path):
    state = tmp_path / "state-file"
    state.write_text("not a directory")
    h = hush({"a": ALLOW.format(port=free_port())}, state=state, ready=False)
    assert h.wait_exit() == 1
    assert h.log.splitlines()[-1] == (f"hush: not starting, the state directory {state} is a file, "
                                      "not a directory; remove it or choose another --state-dir")
    assert "Traceback" not in h.log and "Errno" not in h.log


def test_a_policy_dir_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-policies"
    res = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "run", "--policies", str(missing),
                          "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 6
    assert res.stderr == f"hush: the policy directory {missing} does not exist (from --policies)\n"
    assert not (tmp_path / "state").exists()


def test_a_tor_control_port_that_never_answers_does_not_hang_the_daemon(hush):
    """Pointed at something that accepts and never answers like tor (here: hush's own
    listener, waiting for the rest of a request), the attach gives up within its
    deadline and SIGTERM still stops the daemon."""
    port = free_port()
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: tor\n"},
             config=f"tor:\n  mode: attach\n  control: 127.0.0.1:{port}\n")
    wait_for(lambda: "tor's control port" in h.log, message="the attach giving up")
    assert h.stop() == 0  # within wait_exit's bound: before the probe, stem waited forever and so did the stop
