"""A virtual X display (Xvfb) and a private D-Bus session bus for GUI clients in tests,
with every process they start killed at the end.

    with Display(user=Account.of("hushdev")) as d:
        gajim = d.spawn(["gajim"], env={"HOME": home})
        d.wait_window("Gajim")
        d.xdotool("key", "ctrl+q")

Every process is started through ``setpriv --pdeathsig KILL`` in its own process group,
as ``user`` where one is given, and carries ``HUSH_TEST_DISPLAY=<token>`` in its
environment.  ``close()`` (and leaving the ``with``) sends SIGTERM to each group, then
SIGKILL to every process that still carries the token — a client's forked helpers
included, whatever group or session they moved to — and waits until none is left.
If the test process itself dies, ``--pdeathsig`` takes the direct children with it.

The bus has no service directories: nothing is activated behind the test's back
(no dconf, no at-spi, no notification daemon), so nothing outlives it unseen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TOKEN_VAR = "HUSH_TEST_DISPLAY"

BUS_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@dataclasses.dataclass(frozen=True)
class Account:
    """A local user a client runs as (GUI clients such as Gajim refuse root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def of(cls, name: str, uid: int | None = None) -> Account:
        """The user ``name``; created (``useradd``, no home; with ``uid`` if that one is free)
        if it does not exist and we are root."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            if os.geteuid() != 0:
                raise RuntimeError(f"user {name!r} does not exist and only root can create it") from None
            cmd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
            made = subprocess.run([*cmd, *(["--uid", str(uid)] if uid is not None else []), name],
                                  capture_output=True, text=True, timeout=30)
            if made.returncode != 0 and uid is not None:  # that uid is someone else's here: any free one
                made = subprocess.run([*cmd, name], capture_output=True, text=True, timeout=30)
            if made.returncode != 0:
                raise RuntimeError(f"useradd {name} failed: {made.stderr.strip()}") from None
            entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid)

    def owned_dir(self, prefix: str) -> Path:
        """A new directory in the temp dir, 0700 and owned by this user (pytest's tmp_path
        is root's 0700 tree, which another user cannot enter)."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        os.chown(path, self.uid, self.gid)
        return path

    def chown_tree(self, path: Path) -> None:
        for root, dirs, files in os.walk(path):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), self.uid, self.gid)
        os.lchown(path, self.uid, self.gid)


def _as(user: Account | None) -> list[str]:
    cmd = [shutil.which("setpriv") or "setpriv", "--pdeathsig", "KILL"]
    if user is not None and (os.geteuid() != user.uid):
        cmd += ["--reuid", str(user.uid), "--regid", str(user.gid), "--clear-groups"]
    return [*cmd, "--"]


def _pids_with(token: str) -> list[int]:
    """The processes whose environment carries ``TOKEN_VAR=token``."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:  # gone, or a zombie
            continue
    return found


class Display:
    """Xvfb on a display number it picks itself (``-displayfd``), a private session bus
    run as ``user``, and the processes started with ``spawn``.  ``env`` is what a client
    needs to reach both."""

    def __init__(self, user: Account | None = None, size: str = "1280x1024x24"):
        self.user = user
        self.token = secrets.token_hex(8)
        self.procs: list[subprocess.Popen] = []
        self.dir = Path(tempfile.mkdtemp(prefix="hush-display-"))
        if user is not None:
            os.chown(self.dir, user.uid, user.gid)
        self.number: int | None = None
        self.bus_address: str | None = None
        self._size = size

    # -- starting ----------------------------------------------------------------------

    def start(self, timeout: float = 20) -> Display:
        try:
            self._start_xvfb(timeout)
            self._start_bus(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Display:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _start_xvfb(self, timeout: float) -> None:
        r, w = os.pipe()
        try:
            self._popen(["Xvfb", "-displayfd", str(w), "-screen", "0", self._size, "-nolisten", "tcp",
                         "-noreset"], user=None, pass_fds=(w,), log="xvfb.log")
        finally:
            os.close(w)
        try:
            line = self._read_line(r, timeout, "Xvfb to name its display")
        finally:
            os.close(r)
        self.number = int(line)

    def _start_bus(self, timeout: float) -> None:
        path = self.dir / "bus"
        config = self.dir / "bus.conf"
        config.write_text(BUS_CONFIG.format(path=path))
        r, w = os.pipe()
        try:
            self._popen(["dbus-daemon", "--config-file", str(config), "--nofork", "--nopidfile",
                         "--print-address", str(w)], user=self.user, pass_fds=(w,), log="dbus.log")
        finally:
            os.close(w)
        try:
            self.bus_address = self._read_line(r, timeout, "dbus-daemon to print its address")
        finally:
            os.close(r)

    def _read_line(self, fd: int, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"gave up after {timeout}s waiting for {what}:\n{self.logs()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"{what}: it exited first:\n{self.logs()}")
            buf += chunk
        return buf.split(b"\n", 1)[0].decode().strip()

    def _popen(self, cmd: Sequence[str], user: Account | None, env: Mapping[str, str] | None = None,
               log: str | None = None, **kw) -> subprocess.Popen:
        full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **(env or {}), TOKEN_VAR: self.token}
        out = open(self.dir / log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
        try:
            proc = subprocess.Popen([*_as(user), *cmd], env=full_env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, **kw)
        finally:
            if log:
                out.close()  # the child has its own copy
        self.procs.append(proc)
        return proc

    # -- using it ----------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """DISPLAY and the bus, and what keeps GTK from activating services the bus does not have."""
        assert self.number is not None and self.bus_address, "start() the display first"
        return {
            "DISPLAY": f":{self.number}",
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
            "NO_AT_BRIDGE": "1",  # no accessibility bus
            "GSETTINGS_BACKEND": "memory",  # no dconf service
            "GIO_USE_VFS": "local",  # no gvfs
        }

    def spawn(self, cmd: Sequence[str], env: Mapping[str, str] | None = None, log: str | None = None,
              user: Account | bool | None = True, **kw) -> subprocess.Popen:
        """Start ``cmd`` on this display, as the display's user (``user=True``), as another
        (an Account), or as the caller (``user=None``); its output goes to ``log`` in the
        display's dir (``logs()`` shows it).  Killed by ``close()``."""
        who = self.user if user is True else (user or None)
        return self._popen(cmd, user=who, env={**self.env, **(env or {})}, log=log, **kw)

    def run(self, *cmd: str, timeout: float = 15) -> subprocess.CompletedProcess:
        """Run a short X tool (xdotool, xwininfo) on this display as the caller."""
        return subprocess.run(cmd, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.env},
                              capture_output=True, text=True, timeout=timeout)

    def xdotool(self, *args: str) -> str:
        res = self.run("xdotool", *args)
        return res.stdout

    def windows(self, name: str) -> list[str]:
        """The ids of the visible windows whose title matches ``name`` (a regular expression)."""
        return self.xdotool("search", "--onlyvisible", "--name", name).split()

    def wait_window(self, name: str, timeout: float = 40, alive: Callable[[], object] | None = None) -> str:
        """The first visible window whose title matches ``name``; fails after ``timeout`` s,
        or as soon as ``alive()`` returns false (the client exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.windows(name)
            if found:
                return found[0]
            if alive is not None and not alive():
                raise AssertionError(f"the client exited before a window {name!r} appeared:\n{self.logs()}")
            time.sleep(0.2)
        raise AssertionError(f"no window {name!r} after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for path in sorted(self.dir.glob("*.log")):
            text = path.read_text(errors="replace")
            out.append(f"--- {path.name} ---\n{text[-6000:]}")
        return "\n".join(out)

    # -- stopping ----------------------------------------------------------------------

    def close(self, grace: float = 3) -> None:
        """Stop every process this display started, and every process carrying its token;
        wait until none is left (fails loudly if one survives SIGKILL)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(deadline - time.monotonic(), 0.01))
        deadline = time.monotonic() + 10
        while True:
            left = _pids_with(self.token)
            for proc in self.procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for proc in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.05)
            if not left and all(p.poll() is not None for p in self.procs):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"processes {left} outlived SIGKILL")
            time.sleep(0.05)
        if self.number is not None and self.procs:  # Xvfb removes these itself unless it was killed
            lock = Path(f"/tmp/.X{self.number}-lock")
            try:
                ours = int(lock.read_text().strip()) == self.procs[0].pid  # not another's, on a reused number
            except (OSError, ValueError):
                ours = False
            if ours:
                for stale in (lock, Path(f"/tmp/.X11-unix/X{self.number}")):
                    stale.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)
