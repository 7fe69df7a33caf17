"""A launched app cannot change the policies (or the config) the daemon reads.

The red team's F1: the policy directory was read-only inside a launch, but the
directory above it was not, so the app moved it aside, made a new policy
directory where the daemon looks, and the daemon's watcher loaded the app's
``default: allow``; with ``--policies FILE`` the file itself was writable.  Two
layers now: inside the launch every directory above the policies is a mount
point (a rename fails with EBUSY) and a policy file is read-only too, by its
directory (a bind of the file itself is detached when an editor outside renames
a new file over it); and the daemon reloads only the directory it started with
(a path that now leads elsewhere is a refused reload, shown by ``hush status``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from .world import BLOCKED_IP, CURL_ARGS, NOBODY, PYTHON, until

pytestmark = pytest.mark.integration

POLICY = """\
    app: x
    default: block
    rules:
      - {match: {host: allowed.test}, action: allow}
"""
ALLOW = "app: x\ndefault: allow\n"

ATTACK = """\
    import errno, os, signal, sys
    target, daemon = sys.argv[1], int(sys.argv[2])  # the policy directory or file; the daemon's pid
    ALLOW = "app: x\\ndefault: allow\\n"

    def attempt(what, fn):
        try:
            fn()
            print("DONE:", what)
        except OSError as e:
            print("refused:", what, errno.errorcode.get(e.errno, e.errno))

    def write(path, text):
        with open(path, "w") as f:
            f.write(text)

    def replace(path, text):  # as an editor saves: a new file renamed over the old one
        write(path + ".new", text)
        os.rename(path + ".new", path)

    above = os.path.dirname(target)  # the directory above the policy directory, or the file's own
    if os.path.isdir(target):
        attempt("write in the policy directory", lambda: write(os.path.join(target, "y.yaml"), ALLOW))
    else:
        attempt("write the policy file", lambda: write(target, ALLOW))
        attempt("rename a new file over the policy file", lambda: replace(target, ALLOW))
    for config in sys.argv[3:]:
        attempt(f"write the config {config}", lambda: write(config, "policies: /tmp\\n"))
    attempt("rename the policies", lambda: os.rename(target, target + ".old"))
    attempt("rename the directory above them", lambda: os.rename(above, above + ".old"))

    def new_policies():  # where the daemon looks, made anew (or written, if still there)
        os.makedirs(above, exist_ok=True)
        if os.path.isdir(target) or target.endswith(os.sep):
            write(os.path.join(target, "x.yaml"), ALLOW)
        else:
            write(target, ALLOW)
    attempt("new policies where the daemon looks", new_policies)
    os.kill(daemon, signal.SIGHUP)  # same uid, no PID namespace: the app can signal the daemon
    print("hup sent")
"""


def tree(world, *parts: str) -> str:
    """``world.dir(parts[0])/parts[1]/…``, every directory nobody's (the user's: as ~/.config/hush/policies)."""
    path = world.dir(parts[0])
    for part in parts[1:]:
        path = path / part
        path.mkdir(mode=0o755)
        os.chown(path, NOBODY, NOBODY)
    return str(path)


def write(path: str, text: str, owner: int = NOBODY) -> None:
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    os.chmod(path, 0o644)
    os.chown(path, owner, owner)


def attack(h, target: str, *configs: str) -> str:
    res = h.launch("x", PYTHON, "-c", textwrap.dedent(ATTACK), target, str(h.pid), *configs)
    out = res.stdout.decode()
    assert res.returncode == 0 and "hup sent" in out, (out, res.stderr.decode())
    return out


def blocked_stays_blocked(h, far_origin, path: str) -> None:
    res = h.launch("x", "curl", *CURL_ARGS, far_origin.url(path, host="blocked.test"))
    assert b"origin" not in res.stdout, res
    assert far_origin.accepts == [] and far_origin.requests == []
    rows = [r for r in h.wait_rows(lambda r: r["host"] == "blocked.test", 30, "the refusal's row")
            if r["host"] == "blocked.test"]  # the writer batches: the row may follow curl's exit
    assert {r["decision"] for r in rows} == {"block"}, rows


def settle(h, reloads: int, timeout: float = 30) -> dict:
    """The status once the daemon has done at least ``reloads`` reloads and its watcher has had time
    to see what changed (it polls every second and waits 0.5 s for changes to stop)."""
    time.sleep(2.5)
    return until(lambda: (st := h.status())["reloads"] >= reloads and st, timeout, f"{reloads} reload(s)")


def test_the_app_cannot_move_the_policy_directory_aside(world, far, whush):
    """F1: rename the directory above the read-only policy directory, make a new one, SIGHUP."""
    blocked = far.origin(BLOCKED_IP)
    policies = tree(world, "cfg", "hush", "policies")
    write(f"{policies}/x.yaml", POLICY)
    h = whush({"x": POLICY}, args=("--policies", policies))
    version = h.status()["policies"]["version"]
    out = attack(h, policies)
    assert "DONE" not in out, out  # every attempt refused, the renames with EBUSY
    assert "refused: rename the directory above them EBUSY" in out, out
    st = settle(h, 1)  # the SIGHUP: a reload of the same, unchanged directory
    assert st["policies"]["version"] == version and st["last_reload"]["ok"], st["last_reload"]
    blocked_stays_blocked(h, blocked, "/after-move")


def test_the_daemon_refuses_a_policy_directory_moved_under_it(world, far, whush):
    """Should the app get past the namespace (or anything else move it), the daemon does not follow a
    policy path that now leads to another directory: the reload is refused, hush status says why."""
    blocked = far.origin(BLOCKED_IP)
    policies = tree(world, "cfg", "hush", "policies")
    write(f"{policies}/x.yaml", POLICY)
    h = whush({"x": POLICY}, args=("--policies", policies))
    version = h.status()["policies"]["version"]
    hush = os.path.dirname(policies)
    os.rename(hush, hush + ".old")  # what F1's app did, done here from outside any launch
    os.makedirs(policies)
    os.chmod(policies, 0o755)
    write(f"{policies}/x.yaml", ALLOW)
    st = settle(h, 1)  # the watcher sees the new files and tries
    last = st["last_reload"]
    assert not last["ok"] and last["trigger"] == "policy files changed", last
    assert "no longer leads to the policy directory hush started with" in last["errors"][0], last
    assert st["policies"]["version"] == version
    res = h.cli("reload", "--state-dir", str(h.state), text=True)
    assert res.returncode == 3 and "no longer leads to the policy directory" in res.stderr, (res.stdout, res.stderr)
    assert "refused" in h.log and "keeping policy set" in h.log
    blocked_stays_blocked(h, blocked, "/after-move")


def test_a_policy_file_and_the_config_are_read_only_to_the_app_and_editable_outside(world, far, whush):
    """F1b: ``--policies FILE``: the app can neither write it nor rename a file over it (and the config
    file, read at the next start, is read-only too); the SIGHUP it sends reloads the same file.  An edit
    from outside the launch, saved as editors do (a new file renamed over the old), still reloads."""
    blocked = far.origin(BLOCKED_IP)
    cfg = tree(world, "cfg", "hush")
    policy = f"{cfg}/x.yaml"
    write(policy, POLICY)
    h = whush({"x": POLICY}, config="log_level: info\n", args=("--policies", policy))
    config = str(h.dir / "config.yaml")
    os.chown(config, NOBODY, NOBODY)  # the user's, as ~/.config/hush/config.yaml is
    version = h.status()["policies"]["version"]
    out = attack(h, policy, config)
    assert "DONE" not in out, out
    assert "refused: rename the directory above them EBUSY" in out, out
    assert "refused: write the policy file EROFS" in out and f"refused: write the config {config} EROFS" in out, out
    st = settle(h, 1)
    assert st["policies"]["version"] == version and st["last_reload"]["ok"], st["last_reload"]
    blocked_stays_blocked(h, blocked, "/after-file")
    assert Path(config).read_text() == "log_level: info\n"
    # the user, outside: an editor's save of the same file reloads (its directory is what is compared)
    write(policy + ".new", POLICY + "      - {match: {host: other.test}, action: allow}\n")
    os.rename(policy + ".new", policy)
    os.kill(h.pid, signal.SIGHUP)
    st = until(lambda: (s := h.status())["policies"]["version"] != version and s, 30, "the edit reloaded")
    assert st["last_reload"]["ok"] and st["last_reload"]["trigger"] == "SIGHUP", st["last_reload"]


def test_an_edit_outside_the_launch_reloads_through_the_watcher(world, far, whush):
    h = whush({"x": POLICY})
    version = h.status()["policies"]["version"]
    write(str(h.policies / "x.yaml"), POLICY + "      - {match: {host: other.test}, action: allow}\n")
    st = until(lambda: (s := h.status())["policies"]["version"] != version and s, 30, "the edit reloaded")
    assert st["last_reload"]["ok"] and st["last_reload"]["trigger"] == "policy files changed", st["last_reload"]


def test_a_hosts_from_list_outside_the_policy_directory_is_read_only_too(world, far, whush):
    """An allow list the policy names by absolute path: the app cannot add the blocked host to it."""
    blocked = far.origin(BLOCKED_IP)
    lists = tree(world, "lists")
    write(f"{lists}/allow.txt", "allowed.test\n")
    h = whush({"x": POLICY + f"      - {{match: {{hosts_from: {lists}/allow.txt}}, action: allow}}\n"})
    until(lambda: "read-only in launches too" in h.log, 10, "the list guarded")
    res = h.launch("x", PYTHON, "-c", textwrap.dedent("""\
        import errno, os, signal, sys
        try:
            with open(sys.argv[1], "a") as f:
                f.write("blocked.test\\n")
            print("DONE: appended")
        except OSError as e:
            print("refused:", errno.errorcode[e.errno])
        os.kill(int(sys.argv[2]), signal.SIGHUP)
        """), f"{lists}/allow.txt", str(h.pid))
    assert res.stdout.decode() == "refused: EROFS\n", (res.stdout, res.stderr)
    settle(h, 1)
    blocked_stays_blocked(h, blocked, "/after-list")


SAVED_THEN_ATTACK = """\
    import errno, os, signal, sys
    target, daemon = sys.argv[1], int(sys.argv[2])
    ALLOW = "app: x\\ndefault: allow\\n"
    print("ready", flush=True)
    sys.stdin.readline()  # the user has saved the file, outside, while this launch runs

    def attempt(what, fn):
        try:
            fn()
            print("DONE:", what)
        except OSError as e:
            print("refused:", what, errno.errorcode.get(e.errno, e.errno))

    def write(path, text):
        with open(path, "w") as f:
            f.write(text)

    attempt("write the saved policy file", lambda: write(target, ALLOW))
    attempt("create a file in its directory", lambda: write(target + ".new", ALLOW))
    os.kill(daemon, signal.SIGHUP)
    print("hup sent", flush=True)
"""


def test_a_policy_file_saved_outside_while_a_launch_runs_stays_read_only_inside(world, far, whush):
    """A bind of the file itself is detached, in every other namespace, when an editor outside renames a
    new file over it: the launch would then see the saved file, writable.  The file's directory is what
    is made read-only, and a directory bind survives renames inside it."""
    blocked = far.origin(BLOCKED_IP)
    own = tree(world, "cfg", "hush")
    policy = f"{own}/x.yaml"
    write(policy, POLICY)
    h = whush({"x": POLICY}, args=("--policies", policy))
    version = h.status()["policies"]["version"]
    app = h.launch_popen("x", PYTHON, "-c", textwrap.dedent(SAVED_THEN_ATTACK), policy, str(h.pid),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert app.stdout.readline() == b"ready\n", app.stderr.read() if app.poll() is not None else ""
        saved = POLICY + "      - {match: {host: other.test}, action: allow}\n"  # still blocks blocked.test
        write(policy + ".swp", saved)  # as vim saves: a new file, renamed over the old one
        os.rename(policy + ".swp", policy)  # (no watcher for a FILE: the app's SIGHUP reloads it)
        out, err = app.communicate(b"go\n", timeout=60)
    finally:
        world.kill_tree(app)
    out = out.decode()
    assert app.returncode == 0 and "hup sent" in out, (out, err.decode())
    assert "DONE" not in out, out
    assert "refused: write the saved policy file EROFS" in out, out
    assert "refused: create a file in its directory EROFS" in out, out
    st = settle(h, 1)  # the SIGHUP's reload reads what the user saved, and only that
    assert st["last_reload"]["ok"] and st["policies"]["version"] != version, st["last_reload"]
    assert Path(policy).read_text() == textwrap.dedent(saved)
    blocked_stays_blocked(h, blocked, "/after-save")


def test_a_policy_file_directly_in_home_fails_the_launch_closed(world, far, whush):
    """Its directory cannot be made read-only (that would break every app), nor can the file alone: the
    launch is refused in one line that says which file and what to do; the command never runs."""
    policy = str(world.home / "hush-x.yaml")
    write(policy, POLICY)
    h = whush({"x": POLICY}, args=("--policies", policy))
    marker = world.dir("marker") / "ran"
    res = h.launch("x", "touch", str(marker))
    err = res.stderr.decode()
    assert res.returncode == 1 and err.count("\n") == 1, (res.returncode, err)
    assert policy in err and "your home directory" in err and "directory of its own" in err, err
    assert not marker.exists()
    os.unlink(policy)
