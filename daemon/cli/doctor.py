"""``hush doctor``: what is wrong on this machine, and how to fix each thing.

Each check returns a :class:`Finding`; none of them changes anything.
``hush doctor --json`` prints :func:`as_json`: ``{"schema": "hush.doctor/1",
"ok": …, "findings": [{"level", "check", "message", "fix"}, …]}`` (docs/fleet.md).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Literal

from hush.daemon import paths
from hush.daemon.config import Config, load_config
from hush.daemon.yamlschema import LoadError

DOCTOR_SCHEMA = "hush.doctor/1"  # until a field is removed or changes meaning; new fields may come


@dataclasses.dataclass(frozen=True)
class Finding:
    level: Literal["ok", "warn", "fail"]
    check: str
    message: str
    fix: str | None = None


def check_python() -> Finding:
    v = sys.version_info
    if v < (3, 12):
        return Finding("fail", "python", f"Python {v.major}.{v.minor} is too old for mitmproxy 12",
                       "install Python 3.12 or newer and run `make setup` again")
    import mitmproxy.version

    return Finding("ok", "python", f"Python {v.major}.{v.minor}.{v.micro}, mitmproxy {mitmproxy.version.VERSION}")


def check_config(config_path: Path | None) -> tuple[Finding, Config | None]:
    try:
        config = load_config(config_path)
    except LoadError as e:
        return Finding("fail", "config", f"{len(e.errors)} error(s) in the config:\n{e}",
                       "fix each line shown (file:line:col)"), None
    where = str(config_path) if config_path else "built-in defaults (no config file)"
    return Finding("ok", "config", where), config


def check_policies(directory: Path, config: Config):
    from hush.daemon.policy import check_examples, load

    try:
        policyset = load([directory], config.parse_context)
    except LoadError as e:
        return Finding("fail", "policies", f"{len(e.errors)} error(s) in {directory}:\n{e}",
                       "fix each line shown, then `hush policy check`"), None
    failures = check_examples(policyset)
    if failures:
        return Finding("warn", "policies", "examples that do not hold:\n" + "\n".join(map(str, failures)),
                       "fix the rule or the example"), policyset
    return Finding("ok", "policies", f"{len(policyset.policies)} apps from {directory}"), policyset


def check_tor(policyset, config: Config) -> Finding:
    from hush.daemon.run import uses_tor

    if policyset is None or not uses_tor(policyset):
        return Finding("ok", "tor", "no policy uses `action: tor`")
    if config.tor.mode == "attach":
        return Finding("ok", "tor", f"attaches to {config.tor.control}")
    binary = shutil.which(config.tor.binary)
    if binary is None:
        return Finding("fail", "tor", f"policies use `action: tor` but no '{config.tor.binary}' is installed",
                       "install tor (Debian: `sudo apt install tor`) or set tor.binary in the config")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    return Finding("ok", "tor", f"{binary}: {version.strip()}")


# tor's bootstrap phases (control-spec, "Bootstrap phases"), from the highest progress
# each range reaches: what a tor stuck there usually means, and what to do
STUCK_AFTER = 120.0  # seconds since the daemon started: tor bootstraps in well under a minute
PHASES: tuple[tuple[int, str, str], ...] = (
    (0, "tor has not begun connecting",
     "check the tor lines of the log (`journalctl --user -u hush`): a torrc option it refused, or a "
     "DataDirectory it cannot write"),
    (10, "no relay can be reached: no network, a firewall, or a network that blocks Tor",
     "check that this machine is online; if Tor is blocked here, configure bridges (docs/tor.md: "
     "`UseBridges 1` and `Bridge …` lines under tor.torrc)"),
    (15, "relays are reached but the TLS handshake with them does not complete: the clock is wrong, "
     "or the network interferes with Tor's handshakes",
     "check the date and time zone (`timedatectl`; a clock more than an hour off stops tor); if the "
     "clock is right, Tor is likely filtered: use bridges with obfs4"),
    (45, "the directory (consensus or authority keys) does not arrive or is not accepted: "
     "usually clock skew (a consensus from the future or expired), or a network dropping long downloads",
     "check the date and time (`timedatectl`), then the network; bridges if Tor is filtered"),
    (75, "relay descriptors are still downloading: a slow or filtered network",
     "wait a minute more on a slow network; if it stays, check the network or use bridges"),
    (99, "tor has the directory but cannot build circuits: relays (or exits) unreachable, "
     "a firewall on their ports, or the network was lost",
     "check the network and any firewall allowing only some ports (`FascistFirewall 1` or "
     "`ReachableAddresses` in tor.torrc), or use bridges"),
)


def stuck_phase(progress: int) -> tuple[str, str]:
    """(what a tor stuck at ``progress`` % usually means, what to do)."""
    for upto, meaning, fix in PHASES:
        if progress <= upto:
            return meaning, fix
    return PHASES[-1][1], PHASES[-1][2]


def check_tor_running(status: dict, now: float | None = None) -> Finding:
    """hush's tor as the running daemon reports it (``hush status --json``'s ``tor``)."""
    import time

    tor = status.get("tor") or {}
    state = tor.get("state", "off")
    if state == "off":
        return Finding("ok", "tor", "the running daemon has no tor (no policy uses `action: tor`)")
    if tor.get("ready"):
        return Finding("ok", "tor", f"ready: bootstrapped 100%, circuits established ({tor.get('mode', '?')} mode)")
    progress = int(tor.get("bootstrap") or 0)
    tag, summary = tor.get("bootstrap_tag") or "", tor.get("bootstrap_summary") or ""
    phase = f"{progress}%" + (f" ({tag}: {summary})" if tag or summary else "")
    restarts = tor.get("restarts") or 0
    again = f"; restarted {restarts} time{'s' if restarts != 1 else ''}" if restarts else ""
    if state == "down":
        return Finding("fail", "tor", f"down: {tor.get('reason', '?')} (last at {phase}{again}); "
                       "flows the policies send through Tor are refused",
                       "see the tor lines of the log; hush restarts tor with backoff")
    if progress >= 100:
        meaning, fix = stuck_phase(99)
        where = "bootstrapped 100% but no circuit is established"
    else:
        meaning, fix = stuck_phase(progress)
        where = f"bootstrap stuck at {phase}"
    started = status.get("started")
    up = (now if now is not None else time.time()) - started if isinstance(started, (int, float)) else None
    if up is not None and up < STUCK_AFTER:
        return Finding("warn", "tor", f"still bootstrapping, at {phase} after {up:.0f}s{again}; Tor flows are "
                       "refused (503) until it is ready", "wait a minute and run `hush doctor` again")
    since = f" for {_duration(up)}" if up is not None else ""
    return Finding("fail", "tor", f"{where}{since}{again}: {meaning}; Tor flows are refused (503)", fix)


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 2:
        return f"{seconds:.0f} seconds"
    if minutes < 120:
        return f"{minutes} minutes"
    return f"{minutes // 60} hours"


def check_ports(policyset, running: bool) -> list[Finding]:
    if policyset is None:
        return []
    if running:
        return [Finding("ok", "ports", "hush is running and holds its listeners")]
    out = []
    for listener in policyset.listeners:
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        with socket.socket(family) as s:
            try:
                s.bind((listener.host, listener.port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    out.append(Finding("fail", "ports",
                                       f"{listener.address} ({listener.app}) is taken by another program",
                                       f"find it with `ss -ltnp 'sport = :{listener.port}'`, or change 'listen' in "
                                       f"{listener.location.file}"))
                    continue
                out.append(Finding("fail", "ports", f"{listener.address} ({listener.app}): {e}"))
                continue
        out.append(Finding("ok", "ports", f"{listener.address} ({listener.app}) is free"))
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_state(state: Path) -> list[Finding]:
    if not state.exists():
        return [Finding("ok", "state", f"{state} does not exist yet; hush creates it (0700) on start")]
    out = []
    if _mode(state) & 0o077:
        out.append(Finding("fail", "state", f"{state} is mode {_mode(state):04o}: others can read the audit and CA",
                           f"chmod 700 {state}"))
    elif not os.access(state, os.W_OK):
        out.append(Finding("fail", "state", f"{state} is not writable", f"chown $USER {state}"))
    else:
        out.append(Finding("ok", "state", f"{state} (0700)"))
    for name in ("audit.db", "ca/mitmproxy-ca.pem"):
        path = state / name
        if path.exists() and _mode(path) & 0o077:
            out.append(Finding("fail", "state", f"{path} is mode {_mode(path):04o}", f"chmod 600 {path}"))
    cert = paths.ca_cert(state)
    if cert.exists():
        if not os.access(cert, os.R_OK):
            out.append(Finding("fail", "ca", f"{cert} is not readable", f"chmod u+r {cert}"))
        else:
            out.append(Finding("ok", "ca", f"{cert} (give it to apps whose rules need interception)"))
    else:
        out.append(Finding("ok", "ca", "no CA yet; `hush ca path` creates one"))
    return out


def check_proxy_env(policyset, env=os.environ) -> list[Finding]:
    if policyset is None:
        return []
    listeners = policyset.listeners
    ours = {listener.address for listener in listeners} | {f"localhost:{listener.port}" for listener in listeners}
    out = []
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        value = env.get(var)
        if not value:
            continue
        target = value.split("://", 1)[-1].rstrip("/")
        if target in ours:
            out.append(Finding("ok", "proxy-env", f"{var}={value} points at a hush listener"))
        else:
            out.append(Finding("warn", "proxy-env", f"{var}={value} is not a hush listener: apps started from "
                               "this environment bypass hush",
                               f"unset {var}, or point it at one of: {', '.join(sorted(ours))}"))
    if not out:
        out.append(Finding("ok", "proxy-env", "no *_PROXY variables here; point each app at its own "
                           "listener (the comment at the top of its policy says how)"))
    return out


APPARMOR_USERNS = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
USERNS_CLONE = Path("/proc/sys/kernel/unprivileged_userns_clone")


UNSHARE_PROBE = """
import os, sys
try:
    os.unshare(os.CLONE_NEWUSER | os.CLONE_NEWNET | os.CLONE_NEWNS)
except OSError as e:
    sys.exit(e.errno or 1)
"""


def _try_namespaces() -> str | None:
    """None if this user can make a user + network + mount namespace (what
    `hush launch` needs), else why not.  In a throwaway interpreter (a fork of
    a threaded process could deadlock)."""
    code = subprocess.run([sys.executable, "-c", UNSHARE_PROBE], capture_output=True, timeout=30).returncode
    return None if code == 0 else os.strerror(code)


YAMA_PTRACE = Path("/proc/sys/kernel/yama/ptrace_scope")


def check_ptrace(path: Path = YAMA_PTRACE) -> Finding:
    """A launched app runs as you: where any process may ptrace any other of the
    same user, it could borrow one outside its namespace to connect for it."""
    scope = path.read_text().strip() if path.exists() else None
    if scope in ("1", "2", "3"):
        return Finding("ok", "launch", f"ptrace is restricted (yama ptrace_scope {scope})")
    return Finding("warn", "launch",
                   "any process may ptrace your others (no Yama restriction): a launched app could "
                   "borrow one outside its namespace", "sudo sysctl kernel.yama.ptrace_scope=1 "
                   "(and in /etc/sysctl.d/ to keep it); needs a kernel with Yama")


def check_launch(tool=None, try_namespaces=_try_namespaces) -> list[Finding]:
    """What `hush launch` needs: ip, nft, and unprivileged user namespaces."""
    from hush.daemon.launch.namespace import tool as find_tool

    tool = tool or find_tool
    out = []
    missing = [name for name, package in (("ip", "iproute2"), ("nft", "nftables")) if tool(name) is None]
    if missing:
        out.append(Finding("fail", "launch", f"`hush launch` needs {' and '.join(missing)}",
                           "Debian/Ubuntu: sudo apt install iproute2 nftables"))
    why = try_namespaces()
    if why is None:
        out.append(Finding("ok", "launch", "unprivileged user and network namespaces work: `hush launch` can run"))
        out.append(check_ptrace())
        return out
    fix = "enable unprivileged user namespaces"
    if APPARMOR_USERNS.exists() and APPARMOR_USERNS.read_text().strip() == "1":
        fix = ("Ubuntu 23.10+ restricts them through AppArmor: allow the python running hush with an AppArmor "
               "profile granting `userns,` (see docs/launch.md), or, less safely, "
               "`sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0`")
    elif USERNS_CLONE.exists() and USERNS_CLONE.read_text().strip() == "0":
        fix = "`sudo sysctl kernel.unprivileged_userns_clone=1` (and in /etc/sysctl.d/ to keep it)"
    out.append(Finding("fail", "launch", f"cannot create a user namespace ({why}): `hush launch` will not work", fix))
    return out


def check_ship(config: Config, status: dict | None = None, probe: bool = True) -> list[Finding]:
    """``audit.ship``: the running daemon's shipping (dropped records, a collector
    it cannot reach), or, without a daemon, whether the target answers now."""
    if config.ship is None:
        return [Finding("ok", "ship", "audit records are not shipped (no audit.ship in the config)")]
    target, mode = config.ship, config.ship_redaction
    warn_full = [Finding("warn", "ship", f"audit.ship_redaction {mode}: the central log receives URLs "
                         "(a record of every link people open)", "use site or hash (docs/fleet.md)")] \
        if mode in ("full", "no-query") else []
    ship = ((status or {}).get("audit") or {}).get("ship")
    if ship:
        if ship.get("dropped") or not ship.get("connected"):
            why = f"; last error: {ship['last_error']}" if ship.get("last_error") else ""
            return [Finding("warn", "ship", f"{ship['target']}: {ship['shipped']} shipped, {ship['dropped']} "
                            f"dropped, {'connected' if ship.get('connected') else 'not connected'}{why}",
                            "check that the collector runs and listens there; hush reconnects by itself"),
                    *warn_full]
        return [Finding("ok", "ship", f"{ship['target']} ({mode}): {ship['shipped']} shipped, none dropped"),
                *warn_full]
    problem = _reach(target) if probe else None
    if problem:
        return [Finding("warn", "ship", f"{target}: {problem}; records would be dropped (counted) until it is",
                        "start the collector, or fix audit.ship in the config"), *warn_full]
    return [Finding("ok", "ship", f"{target} ({mode}) can be reached"), *warn_full]


def _reach(target) -> str | None:
    """Why ``target`` cannot be reached now, or None (a connect, nothing sent)."""
    if target.kind == "journald":
        return None if Path(target.path).exists() else f"no journal socket at {target.path}"
    if target.kind == "udp":
        return None
    try:
        socket.create_connection((target.host, target.port), timeout=2).close()
    except OSError as e:
        return f"cannot connect ({(e.strerror or str(e)).lower()})"
    return None


def as_json(findings: list[Finding]) -> dict:
    """``hush doctor --json``: versioned (``schema``), for fleet inventory tools."""
    return {"schema": DOCTOR_SCHEMA, "ok": not any(f.level == "fail" for f in findings),
            "findings": [dataclasses.asdict(f) for f in findings]}


def _daemon_status(state: Path) -> dict | None:
    """What the daemon running with ``state`` reports (``hush status --json``), or None."""
    from hush.daemon import control

    try:
        reply = control.request(state, timeout=2)
    except (ConnectionError, OSError, ValueError):
        return None
    return reply if isinstance(reply, dict) and reply.get("running") else None


def run_checks(policies_flag, state_flag, config_flag, running: bool) -> list[Finding]:
    findings = [check_python()]
    config_finding, config = check_config(paths.config_file(config_flag))
    findings.append(config_finding)
    config = config or Config()
    try:
        policy_finding, policyset = check_policies(paths.policies(policies_flag, config.policies), config)
    except paths.PolicyDirMissing as e:  # one finding among the others, not the end of the check-up
        policy_finding, policyset = Finding("fail", "policies", str(e),
                                            "create it, or name an existing one (--policies DIR)"), None
    findings.append(policy_finding)
    state = paths.state_dir(state_flag, config.state_dir)
    status = _daemon_status(state) if running else None
    tor = check_tor(policyset, config)
    if status is not None and tor.level == "ok" and (status.get("tor") or {}).get("state", "off") != "off":
        tor = check_tor_running(status)  # tor is installed: how the daemon's tor is doing is what matters
    findings.append(tor)
    findings += check_ports(policyset, running)
    findings += check_state(state)
    findings += check_proxy_env(policyset)
    findings += check_launch()
    findings += check_ship(config, status)
    return findings
