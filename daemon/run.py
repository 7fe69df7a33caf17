"""``hush run``: mitmproxy embedded in this process, with hush's addon chain.

No ``mitmdump`` subprocess: a :class:`mitmproxy.master.Master` runs on this
process's event loop with mitmproxy's default addons plus hush's chain, one
listener per app, on loopback only, ``connection_strategy=lazy`` forced.

One daemon per state directory: an exclusive ``flock`` on ``STATE_DIR/lock``
is taken before anything else (tor, the control socket, launch.sock, the
listeners), and a second ``hush run`` exits at once, touching nothing.

Signals: SIGTERM/SIGINT (or ``hush stop``) stop (every queued audit record is
written first; the log says what stopping did, in order: held flows answered,
audit records written, tor stopped, stopped); SIGHUP (or ``hush reload``) —
or any change to a file in the policy directory — reloads: a whole new
PolicySet is built off the event loop and swapped in at once, or, if it has
any error, every error is logged and the running set stays.  A reload reads
the directory the daemon started with, or none (:class:`PolicySource`): a
policy path that now leads elsewhere is a refused reload.

Under systemd (``Type=notify``) it reports READY=1 once listeners are bound,
STATUS= with tor's bootstrap progress, RELOADING=1/READY=1 around reloads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import resource
import signal
import stat
import sys
import time
from pathlib import Path

from hush.daemon.mitmaddons import mitmproxy_addons  # first: before anything imports mitmproxy.addons

# isort: split
from mitmproxy import ctx, options
from mitmproxy.master import Master

from hush.addons import Pipeline, chain
from hush.daemon import frontdoor, paths
from hush.daemon.audit.ship import ShipError, make_shipper
from hush.daemon.config import Config
from hush.daemon.control import STATUS_SCHEMA, AlreadyRunning, ControlServer, StateLock
from hush.daemon.control import socket_path as control_socket
from hush.daemon.exitstatus import ExitStatus
from hush.daemon.launch.server import LaunchServer
from hush.daemon.loopwatch import LoopWatch
from hush.daemon.notify import notify
from hush.daemon.notify_dbus import DesktopPrompt
from hush.daemon.policy import PolicySet
from hush.daemon.policy.ask import ASKER
from hush.daemon.policy.holder import PolicyHolder
from hush.daemon.policy.loader import ExamplesFailed, build, load_checked
from hush.daemon.tor import TorManager
from hush.daemon.ui import questions
from hush.daemon.yamlschema import LoadError, LocatedError, Location

log = logging.getLogger("hush")

# Threads (the audit writer, stem) hand the GIL back to the event loop every
# millisecond instead of every 5: bench/audit_burst.py measured 11 ms loop
# stalls under an audit burst with Python's default.
SWITCH_INTERVAL = 0.001
SHIP_DEADLINE = 2.0  # seconds a stopping daemon gives audit shipping to send what is queued


@dataclasses.dataclass
class Reload:
    ok: bool
    at: float
    version: str | None
    errors: list[str]
    trigger: str
    examples_failed: bool = False  # refused only because policies' own examples fail (hush reload: exit 5)


def uses_tor(policyset: PolicySet) -> bool:
    return any(
        action.egress == "tor"
        for policy in [*policyset.policies.values(), *policyset.organisation.values()]
        for action in [policy.default, *(rule.action for rule in policy.rules)]
    )


def mitmproxy_options(policyset: PolicySet, config: Config, state_dir: Path) -> dict:
    opts = {
        "mode": policyset.specs,
        "connection_strategy": "lazy",
        "confdir": str(paths.ca_dir(state_dir)),
        "hush_state_dir": str(state_dir),
        "hush_audit_redaction": config.redaction,
        "hush_audit_keep_days": config.keep_days,
        "hush_max_held_per_app": config.max_held_per_app,
        "hush_max_held_total": config.max_held_total,
        "hush_max_headers": config.max_headers,
        "hush_max_header_bytes": config.max_header_bytes,
    }
    if config.upstream_ca:
        opts["ssl_verify_upstream_trusted_ca"] = str(config.upstream_ca)
    return opts


def policy_signature(directory: Path) -> tuple:
    """What changes when any file under the policy directory changes."""
    out = []
    for path in sorted(Path(directory).rglob("*")):
        try:
            st = path.stat()
        except OSError:
            continue
        if path.is_file():
            out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


class PoliciesReplaced(LoadError):
    """The policy directory's path now leads to another directory than the one hush started with."""


class PolicySource:
    """The user's policies, read the same way at every reload as at the start.

    At the start the directory is opened (for ``--policies FILE``: the file's
    directory; symbolic links resolved) and held open.  A reload follows the same
    path again (links too) and reads only if it is still that directory (same ``st_dev``,
    ``st_ino``; the held descriptor keeps the inode number from being reused),
    and it reads the files through that descriptor (``dir_fd``), so nothing
    done to the path's ancestors while the files are read can make it read
    another directory.  A path that now leads elsewhere — a directory above it
    renamed and a new one made in its place, as a launched app could do (its
    policy directory is read-only to it, the directories above were not) — is
    refused: the running set stays, the error is reported as any reload error
    is, and a restart reads the new directory.  Only the last directory is
    compared: what is read is what is in it, and the directories above may
    change (be renamed back and forth) without changing that.  For a file, it
    is its directory that is compared, not the file: editors save by renaming
    a new file over the old one, and that must still reload."""

    def __init__(self, path: Path):
        self.path = Path(path)  # as given: the names in errors and the set's version
        real = Path(os.path.realpath(self.path))
        self.file = None if real.is_dir() else real.name  # --policies FILE: its name in the directory
        self.directory = real if self.file is None else real.parent
        self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)
        self.outside: list[str] = []  # files the last load read outside the directory (real paths)
        self._reading: set[str] = set()

    def _note(self, real: str) -> None:
        """A file read: kept if it is outside the directory (a symbolic link out, an absolute
        ``hosts_from``), for the launch guard to make read-only as well."""
        if os.path.commonpath([real, str(self.directory)]) != str(self.directory):
            self._reading.add(real)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _error(self, message: str) -> LocatedError:
        return LocatedError(Location(str(self.path), 1, 1), message)

    def open_checked(self) -> int:
        """The directory, opened again by its path, if it is still the one hush started with.

        :raises PoliciesReplaced: if the path leads to another directory (or to none)"""
        restart = "; restart hush (systemctl --user restart hush, or hush stop and hush run) to read what is there"
        # the path as given, followed as a start would follow it: a symbolic link re-pointed (a
        # `current -> v2` deploy) leads elsewhere too, and must not go on reading the old directory
        real = Path(os.path.realpath(self.path))
        directory = real if self.file is None else real.parent
        try:
            if self.file is not None and real.name != self.file:
                raise OSError(f"{self.path} now names {real}")
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise PoliciesReplaced([self._error(
                f"refused: the policy directory {self.directory} hush started with is gone "
                f"({(e.strerror or str(e)).lower()}); it keeps the policies it has{restart}")]) from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self.identity:
            os.close(fd)
            raise PoliciesReplaced([self._error(
                f"refused: {self.path} no longer leads to the policy directory hush started with, "
                f"{self.directory} (it, a directory above it or a symbolic link on the way was moved, "
                f"replaced or re-pointed); hush keeps the policies it has{restart}")])
        return fd

    def sources(self, fd: int) -> list[tuple[str, str]]:
        """(name, text) of every policy file, read through ``fd``, named as the start named them.

        :raises LoadError: a file cannot be read, or there is none"""
        if self.file is not None:
            names = [self.file]
        else:
            names = []
            for name in sorted(os.listdir(fd)):
                if Path(name).suffix not in (".yaml", ".yml"):
                    continue
                try:
                    if stat.S_ISREG(os.stat(name, dir_fd=fd).st_mode):
                        names.append(name)
                except OSError:
                    continue
        out, errors = [], []
        for name in names:
            shown = str(self.path) if self.file is not None else str(self.path / name)
            try:
                out.append((shown, self._read_at(fd, name)))
            except (OSError, UnicodeDecodeError) as e:
                errors.append(LocatedError(Location(shown, 1, 1), f"cannot read: {e}"))
        if not names:
            errors.append(self._error("no policy files (*.yaml) found"))
        if errors:
            raise LoadError(errors)
        return out

    def _read_at(self, fd: int, name: str) -> str:
        self._note(os.path.realpath(self.directory / name))
        handle = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
        with open(handle, encoding="utf-8") as f:
            return f.read()

    def reader(self, fd: int):
        """``hosts_from`` lists: one named relative to a policy file (so under the directory the
        names start with) is read through ``fd`` as well; one elsewhere, by its path."""
        shown = self.path.parent if self.file is not None else self.path

        def read(path: str) -> str:
            try:
                relative = Path(os.path.normpath(path)).relative_to(os.path.normpath(shown))
            except ValueError:
                self._note(os.path.realpath(path))
                return Path(path).read_text(encoding="utf-8")
            return self._read_at(fd, str(relative))

        return read

    def load(self, organisation: Path | None, ctx) -> PolicySet:
        """Both layers, as :func:`hush.daemon.policy.loader.load_checked` builds them, the user's
        read through the directory hush started with.

        :raises LoadError: an error in either layer, or the directory replaced (:class:`PoliciesReplaced`);
        :raises ExamplesFailed: with every failing example"""
        fd = self.open_checked()
        self._reading = set()
        try:
            policyset = load_checked((), organisation, ctx, lambda: build(self.sources(fd), ctx, self.reader(fd)))
        finally:
            os.close(fd)
        self.outside = sorted(self._reading)
        return policyset


def raise_fd_limit() -> int:
    """The soft limit on open files raised to the hard one (systemd's user services get 1024 soft,
    524288 hard): each connection costs the daemon about two descriptors, and a launch may open
    thousands.  Nothing in hush or mitmproxy uses select() (asyncio's loop is epoll; the relay and
    the front door poll), which is what a descriptor past 1023 would break.  Returns the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as e:  # pragma: no cover - the kernel's nr_open below the hard limit
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, e)
    log.debug("open files limit: %d (hard %s)", soft, "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return soft


def _bind_errno(exc) -> int | None:
    """The errno behind mitmproxy's listen failure (it wraps the OSError, and words it thrice)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        exc = getattr(exc, "__cause__", None) or getattr(exc, "__context__", None)
    return None


def _explain_bind_error(exc) -> str:
    """Why a listener could not bind, in words, without errno numbers or nested repeats."""
    code = _bind_errno(exc)
    if code == errno.EADDRINUSE or (code is None and "in use" in str(exc)):
        return "another program is using this port; stop it, or change 'listen' in the policy"
    if code == errno.EACCES:
        return "permission denied (ports below 1024 need privileges); change 'listen' in the policy"
    if code == errno.EADDRNOTAVAIL:
        return "the address is not on this machine; change 'listen' in the policy"
    if code is not None:
        return f"{os.strerror(code).lower()}; change 'listen' in the policy"
    return str(exc)


class _QuietBindErrors(logging.Filter):
    """While hush reports its listeners itself (one line per port), mitmproxy's own
    bind error lines, which repeat the errno three times, are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to listen on" not in record.getMessage()


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class Daemon:
    """The running daemon's parts, and what ``hush status`` reports of them."""

    def __init__(self, policyset: PolicySet, config: Config, state_dir: Path, policies: Path):
        self.config = config
        self.state_dir = state_dir
        self.policies = policies
        self.holder = PolicyHolder(policyset)
        self.tor = TorManager(config.tor, state_dir)
        self.tor.state_callbacks.append(self._tor_changed)
        self.master = Master(options.Options())
        self.master.addons.add(*mitmproxy_addons())
        self.hush = chain(self.holder, self.tor)  # hush's addons, wired
        self.holder.on_change = self.hush.act.policy_changed  # a rule expired, or an ask answer added one
        self.prompt = DesktopPrompt(answer=lambda qid, verdict, scope: questions.BOARD.answer(
            qid, verdict, scope, "dbus"))  # ask: desktop notifications on $DBUS_SESSION_BUS_ADDRESS
        ASKER.configure(self.holder, self.prompt, self.reload)
        self.shipper = make_shipper(config.ship, config.ship_redaction, state_dir,
                                    config.ship_queue)  # audit.ship, or None
        if self.shipper is not None and self.hush.audit is not None:
            self.hush.audit.shipper = self.shipper
        self.master.addons.add(Pipeline([*self.hush, self]))
        # hush's listeners take the plain connection-level tunnels themselves, the rest goes to mitmproxy
        self.frontdoor = frontdoor.FrontDoor(self.master, self.hush, enabled=frontdoor.ENABLED)
        frontdoor.install(self.frontdoor)
        self.master.options.update(**mitmproxy_options(policyset, config, state_dir))
        self.exit_status = ExitStatus.OK
        self.started = time.time()
        self.reloads: list[Reload] = []
        self.control = ControlServer(control_socket(state_dir), {
            "status": self.status, "stop": self.stop_command, "reload": self.reload_command})
        self.source = PolicySource(policies)  # opened now: a reload reads this directory or refuses
        self.launches = LaunchServer(state_dir, lambda: self.policyset.policies, policies=policies,
                                     record=self._record_tunnel)
        self.launches.guard["readonly"].extend(config_guard(config))  # what the next start reads, too
        self._guarded = list(self.launches.guard["readonly"])
        self._reloading = asyncio.Lock()
        # full collections walk only what survived since the last one (held flows are frozen); the
        # cycles among frozen objects are collected when no client connection is open (loopwatch.py)
        self.connections = 0
        self.loopwatch = LoopWatch(freeze_survivors=True, idle=lambda: self.connections == 0)
        self._listening = False  # every listener bound: a stop then says what it did
        self._quiet = _QuietBindErrors()
        self.ui = None  # the live view (daemon/ui, docs/ui.md): ui.listen, off with `ui: false`
        if config.ui_listen is not None:
            from hush.daemon.ui.live import DaemonBackend
            from hush.daemon.ui.server import UIServer

            self.ui = UIServer(*config.ui_listen, state_dir, DaemonBackend(self), redaction=config.redaction)

    @property
    def policyset(self) -> PolicySet:
        """The active set: the daemon starts with one, and a reload only swaps another in."""
        current = self.holder.current
        if current is None:  # pragma: no cover - the holder is made with a set, never emptied
            raise RuntimeError("the daemon has no policy set")
        return current

    # -- mitmproxy hooks (this object is also an addon) ------------------------------

    def client_connected(self, client) -> None:
        self.connections += 1

    def client_disconnected(self, client) -> None:
        self.connections -= 1

    def running(self):
        proxyserver = ctx.master.addons.get("proxyserver")
        by_spec: dict[str, list] = {}
        for listener in self.policyset.listeners:
            by_spec.setdefault(listener.spec, []).append(listener)
        failed = False
        for instance in proxyserver.servers:
            group = by_spec.get(instance.mode.full_spec, [])
            apps = ",".join(listener.app for listener in group) or "?"
            address, mode = (group[0].address, group[0].mode) if group else (instance.mode.full_spec, "?")
            if instance.is_running:
                log.info("listening: app=%s address=%s mode=%s%s", apps, address, mode,
                         " (shared: apps told apart by process)" if len(group) > 1 else "")
            else:
                failed = True
                reason = _explain_bind_error(instance.last_exception or "not started")
                log.error("cannot listen for app %s on %s: %s", apps, address, reason)
        logging.getLogger("mitmproxy.addons.proxyserver").removeFilter(self._quiet)
        if failed:
            self.exit_status = ExitStatus.LISTEN_FAILED
            ctx.master.shutdown()
            return
        # Everything that exists now (modules, policies, mitmproxy's state) lives as long as
        # the daemon: move it out of the collector's way, so that a full collection does not
        # stall the event loop for tens of ms walking it (bench/audit_burst.py measured 56 ms).
        self.loopwatch.freeze()
        self._listening = True
        log.info("hush is running: %d listener(s), policy set %s", len(by_spec), self.policyset.version)
        notify("READY=1", f"STATUS={self._summary()}", f"MAINPID={os.getpid()}")

    def done(self):
        """Stopping: timing has answered the flows it held, audit has written its queue."""
        if not self._listening:
            return
        audit = self.hush.audit
        answered = audit.counts.get("shutdown", 0) if audit else 0  # held flows answered at stop
        log.info("stopping: %s answered", _plural(answered, "held flow", "held flows"))

    # -- life --------------------------------------------------------------------------

    async def run(self) -> ExitStatus:
        logging.getLogger("mitmproxy.addons.proxyserver").addFilter(self._quiet)
        await self._guard_outside()  # before any reload or launch
        if uses_tor(self.policyset):
            await self.tor.start()  # returns at once: non-Tor flows are served while tor bootstraps
        await self.control.start()
        await self.launches.start()
        self.loopwatch.start()
        self.frontdoor.start()
        await self._start_ui()
        if self.shipper is not None:
            self.shipper.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        watcher = asyncio.ensure_future(self._watch())
        try:
            await self.master.run()
        finally:
            watcher.cancel()
            logging.getLogger("mitmproxy.addons.proxyserver").removeFilter(self._quiet)
            self.loopwatch.stop()
            self.frontdoor.close_all()
            frontdoor.uninstall()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.launches.stop()
            if self.ui is not None and self.ui.running:
                if self.hush.audit is not None:
                    self.hush.audit.live = None
                await self.ui.stop()
            await self.control.stop()
            self.holder.close()
            await ASKER.close()
            await self.prompt.aclose()
            writer = self.hush.audit.writer if self.hush.audit else None
            if self._listening and writer is not None:
                log.info("audit: %s written", _plural(writer.written, "record", "records"))
            if self.shipper is not None:  # after audit's done: its last records are queued
                await asyncio.to_thread(self.shipper.close, SHIP_DEADLINE)
            await self.tor.stop()
            self.source.close()
            if self._listening:
                log.info("stopped")
        return self.exit_status

    async def _start_ui(self) -> None:
        """The live view; one that cannot bind is logged and the daemon runs without it.  The default
        address taken (another hush has it: a second state dir, ``hush demo``): any free port, as
        ``hush ui`` asks the daemon where its page is."""
        if self.ui is None:
            return
        taken = ""
        try:
            try:
                await self.ui.start()
            except OSError as e:
                if self.config.ui_listen_given or e.errno != errno.EADDRINUSE:
                    raise
                taken = f" ({self.ui.host}:{self.ui.port} is taken, by another hush?)"
                self.ui.port = 0
                await self.ui.start()
        except OSError as e:  # the proxy matters more than its view: run on without it
            why = os.strerror(e.errno).lower() if e.errno else str(e)
            log.warning("no live view: cannot listen on %s:%d: %s; change ui.listen in the config, or `ui: false`",
                        self.ui.host, self.ui.port, why)
            return
        if self.hush.audit is not None:
            self.hush.audit.live = self.ui.publish_record
        log.info("live view: %s%s (`hush ui` opens it)", self.ui.url, taken)

    async def _guard_outside(self) -> None:
        """Which files the policies read from outside their directory (a policy file that links out, a
        ``hosts_from`` list elsewhere), for launches to get them read-only too: the set is read
        once more at the start (the first read, by ``hush run``, did not say), then at every reload."""
        try:
            await asyncio.to_thread(self.source.load, self.config.organisation_policies, self.config.parse_context)
        except Exception as e:  # the set in force was read a moment ago; what differs now a reload reports
            log.warning("could not read the policies again to guard the files they name outside %s: %s",
                        self.source.directory, e)
            return
        self._guard_files()

    def _guard_files(self) -> None:
        self.launches.guard["readonly"][:] = [*self._guarded, *self.source.outside]
        if self.source.outside:
            log.info("read-only in launches too: %s (read by the policies, outside %s)",
                     ", ".join(self.source.outside), self.source.directory)

    def _record_tunnel(self, tunnel) -> None:
        self.hush.audit.record_tunnel(tunnel)

    def _stop(self) -> None:
        notify("STOPPING=1")
        self.tor.stopping()  # from now on tor going away is expected: no restart, no warning
        self._stop_accepting()
        self.frontdoor.close_all()  # its tunnels end (their rows completed) before the audit's last write
        self.master.shutdown()

    def _stop_accepting(self) -> None:
        """Stopping: no new connection is taken from now on (it would be decided, dialled and
        relayed after the audit's last write, its row left open).  Every listener's listening
        sockets close now — mitmproxy's instances keep theirs in ``_servers`` (private API, here
        only; the front door's servers are among them) —, ``launch.sock`` and every launch's; open
        connections go on until they are closed as before."""
        proxyserver = self.master.addons.get("proxyserver")
        for instance in getattr(proxyserver, "servers", ()):
            for server in getattr(instance, "_servers", ()):
                try:
                    server.close()
                except Exception:
                    log.exception("stopping: a listener could not be closed")
        self.launches.stop_accepting()

    def stop_command(self) -> dict:
        """``hush stop``: answered at once; the daemon then stops as on SIGTERM."""
        asyncio.get_running_loop().call_soon(self._stop)
        return {"stopping": True, "pid": os.getpid()}

    async def reload_command(self) -> dict:
        """``hush reload``: answered once the new set is taken or refused."""
        before = self.policyset.version
        ok = await self.reload("hush reload")
        last = self.reloads[-1]
        return {"ok": ok, "version": self.policyset.version, "previous": before, "errors": last.errors,
                "examples_failed": last.examples_failed}

    async def _watch(self, interval: float = 1.0) -> None:
        """Reload when a file in the policy directory changes (stat off the loop),
        once it has stopped changing."""
        if not self.policies.is_dir():
            return
        last = await asyncio.to_thread(self._signature)
        while True:
            await asyncio.sleep(interval)
            now = await asyncio.to_thread(self._signature)
            if now != last:
                while True:  # wait until it stops changing
                    await asyncio.sleep(0.5)
                    settled = await asyncio.to_thread(self._signature)
                    if settled == now:
                        break
                    now = settled
                await self.reload("policy files changed")
                last = await asyncio.to_thread(self._signature)

    def _signature(self) -> tuple:
        """Both layers' files: the user's policies and the organisation's floor."""
        return policy_signature(self.policies), policy_signature(self.config.organisation_policies)

    async def reload(self, trigger: str) -> bool:
        """Build a complete new set off the event loop; swap it in, or keep the old."""
        async with self._reloading:
            notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                new = await asyncio.to_thread(self.source.load, self.config.organisation_policies,
                                              self.config.parse_context)  # both layers; every example must pass
            except LoadError as e:
                log.error("reload (%s) refused, keeping policy set %s; %d error(s):\n%s",
                          trigger, self.policyset.version, len(e.errors), e)
                return self._refused(trigger, [str(x) for x in e.errors], isinstance(e, ExamplesFailed))
            except Exception as e:  # a bug in the loader: keep deciding with the set that works
                log.exception("reload (%s) refused, keeping policy set %s: hush failed to read the policies",
                              trigger, self.policyset.version)
                return self._refused(trigger, [f"internal error while loading: {e!r}"])
            if self.tor.state == "off" and uses_tor(new):
                await self.tor.start()
            self._guard_files()
            old = self.holder.swap(new)
            self.hush.act.policy_changed(old, self.policyset)  # closes what the new set (in force) treats more strictly
            modes = new.specs
            if modes != list(self.master.options.mode):
                self.master.options.update(mode=modes)
                log.info("listeners now: %s", ", ".join(f"{x.app}={x.address}/{x.mode}" for x in new.listeners))
            log.info("reloaded (%s): policy set %s replaces %s", trigger, new.version, old.version if old else None)
            self.reloads.append(Reload(True, time.time(), new.version, [], trigger))
            notify("READY=1", f"STATUS={self._summary()}")
            return True

    def _refused(self, trigger: str, errors: list[str], examples_failed: bool = False) -> bool:
        self.reloads.append(Reload(False, time.time(), None, errors, trigger, examples_failed))
        notify("READY=1", f"STATUS=reload refused; {self._summary()}")
        return False

    # -- reporting --------------------------------------------------------------------

    def _summary(self) -> str:
        current = self.policyset
        text = f"{len(current.specs)} listeners, policy set {current.version}"
        if self.tor.state != "off":
            text += f"; tor {self.tor.state}, bootstrapped {self.tor.bootstrap.progress}%"
        return text

    def _tor_changed(self) -> None:
        notify(f"STATUS={self._summary()}")

    def status(self) -> dict:
        """What ``hush status`` shows (built on the event loop; no I/O)."""
        current = self.policyset
        proxyserver = self.master.addons.get("proxyserver")
        bound = {i.mode.full_spec for i in proxyserver.servers if i.is_running} if proxyserver else set()
        audit = self.hush.audit
        timing = self.hush.timing
        writer = audit.writer if audit else None
        last = self.reloads[-1] if self.reloads else None
        return {
            "schema": STATUS_SCHEMA,
            "running": True,
            "pid": os.getpid(),
            "started": self.started,
            "state_dir": str(self.state_dir),
            "policies": {"dir": str(self.policies), "version": current.version, "loaded_at": current.loaded_at,
                         "apps": sorted(current.policies),
                         "organisation": {"dir": str(self.config.organisation_policies),
                                          "apps": sorted(current.organisation)}},
            "last_reload": dataclasses.asdict(last) if last else None,
            "reloads": len(self.reloads),
            "listeners": [{"app": x.app, "address": x.address, "mode": x.mode, "bound": x.spec in bound}
                          for x in current.listeners],
            "tor": self.tor.status(),
            "decisions": dict(audit.counts) if audit else {},
            "held": timing.held() if timing else 0,
            "learning": sorted(app for app, p in current.policies.items() if p.default.name == "learn"),
            "ask": {"asked": ASKER.asked, "open": len(questions.BOARD.questions()), "desktop": {
                "shown": self.prompt.shown, "answered": self.prompt.answered, "last_error": self.prompt.last_error}},
            "launches": self.launches.status(),
            "ui": self.ui.status() if self.ui is not None and self.ui.running else None,  # the live view
            "loop": self.loopwatch.status(),
            "frontdoor": self.frontdoor.status(),
            "audit": {
                "pending": writer.pending if writer else None,
                "written": writer.written if writer else None,
                "dropped": writer.dropped if writer else None,  # the disk refused past the queue's bound
                "degraded": writer.degraded if writer else None,
                "last_error": writer.last_error if writer else None,
                "ship": self.shipper.status() if self.shipper is not None else None,
            },
        }


def config_guard(config: Config) -> list[str]:
    """What of the daemon's config a launched app must not change (docs/launch.md): the config
    file in use, and hush's config directory (~/.config/hush: the default config file and policy
    directory, which the next start reads even where there are none now)."""
    out = []
    if config.file is not None and config.file.exists():
        out.append(os.path.realpath(config.file))
    home = paths.config_home()
    if home.is_dir():
        out.append(os.path.realpath(home))
    return out


def prepare_state_dir(state_dir: Path) -> str | None:
    """Create the state directory (0700) if needed; what is wrong with it, in one line, or None.
    (An existing one is made 0700 only once its lock is held: a second daemon changes nothing.)"""
    if state_dir.exists() and not state_dir.is_dir():
        return f"the state directory {state_dir} is a file, not a directory; remove it or choose another --state-dir"
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        why = "a part of its path is a file" if e.errno == errno.ENOTDIR else (e.strerror or str(e)).lower()
        return f"cannot use the state directory {state_dir}: {why}; choose another --state-dir"
    return None


async def serve(policyset: PolicySet, config: Config, state_dir: Path, policies: Path) -> ExitStatus:
    """Run the daemon until it is stopped.  First of all, the state directory and its lock:
    a second daemon on the same directory exits here, having touched nothing."""
    os.umask(0o077)  # the CA key, audit.db and everything else: owner only
    problem = prepare_state_dir(state_dir)
    if problem:
        print(f"hush: not starting, {problem}", file=sys.stderr)
        return ExitStatus.ERROR
    lock = StateLock(state_dir)
    try:
        lock.acquire()
    except AlreadyRunning as e:
        print(e, file=sys.stderr)
        return ExitStatus.ERROR
    except OSError as e:
        print(f"hush: not starting, cannot lock {lock.path}: {(e.strerror or str(e)).lower()}", file=sys.stderr)
        return ExitStatus.ERROR
    log.info("policies from %s (set %s), state in %s", policies, policyset.version, state_dir)
    if policyset.organisation:
        log.info("organisation floor from %s: %s", config.organisation_policies,
                 ", ".join(sorted(policyset.organisation)))
    try:
        try:
            os.chmod(state_dir, 0o700)
        except OSError as e:
            print(f"hush: not starting, cannot make the state directory {state_dir} owner-only: "
                  f"{(e.strerror or str(e)).lower()}", file=sys.stderr)
            return ExitStatus.ERROR
        sys.setswitchinterval(SWITCH_INTERVAL)
        raise_fd_limit()
        try:
            daemon = Daemon(policyset, config, state_dir, policies)
        except ShipError as e:
            print(f"hush: not starting, {e}", file=sys.stderr)
            return ExitStatus.ERROR
        return await daemon.run()
    finally:
        lock.release()
