"""``hush run``: mitmproxy embedded in this process, with hush's addon chain.

No ``mitmdump`` subprocess: a :class:`mitmproxy.master.Master` runs on this
process's event loop with mitmproxy's default addons plus hush's chain, one
listener per app, on loopback only, ``connection_strategy=lazy`` forced.

Signals: SIGTERM/SIGINT stop (every queued audit record is written first);
SIGHUP reloads the policies — the new set is swapped in whole or not at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import signal
import time
from pathlib import Path

from mitmproxy import addons as mitm_addons
from mitmproxy import ctx, options
from mitmproxy.master import Master

from hush.addons import chain
from hush.daemon import paths
from hush.daemon.config import Config
from hush.daemon.control import ControlServer
from hush.daemon.control import socket_path as control_socket
from hush.daemon.policy import PolicySet, load
from hush.daemon.policy.holder import PolicyHolder
from hush.daemon.tor import TorManager
from hush.daemon.yamlschema import LoadError

log = logging.getLogger("hush")


class ExitStatus(enum.IntEnum):
    """Exit codes of every ``hush`` command."""

    OK = 0
    ERROR = 1
    USAGE = 2
    POLICY_INVALID = 3
    LISTEN_FAILED = 4
    EXAMPLES_FAILED = 5
    NOT_FOUND = 6
    DAEMON_UNREACHABLE = 7


@dataclasses.dataclass
class Reload:
    ok: bool
    at: float
    version: str | None
    errors: list[str]


class Lifecycle:
    """Reports listeners once they are bound; stops the daemon if one is not."""

    def __init__(self, holder: PolicyHolder):
        self.holder = holder
        self.exit_status = ExitStatus.OK

    def running(self):
        proxyserver = ctx.master.addons.get("proxyserver")
        by_spec = {l.spec: l for l in self.holder.current.listeners}
        failed = False
        for instance in proxyserver.servers:
            listener = by_spec.get(instance.mode.full_spec)
            name = f"app {listener.app} on {listener.address}" if listener else instance.mode.full_spec
            if instance.is_running:
                log.info("listening: app=%s address=%s mode=%s", listener.app if listener else "?",
                         listener.address if listener else instance.mode.full_spec,
                         listener.mode if listener else instance.mode.type_name)
            else:
                failed = True
                reason = instance.last_exception or "not started"
                log.error("cannot listen for %s: %s", name, _explain_bind_error(reason))
        if failed:
            self.exit_status = ExitStatus.LISTEN_FAILED
            ctx.master.shutdown()
        else:
            log.info("hush is running: %d listener(s), policy set %s", len(by_spec), self.holder.current.version)


def _explain_bind_error(exc) -> str:
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == 98 or "in use" in text:
        return f"{text} (another program, or another hush, is using this port; change 'listen' in the policy)"
    return text


def uses_tor(policyset: PolicySet) -> bool:
    return any(
        action.egress == "tor"
        for policy in policyset.policies.values()
        for action in [policy.default, *(rule.action for rule in policy.rules)]
    )


def mitmproxy_options(policyset: PolicySet, config: Config, state_dir: Path) -> dict:
    opts = {
        "mode": [l.spec for l in policyset.listeners],
        "connection_strategy": "lazy",
        "confdir": str(paths.ca_dir(state_dir)),
        "onboarding": False,  # mitm.it would be answered by mitmproxy, not by the policy
        "hush_state_dir": str(state_dir),
        "hush_audit_redaction": config.redaction,
    }
    if config.upstream_ca:
        opts["ssl_verify_upstream_trusted_ca"] = str(config.upstream_ca)
    return opts


def status(master: Master, holder: PolicyHolder, tor: TorManager, started: float, policies: Path,
           state_dir: Path, last_reload: list) -> dict:
    """What ``hush status`` shows (built on the event loop; no I/O)."""
    current = holder.current
    proxyserver = master.addons.get("proxyserver")
    running = {i.mode.full_spec for i in proxyserver.servers if i.is_running} if proxyserver else set()
    audit = master.addons.get("audit")
    writer = audit.writer if audit else None
    reload = last_reload[-1] if last_reload else None
    return {
        "running": True,
        "pid": os.getpid(),
        "started": started,
        "state_dir": str(state_dir),
        "policies": {"dir": str(policies), "version": current.version, "loaded_at": current.loaded_at,
                     "apps": sorted(current.policies)},
        "last_reload": dataclasses.asdict(reload) if reload else None,
        "listeners": [{"app": l.app, "address": l.address, "mode": l.mode, "bound": l.spec in running}
                      for l in current.listeners],
        "tor": tor.status(),
        "decisions": dict(audit.counts) if audit else {},
        "audit": {
            "pending": writer.pending if writer else None,
            "written": writer.written if writer else None,
            "degraded": writer.degraded if writer else None,
            "last_error": writer.last_error if writer else None,
        },
    }


async def serve(policyset: PolicySet, config: Config, state_dir: Path, policies: Path) -> ExitStatus:
    os.umask(0o077)  # the CA key, audit.db and everything else: owner only
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)

    master = Master(options.Options())
    master.addons.add(*mitm_addons.default_addons())
    holder = PolicyHolder(policyset)
    tor = TorManager(config.tor, state_dir)
    lifecycle = Lifecycle(holder)
    master.addons.add(*chain(holder, tor), lifecycle)
    master.options.update(**mitmproxy_options(policyset, config, state_dir))
    if uses_tor(policyset):
        await tor.start()  # returns at once: non-Tor flows are served while tor bootstraps
    started, reloads = time.time(), []
    control = ControlServer(control_socket(state_dir), {
        "status": lambda: status(master, holder, tor, started, policies, state_dir, reloads),
    })
    await control.start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: asyncio.ensure_future(reload(master, holder, config, policies, tor, reloads)))
    try:
        await master.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await control.stop()
        await tor.stop()
    return lifecycle.exit_status


async def reload(master: Master, holder: PolicyHolder, config: Config, policies: Path,
                 tor: TorManager | None = None, history: list | None = None) -> bool:
    """Build a complete new set off the event loop; swap it in or keep the old."""
    history = history if history is not None else []
    try:
        new = await asyncio.to_thread(load, [policies], config.parse_context)
    except LoadError as e:
        log.error("reload refused, keeping policy set %s:\n%s", holder.current.version, e)
        history.append(Reload(False, time.time(), None, [str(x) for x in e.errors]))
        return False
    if tor is not None and tor.state == "off" and uses_tor(new):
        await tor.start()
    old = holder.swap(new)
    modes = [l.spec for l in new.listeners]
    if modes != list(master.options.mode):
        master.options.update(mode=modes)
    log.info("reloaded: policy set %s replaces %s", new.version, old.version if old else None)
    history.append(Reload(True, time.time(), new.version, []))
    return True
