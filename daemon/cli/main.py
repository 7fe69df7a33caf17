"""The ``hush`` command.

Example::

    hush run --policies policies --state-dir ~/.local/state/hush
    hush policy check policies/
    hush policy explain --app whatsapp https://example.com/a --header 'User-Agent: WhatsApp/2'
    hush audit summary --since 24h
    hush ca path

Exit codes are :class:`hush.daemon.exitstatus.ExitStatus`: 0 ok, 1 error, 2 usage,
3 policy invalid, 4 a listener could not bind, 5 a policy example failed,
6 not found, 7 the daemon is unreachable.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from hush.daemon import paths
from hush.daemon.exitstatus import ExitStatus

if TYPE_CHECKING:  # imported where used: --help, --version and a daemon's status load neither YAML nor SQLite
    from hush.daemon.config import Config


class UsageError(Exception):
    pass


class NotFound(Exception):
    """Exit 6: what the command was asked about does not exist (an app, a record, the audit)."""


class Unreachable(Exception):
    """Exit 7: the daemon (or its tor) does not answer."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit 2 with the message, as argparse does, but testable
        raise UsageError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser, *, policies=False, state=False, config=True) -> None:
    if policies:
        p.add_argument("--policies", metavar="DIR", help="policy directory (default: $HUSH_POLICIES, "
                       "~/.config/hush/policies, or the shipped policies)")
    if state:
        p.add_argument("--state-dir", metavar="DIR", help="state directory (default: $HUSH_STATE_DIR, "
                       "~/.local/state/hush)")
    if config:
        p.add_argument("--config", metavar="FILE", help="config file (default: ~/.config/hush/config.yaml)")


def _output(p: argparse.ArgumentParser) -> None:
    """--json / --table; JSON when stdout is not a terminal."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", dest="fmt", action="store_const", const="json", help="JSON output")
    g.add_argument("--table", dest="fmt", action="store_const", const="table", help="human-readable output")


def _fmt(args, default: str | None = None) -> str:
    """``json`` or ``table``: as asked, else ``default``, else JSON when stdout is not a terminal."""
    return args.fmt or default or ("table" if sys.stdout.isatty() else "json")


def _print_json(value) -> None:
    """Every command's JSON document, in one style (JSON Lines streams: one compact object a line)."""
    print(json.dumps(value, indent=2))


def _n(count: int, word: str, plural: str | None = None) -> str:
    """``1 policy``, ``2 policies``, ``0 sites``."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = (),
           widths: list[int] | None = None) -> list[str]:
    """A header row and the rows, each column as wide as its longest value (the last one unpadded;
    ``right``: right-aligned columns).  ``widths``, if given, is updated and used (for rows that follow)."""
    if widths is None:
        widths = [0] * len(header)
    for row in (header, *rows):
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    last = len(widths) - 1

    def line(row: Sequence[str]) -> str:
        cells = [c if i == last else c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                 for i, c in enumerate(row)]
        return "  ".join(cells).rstrip()

    return [line(header), *(line(r) for r in rows)] if header else [line(r) for r in rows]


def _human(value) -> str:
    """A value as a person reads it: no Python reprs (``-`` for nothing, yes/no, ``key value, …``)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_human(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_human(v) for v in value) or "-"
    return str(value)


EPILOG = """examples:
  hush run --policies policies --state-dir ~/.local/state/hush
  hush policy check policies/
  hush policy explain --app whatsapp https://example.com/a --header 'User-Agent: WhatsApp/2'
  hush --state-dir ~/.local/state/hush audit summary --since 24h
  hush ca path

exit codes: 0 ok, 1 error, 2 usage, 3 policy invalid, 4 a listener could not bind,
  5 a policy example failed, 6 not found, 7 the daemon is unreachable
"""


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, read only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("hush")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        print(f"hush {v}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hush", description="A privacy proxy for messenger link previews.",
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--version", action=_Version, help="print hush's version and exit")
    parser.add_argument("--state-dir", dest="global_state_dir", metavar="DIR",
                        help="state directory for the command (also after it; that one wins)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the proxy daemon in the foreground")
    _common(run, policies=True, state=True)
    run.add_argument("-v", "--verbose", action="store_true", help="also log mitmproxy's connection events")

    status = sub.add_parser("status", help="ask the running daemon how it is")
    _common(status, state=True)
    _output(status)

    stop = sub.add_parser("stop", help="stop the running daemon (and wait until it has)")
    _common(stop, state=True)
    reload = sub.add_parser("reload", help="reload the running daemon's policies (as SIGHUP does)")
    _common(reload, state=True)
    ui = sub.add_parser("ui", help="open the live view in the browser (docs/ui.md)")
    _common(ui, state=True)
    ui.add_argument("--print-url", action="store_true",
                    help="print the URL (with the token the page exchanges for a cookie) instead")

    policy = sub.add_parser("policy", help="check and explain policies")
    psub = policy.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    check = psub.add_parser("check", help="validate policies and run their examples")
    check.add_argument("paths", nargs="*", metavar="PATH", help="policy files or directories")
    _common(check, policies=True)
    _output(check)
    explain = psub.add_parser("explain", help="show the decision for a URL and the rule that made it")
    explain.add_argument("--app", required=True)
    explain.add_argument("url")
    explain.add_argument("--method", default="GET")
    explain.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
    _common(explain, policies=True)
    _output(explain)
    suggest = psub.add_parser("suggest", help="a policy for an app, proposed from its audit (printed as YAML)")
    suggest.add_argument("--app", required=True)
    suggest.add_argument("--since", default="7d", help="audit records since (default 7d; 24h, 2026-11-22…)")
    _common(suggest, policies=True, state=True)

    audit = sub.add_parser("audit", help="review what was decided and what leaked")
    asub = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    tail = asub.add_parser("tail", help="the newest records")
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    summary = asub.add_parser("summary", help="per app: requests, decisions, sites, leaks prevented")
    summary.add_argument("--since", help="e.g. 30m, 24h, 7d, or an ISO date")
    summary.add_argument("--app")
    show = asub.add_parser("show", help="one record, whole")
    show.add_argument("id", type=int)
    for p in (tail, summary, show):
        _common(p, state=True)
        _output(p)
    export = asub.add_parser("export", help="every record, as JSON lines or CSV, to stdout")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--since", help="e.g. 30m, 24h, 7d, or an ISO date")
    purge = asub.add_parser("purge", help="delete records (all, or older than --before)")
    g = purge.add_mutually_exclusive_group(required=True)
    g.add_argument("--before", help="delete records older than this (e.g. 30d, or an ISO date)")
    g.add_argument("--all", action="store_true", help="delete every record")
    report = asub.add_parser("report", help="a self-contained HTML page for review")
    report.add_argument("--html", nargs="?", const="", default="", metavar="FILE",
                        help="where to write the page (default: STATE_DIR/report-DATE-TIME.html)")
    report.add_argument("--since", help="e.g. 7d (default: all records)")
    for p in (export, purge, report):
        _common(p, state=True)
    for p in (purge, report):
        _output(p)

    launch = sub.add_parser("launch", help="run a command whose every connection goes through hush "
                            "(its own network namespace; no proxy setting needed)")
    launch.add_argument("--app", required=True, help="the policy that decides the command's connections")
    launch.add_argument("--dbus", choices=("open", "filter", "none"), default="open",
                        help="the D-Bus buses: open (default; a residual channel, see docs/launch.md), "
                        "filter (xdg-dbus-proxy: notifications, tray and keyring only; no system bus), none")
    launch.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG ...]")
    _common(launch, state=True)

    demo = sub.add_parser("demo", help="see what hush does: the shipped policies, a local site, each app's "
                          "fetches replayed")
    demo.add_argument("--tor", action="store_true", help="also build a private Tor network on 127.0.0.1 "
                      "(~15 s) and show the tor action at work, offline")

    doctor = sub.add_parser("doctor", help="find what is wrong on this machine, and how to fix it")
    _common(doctor, policies=True, state=True)
    _output(doctor)

    unit = sub.add_parser("install-unit", help="install the systemd user unit for this hush")
    unit.add_argument("--dir", metavar="DIR", help="where to write hush.service "
                      "(default: ~/.config/systemd/user)")
    unit.add_argument("--print", action="store_true", help="print the unit instead of writing it")

    tor = sub.add_parser("tor", help="hush's tor")
    tsub = tor.add_subparsers(dest="tor_command", required=True, parser_class=_Parser)
    tor_status = tsub.add_parser("status", help="bootstrap progress, circuits, ports")
    newnym = tsub.add_parser("newnym", help="new circuits for new streams (SIGNAL NEWNYM)")
    for p in (tor_status, newnym):
        _common(p, state=True)
    _output(tor_status)

    ca = sub.add_parser("ca", help="hush's certificate authority")
    csub = ca.add_subparsers(dest="ca_command", required=True, parser_class=_Parser)
    ca_path = csub.add_parser("path", help="print the CA certificate's path (creating the CA if needed)")
    _common(ca_path, state=True)
    _output(ca_path)
    return parser


# Commands that run until stopped: the garbage collector stays on for them.
LONG_RUNNING = {("run",), ("launch",), ("demo",)}


def main(argv: Sequence[str] | None = None) -> int:
    # A command that reads a file and prints has no cycles worth collecting before it exits:
    # collections while its modules load cost ~10 ms of its start (bench/cli.py).  Put back
    # as it was when main returns (the tests call it in their own process).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _main(argv)
    finally:
        if collecting:
            gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return ExitStatus.USAGE
    from hush.daemon.yamlschema import LoadError

    try:
        return int(_dispatch(args))
    except LoadError as e:
        print(e, file=sys.stderr)
        return ExitStatus.POLICY_INVALID
    except UsageError as e:
        print(f"hush: {e}", file=sys.stderr)
        return ExitStatus.USAGE
    except (FileNotFoundError, NotFound) as e:
        print(f"hush: {e}", file=sys.stderr)
        return ExitStatus.NOT_FOUND
    except Unreachable as e:
        print(f"hush: {e}", file=sys.stderr)
        return ExitStatus.DAEMON_UNREACHABLE
    except BrokenPipeError:
        return ExitStatus.OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.global_state_dir is not None and getattr(args, "state_dir", "") is None:
        args.state_dir = args.global_state_dir  # hush --state-dir D audit tail: the command's own one wins
    from hush.daemon.config import load_config

    config = load_config(paths.config_file(getattr(args, "config", None)))
    command = _command_of(args)
    if command in LONG_RUNNING or getattr(args, "follow", False):  # audit tail -f too
        gc.enable()
    return COMMANDS[command](args, config)


def _command_of(args: argparse.Namespace) -> tuple[str, ...]:
    """``("audit", "tail")`` for ``hush audit tail``: a group's subcommand is in ``<group>_command``."""
    sub = getattr(args, f"{args.command}_command", None)
    return (args.command, sub) if sub else (args.command,)


# -- run ------------------------------------------------------------------------


def setup_logging(level: str, verbose: bool) -> None:
    import logging

    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=getattr(logging, level.upper()))
    logging.getLogger("mitmproxy").setLevel(logging.INFO if verbose else logging.WARNING)
    import stem.util.log  # sets its logger to TRACE when imported: import it first, then set the level

    stem.util.log.get_logger().setLevel(logging.INFO if verbose else logging.WARNING)


def cmd_run(args, config: Config) -> int:
    import asyncio

    from hush.daemon.policy.loader import ExamplesFailed, load_checked
    from hush.daemon.run import serve
    from hush.daemon.yamlschema import LoadError

    setup_logging(config.log_level, args.verbose)
    policies = paths.policies(args.policies, config.policies)
    state = paths.state_dir(args.state_dir, config.state_dir)
    try:  # the user's policies and the organisation's floor; a policy's examples are its tests
        policyset = load_checked([policies], config.organisation_policies, config.parse_context)
    except ExamplesFailed as e:
        print(f"hush: not starting, {_n(len(e.errors), 'policy example')} failed (hush policy check shows "
              f"them too):\n{e}", file=sys.stderr)
        return ExitStatus.EXAMPLES_FAILED
    except LoadError as e:
        floor = f" (and the organisation's in {config.organisation_policies})" \
            if config.organisation_policies.exists() else ""
        print(f"hush: not starting, the policies in {policies}{floor} have {_n(len(e.errors), 'error')}:\n{e}",
              file=sys.stderr)
        return ExitStatus.POLICY_INVALID
    return asyncio.run(serve(policyset, config, state, policies))  # it logs where from, once it holds the lock


# -- status -----------------------------------------------------------------------


def cmd_status(args, config: Config) -> int:
    from hush.daemon import control

    state = _state(args, config)
    try:
        st = control.request(state)
    except ConnectionError as e:
        if _fmt(args) == "json":
            _print_json({"schema": control.STATUS_SCHEMA, "running": False, "state_dir": str(state),
                         "error": str(e)})
        else:
            print(f"not running: {e}")
        return ExitStatus.DAEMON_UNREACHABLE
    if _fmt(args) == "json":
        _print_json(st)
        return ExitStatus.OK
    p, tor, audit = st["policies"], st["tor"], st["audit"]
    print(f"hush is running (pid {st['pid']}, since {_when(st['started'])}), state in {st['state_dir']}")
    print(f"policies: set {p['version']} from {p['dir']}, loaded {_when(p['loaded_at'])}")
    if st["last_reload"]:
        r = st["last_reload"]
        print(f"last reload: {'ok' if r['ok'] else 'REFUSED'} at {_when(r['at'])}"
              + "".join(f"\n  {e}" for e in r["errors"]))
    rows = [[x["app"], x["address"], x["mode"], "yes" if x["bound"] else "NOT BOUND"] for x in st["listeners"]]
    for line in _table(["app", "listener", "mode", "bound"], rows):
        print(f"  {line}")
    if st.get("learning"):  # default: learn — allowed, and every row audited learn
        print(f"learning (default: learn): {', '.join(st['learning'])} — then `hush policy suggest --app APP`")
    ask = st.get("ask")
    if ask and ask["asked"]:
        desktop = ask["desktop"]
        down = f" ({desktop['last_error']})" if desktop["last_error"] else ""
        print(f"ask: {_n(ask['asked'], 'question')} asked, {ask['open']} open; desktop prompts "
              f"{desktop['shown']} shown, {desktop['answered']} answered{down}")
    if tor["state"] == "off":
        print("tor: not used")
    else:
        print(f"tor: {tor['state']} — {_human(tor['reason'])}; bootstrapped {tor['bootstrap']}% "
              f"({_human(tor['bootstrap_summary'])})"
              f"; restarts {tor['restarts']}")
    decisions = ", ".join(f"{k} {v}" for k, v in sorted(st["decisions"].items())) or "none yet"
    print(f"decisions since start: {decisions}")
    door = st.get("frontdoor")
    if door:  # connection-level tunnels (docs/architecture.md, "The front door")
        if door["enabled"]:
            print(f"tunnels: {door['open']} open on the front door, {door['spliced']} relayed in the kernel; "
                  f"since start {door['fast']} set up by hush itself, {door['handed']} handed to mitmproxy")
        else:
            print("tunnels: front door off, every connection goes to mitmproxy")
    loop = st["loop"]
    hint = "" if st.get("launches") else " (hush launch --app APP -- CMD)"
    launches = st.get("launches", [])
    print(f"launches: {len(launches)}{hint}")
    if launches:
        rows = [[str(x["id"]), x["app"], str(x["pid"]), _when(x["since"]), str(x["connections"]), str(x["open"]),
                 " ".join(x["argv"])[:60]] for x in launches]
        for line in _table(["launch", "app", "pid", "since", "connections", "open", "command"], rows,
                           right=(0, 2, 4, 5)):
            print(f"  {line}")
    print(f"held now: {st['held']}; event loop: longest stall {loop['max_stall_ms']:.0f} ms, "
          f"{_n(loop['gc_full'], 'full garbage collection')} (longest {loop['gc_full_max_ms']:.0f} ms)")
    degraded = f"; DEGRADED: {audit['last_error']}" if audit["degraded"] else ""
    if audit.get("dropped"):
        degraded += f"; {_n(audit['dropped'], 'record')} dropped (the disk refused past the queue's bound)"
    print(f"audit: {_n(audit['written'], 'record')} written, {audit['pending']} queued{degraded}")
    ship = audit.get("ship")
    if ship:
        down = "" if ship["connected"] or not ship["last_error"] else f"; NOT CONNECTED: {ship['last_error']}"
        print(f"audit shipping to {ship['target']} ({ship['redaction']}): {ship['shipped']} shipped, "
              f"{ship['queued']} queued, {ship['dropped']} dropped{down}")
    return ExitStatus.OK


def cmd_stop(args, config: Config) -> int:
    from hush.daemon import control

    try:
        pid = control.stop(_state(args, config))
    except ConnectionError as e:
        print(f"hush stop: {e}", file=sys.stderr)
        return ExitStatus.DAEMON_UNREACHABLE
    except TimeoutError as e:
        print(f"hush stop: {e}", file=sys.stderr)
        return ExitStatus.ERROR
    print(f"stopped hush (pid {pid})")
    return ExitStatus.OK


def cmd_reload(args, config: Config) -> int:
    from hush.daemon import control

    try:
        r = control.request(_state(args, config), "reload", timeout=120)
    except ConnectionError as e:
        print(f"hush reload: {e}", file=sys.stderr)
        return ExitStatus.DAEMON_UNREACHABLE
    if "ok" not in r:
        print(f"hush reload: the daemon did not reload: {r.get('error', r)}", file=sys.stderr)
        return ExitStatus.ERROR
    if not r["ok"]:
        print(f"reload refused, keeping policy set {r['version']}; {_n(len(r['errors']), 'error')}:", file=sys.stderr)
        print("\n".join(r["errors"]), file=sys.stderr)
        return ExitStatus.EXAMPLES_FAILED if r.get("examples_failed") else ExitStatus.POLICY_INVALID
    same = r["version"] == r["previous"]
    print(f"reloaded: policy set {r['version']}" + (" (unchanged)" if same else f" replaces {r['previous']}"))
    return ExitStatus.OK


def cmd_ui(args, config: Config) -> int:
    """``hush ui``: the running daemon's live view, opened with a one-time nonce made with its
    token (the token itself never goes on the browser's command line: docs/ui.md).

    Example:  hush ui --print-url   →   http://127.0.0.1:8100/?token=NONCE (works once, within 60 s)
    """
    import urllib.parse

    from hush.daemon import control
    from hush.daemon.ui.token import make_nonce, read_token

    state = _state(args, config)
    try:
        st = control.request(state)
        token = read_token(state) if st.get("ui") else ""
    except ConnectionError as e:
        print(f"hush ui: {e}", file=sys.stderr)
        return ExitStatus.DAEMON_UNREACHABLE
    except OSError as e:
        print(f"hush ui: cannot read the live view's token: {(e.strerror or str(e)).lower()}", file=sys.stderr)
        return ExitStatus.ERROR
    if not st.get("ui"):
        print("hush ui: the running daemon serves no live view (`ui: false` in its config, or it could not "
              "listen: see its log)", file=sys.stderr)
        return ExitStatus.ERROR
    url = f"{st['ui']['url']}?{urllib.parse.urlencode({'token': make_nonce(token)})}"
    if args.print_url:
        print(url)
        return ExitStatus.OK
    import webbrowser

    if not webbrowser.open(url):
        print(f"hush ui: no browser to open; open this URL yourself:\n{url}", file=sys.stderr)
        return ExitStatus.ERROR
    print(f"opened the live view: {st['ui']['url']}")
    return ExitStatus.OK


# -- launch -----------------------------------------------------------------------


def cmd_launch(args, config: Config) -> int:
    from hush.daemon.launch import namespace as launch

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("hush launch: name the command to run: hush launch --app APP -- CMD [ARG ...]")
    state = _state(args, config)
    try:
        return launch.run(state, args.app, argv, args.dbus)
    except ConnectionError as e:
        print(f"hush launch: not started, {e}", file=sys.stderr)
        return ExitStatus.DAEMON_UNREACHABLE
    except TimeoutError:
        print(f"hush launch: not started, the daemon with --state-dir {state} did not answer", file=sys.stderr)
        return ExitStatus.DAEMON_UNREACHABLE
    except launch.Refused as e:
        print(f"hush launch: not started, the daemon refused: {e}", file=sys.stderr)
        return ExitStatus.NOT_FOUND if e.reply.get("error", "").startswith("no policy") else ExitStatus.ERROR
    except launch.LaunchError as e:
        print(f"hush launch: not started, cannot build the namespace: {e}", file=sys.stderr)
        return ExitStatus.ERROR


# -- policy -----------------------------------------------------------------------


def cmd_policy_check(args, config: Config) -> int:
    from hush.daemon.policy import check_examples, load

    targets = args.paths or [paths.policies(args.policies, config.policies)]
    policyset = load(targets, config.parse_context)  # LoadError → exit 3 with every error
    failures = check_examples(policyset)
    n_rules = sum(len(p.rules) for p in policyset.policies.values())
    n_examples = sum(len(p.examples) for p in policyset.policies.values())
    if _fmt(args, default="table") == "json":
        _print_json({"ok": not failures, "apps": sorted(policyset.policies), "rules": n_rules,
                     "examples": n_examples, "failures": [str(f) for f in failures],
                     "policy_version": policyset.version})
    if failures:
        print("\n".join(str(f) for f in failures), file=sys.stderr)
        return ExitStatus.EXAMPLES_FAILED
    if _fmt(args, default="table") == "table":
        print(f"ok: {_n(len(policyset.policies), 'policy', 'policies')}, {_n(n_rules, 'rule')}, "
              f"{_n(n_examples, 'example')} pass (set {policyset.version})")
    return ExitStatus.OK


def cmd_policy_suggest(args, config: Config) -> int:
    """Turn the audit of one app into a proposed policy, printed as YAML for the user to read and
    save: its own backends (long-lived tunnels) passed through, link previews debounced then sent
    through Tor, every other site it contacted blocked with its counts and first/last seen as
    comments, default block; examples that ``hush policy check`` runs.

    Example: hush policy suggest --app signal --since 7d > signal.yaml && hush policy check signal.yaml
    """
    from hush.daemon.audit import queries
    from hush.daemon.policy import suggest
    from hush.daemon.yamlschema import LoadError

    try:
        since = queries.parse_since(args.since)
    except ValueError as e:
        raise UsageError(str(e)) from None
    conn = queries.open_db(_state(args, config))
    sites = suggest.gather(conn, args.app, since)
    if not sites:
        known = queries.apps(conn)
        raise NotFound(f"no records of app {args.app!r} since {_when(since)} in the audit "
                       f"(apps: {', '.join(known) or 'none yet'})")
    current = None  # the app's policy now: its listeners and identify: are kept
    try:
        from hush.daemon.policy.loader import load

        current = load([paths.policies(args.policies, config.policies)], config.parse_context).policies.get(args.app)
    except (LoadError, OSError) as e:
        print(f"hush: the current policies do not load ({str(e).splitlines()[0]}); no listen: copied",
              file=sys.stderr)
    print(suggest.suggest(args.app, sites, current, args.since), end="")
    return ExitStatus.OK


def _headers(raw: list[str]) -> dict[str, str]:
    """A repeated header's values joined with ', ', as the proxy hands them to the policy
    (so two --header 'Host: …' are refused, as two Host headers are)."""
    out: dict[str, str] = {}
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header {item!r} must look like 'Name: value'")
        key = next((k for k in out if k.lower() == name.strip().lower()), name.strip())
        out[key] = f"{out[key]}, {value.strip()}" if key in out else value.strip()
    return out


def cmd_explain(args, config: Config) -> int:
    from hush.addons.classify import kind_of
    from hush.daemon.policy import RequestInfo
    from hush.daemon.policy.loader import load_layers

    policyset = load_layers([paths.policies(args.policies, config.policies)], config.organisation_policies,
                            config.parse_context)
    if args.app not in policyset.policies:
        raise NotFound(f"no policy for app {args.app!r} (apps: {', '.join(sorted(policyset.policies))})")
    headers = _headers(args.header)
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        probe = RequestInfo.from_url(args.url, args.method, headers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    req = RequestInfo.from_url(args.url, args.method, headers,
                               kind_of(lower.get("user-agent"), lower.get("accept"), probe.path))
    decision = policyset.decide(args.app, req)
    connect = policyset.decide_connect(args.app, req.host, req.port)
    layers = {layer: policyset.decide_layer(args.app, layer, req) for layer in ("user", "organisation")}
    result = {
        "app": args.app,
        "url": args.url,
        "kind": req.kind,
        "decision": decision.action.name,
        "action": decision.action.describe(),
        "rule": decision.rule.index if decision.rule else None,
        "source": decision.ref,
        "by": decision.describe(),
        "connection_level": connect is not None,
        "tls_intercepted": req.scheme == "https" and connect is None,
        "policy_version": policyset.version,
        "layer": decision.layer,  # which layer decided: user, organisation (None: hush refused it)
        "layers": {layer: None if d is None else {"decision": d.action.name, "action": d.action.describe(),
                                                 "rule": d.rule.index if d.rule else None, "source": d.ref,
                                                 "by": d.describe()}
                   for layer, d in layers.items()},
    }
    if _fmt(args) == "json":
        _print_json(result)
        return ExitStatus.OK
    print(f"{decision.action.describe()}   by {decision.describe()}")
    if layers["organisation"] is not None:  # both layers, and which decided
        for layer, d in layers.items():
            mark = "   ← applies" if layer == decision.layer else ""
            print(f"  {layer + ':':<13} " + ("no policy for this app" if d is None else
                                             f"{d.action.describe()}   by {d.describe()}{mark}"))
    if req.scheme == "https":
        if connect is not None:
            print(f"decided at CONNECT time ({connect.action.name}, {connect.describe()}): TLS is not intercepted")
        else:
            print("decided per request: TLS to this host is intercepted, the app must trust hush's CA")
    print(f"kind: {req.kind}; policy set {policyset.version}")
    return ExitStatus.OK


# -- audit ------------------------------------------------------------------------


def _state(args, config) -> Path:
    return paths.state_dir(args.state_dir, config.state_dir)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


TAIL_HEADER = ("id", "time", "app", "decision", "method", "ip", "url", "rule")


def _row(r: dict) -> list[str]:
    """An audit record as a row of ``hush audit tail``: ip says whether the site saw the user's address.
    A connection's row once it has ended (``-f`` shows it again then) says so, with its bytes."""
    where = r["url"] or f"{r['host']}:{r['port']}"
    if r.get("conn") and r.get("ended") is not None:
        where += (f" (closed after {_duration(r.get('duration_ms'))}: {_bytes(r.get('bytes_up'))} up, "
                  f"{_bytes(r.get('bytes_down'))} down)")
    return [str(r["id"]), _when(r["ts"]), r["app"] or "?", r["decision"], r["method"] or "-",
            "to site" if r["ip_exposed"] else "hidden", where, r["rule"] or r["note"] or "-"]


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "?"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def cmd_audit_tail(args, config: Config) -> int:
    from hush.daemon.audit import queries

    conn = queries.open_db(_state(args, config))
    fmt = _fmt(args)
    records = queries.tail(conn, args.n)
    if not records and fmt == "table" and not args.follow:
        print("no records yet")
    if fmt == "json" and not args.follow:
        _print_json(records)
        return ExitStatus.OK
    last = 0
    widths: list[int] = [0] * len(TAIL_HEADER)  # the first rows set them; later ones (with -f) keep them
    header: Sequence[str] = TAIL_HEADER
    open_tunnels: dict[int, None] = {}  # -f: connection rows not yet ended, shown again when they are
    while True:
        if fmt == "json":
            lines = [json.dumps(r) for r in records]  # -f --json: JSON Lines, one record a line
        else:
            lines = _table(header, [_row(r) for r in records], right=(0,), widths=widths) if records else []
            header = () if records else header
        for line in lines:
            print(line, flush=True)
        for r in records:
            last = max(last, r["id"])
            if r.get("conn") and r.get("ended") is None:
                open_tunnels[r["id"]] = None
            else:
                open_tunnels.pop(r["id"], None)
        while len(open_tunnels) > 10_000:  # bounded: the oldest are forgotten (still in the audit)
            del open_tunnels[next(iter(open_tunnels))]
        if not args.follow:
            return ExitStatus.OK
        time.sleep(0.5)
        records = queries.tail(conn, 1000, after_id=last)
        new = {r["id"] for r in records}
        records = sorted([*records, *(r for r in queries.ended(conn, list(open_tunnels)) if r["id"] not in new)],
                         key=lambda r: (r.get("ended") or r["ts"], r["id"]))


def cmd_audit_summary(args, config: Config) -> int:
    from hush.daemon.audit import queries

    try:
        since = queries.parse_since(args.since) if args.since else None
    except ValueError as e:
        raise UsageError(str(e)) from None
    conn = queries.open_db(_state(args, config))
    result = queries.summary(conn, since, args.app)
    if args.app is not None and not result["apps"]:
        known = queries.apps(conn)
        if args.app not in known:
            raise NotFound(f"no app {args.app!r} in the audit (apps: {', '.join(known) or 'none yet'})")
    if _fmt(args) == "json":
        _print_json(result)
        return ExitStatus.OK
    if not result["apps"]:
        print("no records" + (f" of {args.app}" if args.app else "") + (f" since {_when(since)}" if since else ""))
    for app, s in result["apps"].items():
        decisions = ", ".join(f"{k} {v}" for k, v in s["by_decision"].items())
        prevented = ", ".join(f"{k} {v}" for k, v in s["prevented"].items() if v)
        print(f"{app}: {_n(s['requests'], 'request')} to {_n(s['sites'], 'site')} ({decisions})")
        print(f"  IP reached the site {_n(s['ip_exposed'], 'time')}; prevented: {prevented or 'nothing'}")
        timing = ", ".join(f"{k} {v}" for k, v in s["timing"].items() if v)
        if timing:
            print(f"  timing: {timing}")
        print("  top sites: " + ", ".join(f"{_human(t['site'])} ({t['requests']})" for t in s["top_sites"]))
    return ExitStatus.OK


def cmd_audit_show(args, config: Config) -> int:
    from hush.daemon.audit import queries

    record = queries.show(queries.open_db(_state(args, config)), args.id)
    if record is None:
        raise NotFound(f"no audit record {args.id}")
    if _fmt(args) == "json":
        _print_json(record)
    else:
        width = max(len(key) for key in record)
        for key, value in record.items():
            text = f"{_when(value)} ({value})" if key in ("ts", "ended") and value else _human(value)
            print(f"{key:>{width}}: {text}")
    return ExitStatus.OK


def _since(args) -> float | None:
    from hush.daemon.audit import queries

    try:
        return queries.parse_since(args.since) if getattr(args, "since", None) else None
    except ValueError as e:
        raise UsageError(str(e)) from None


def cmd_audit_export(args, config: Config) -> int:
    import csv

    from hush.daemon.audit import queries
    from hush.daemon.audit.store import COLUMNS

    rows = queries.records(queries.open_db(_state(args, config)), since=_since(args) or 0)
    if args.format == "csv":
        out = csv.writer(sys.stdout)
        out.writerow(["id", *COLUMNS])
        for row in rows:
            out.writerow([row["id"], *(row[c] for c in COLUMNS)])
    else:
        for row in rows:
            print(json.dumps(queries.as_dict(row)))
    return ExitStatus.OK


def cmd_audit_purge(args, config: Config) -> int:
    from hush.daemon.audit import queries

    path = _state(args, config) / "audit.db"
    if not path.exists():
        raise FileNotFoundError(f"no audit database at {path}")
    try:
        cutoff = float("inf") if args.all else queries.parse_since(args.before) if args.before else None
    except ValueError as e:
        raise UsageError(str(e).replace("--since", "--before")) from None
    deleted = queries.purge(path, cutoff)
    if _fmt(args, default="table") == "json":
        _print_json({"deleted": deleted})
    else:
        print(f"deleted {_n(deleted, 'record')}")
    return ExitStatus.OK


def cmd_audit_report(args, config: Config) -> int:
    from hush.daemon.audit import queries, report

    state = _state(args, config)
    page = report.render(queries.open_db(state), _since(args))
    target = Path(args.html) if args.html else state / datetime.now().strftime("report-%Y-%m-%d-%H%M%S.html")
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as e:
        print(f"hush: cannot write the report to {target}: {e.strerror or e}", file=sys.stderr)
        return ExitStatus.ERROR
    if _fmt(args, default="table") == "json":
        _print_json({"wrote": str(target)})
    else:
        print(f"wrote {target}")
    return ExitStatus.OK


# -- doctor, install-unit ------------------------------------------------------------


def cmd_doctor(args, config: Config) -> int:
    from hush.daemon import control
    from hush.daemon.cli import doctor

    try:
        control.request(_state(args, config), timeout=2)
        running = True
    except (ConnectionError, OSError, ValueError):
        running = False
    findings = doctor.run_checks(args.policies, args.state_dir, args.config, running)
    if _fmt(args) == "json":
        _print_json(doctor.as_json(findings))
    else:
        marks = {"ok": "✓", "warn": "!", "fail": "✗"}
        for f in findings:
            print(f"{marks[f.level]} {f.check}: {f.message}")
            if f.fix and f.level != "ok":
                print(f"    fix: {f.fix}")
    return ExitStatus.ERROR if any(f.level == "fail" for f in findings) else ExitStatus.OK


def cmd_install_unit(args, config: Config) -> int:
    import shutil

    import hush.systemd

    template = next(Path(p) / "hush.service" for p in hush.systemd.__path__ if (Path(p) / "hush.service").exists())
    here = Path(sys.executable).parent / "hush"
    binary = str(here if here.exists() else Path(shutil.which("hush") or "hush").resolve())
    unit = template.read_text().replace("%h/.local/bin/hush", binary)
    if args.print:
        print(unit, end="")
        return ExitStatus.OK
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    directory = Path(args.dir) if args.dir else base / "systemd" / "user"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hush.service").write_text(unit)
    print(f"wrote {directory / 'hush.service'} (ExecStart={binary} run)")
    print("next: systemctl --user daemon-reload && systemctl --user enable --now hush")
    print("logs: journalctl --user -u hush -f;  reload policies: systemctl --user reload hush")
    return ExitStatus.OK


# -- tor --------------------------------------------------------------------------


def _tor_controller(args, config: Config):
    """A stem Controller for hush's tor: the one it launched (its control port
    file in the state dir) or the one the config attaches to."""
    from hush.daemon.torconfig import control_port_file, read_control_port

    if config.tor.mode == "attach":
        target = config.tor.attach_to
    else:
        port_file = control_port_file(_state(args, config))
        if not port_file.exists():
            raise Unreachable(f"hush's tor is not running (no {port_file}; is hush running with this --state-dir?)")
        target = read_control_port(port_file)
    from stem import SocketError  # only now: without a tor to ask, hush tor answers without importing stem

    from hush.daemon.tor import open_controller

    try:
        return open_controller(target, config.tor.password)
    except SocketError as e:
        raise Unreachable(f"cannot reach tor's control port {target}: {e}") from None


def cmd_tor_newnym(args, config: Config) -> int:
    from stem import Signal

    with _tor_controller(args, config) as controller:
        wait = controller.get_newnym_wait()
        controller.signal(Signal.NEWNYM)
    print("NEWNYM sent: new streams get new circuits" +
          (f" (tor accepts the next one in {wait:.0f}s)" if wait > 0 else ""))
    return ExitStatus.OK


def cmd_tor_status(args, config: Config) -> int:
    from hush.daemon.tor import parse_bootstrap

    try:
        opened = _tor_controller(args, config)
    except Unreachable as e:
        if _fmt(args) != "json":
            raise
        _print_json({"running": False, "state_dir": str(_state(args, config)), "error": str(e)})
        return ExitStatus.DAEMON_UNREACHABLE
    with opened as controller:
        phase = parse_bootstrap(controller.get_info("status/bootstrap-phase", ""))
        status = {
            "pid": int(controller.get_info("process/pid", "0")) or None,
            "version": str(controller.get_version()),
            "bootstrap": phase.progress,
            "bootstrap_summary": phase.summary,
            "circuit_established": controller.get_info("status/circuit-established", "0") == "1",
            "circuits": len(controller.get_circuits([])),
            "http_tunnel": [f"{h}:{p}" for h, p in controller.get_listeners("HTTPTUNNEL", [])],
            "socks": [f"{h}:{p}" for h, p in controller.get_listeners("SOCKS", [])],
        }
    if _fmt(args) == "json":
        _print_json(status)
    else:
        ok = status["bootstrap"] == 100 and status["circuit_established"]
        print(f"tor {status['version']} (pid {_human(status['pid'])}): {'ready' if ok else 'not ready'}")
        print(f"  bootstrapped {status['bootstrap']}% ({status['bootstrap_summary']}); "
              f"{_n(status['circuits'], 'circuit')}; circuit established: {_human(status['circuit_established'])}")
        print(f"  HTTPTunnelPort {', '.join(status['http_tunnel']) or '-'}; "
              f"SocksPort {', '.join(status['socks']) or '-'}")
    return ExitStatus.OK


# -- ca ---------------------------------------------------------------------------


def cmd_ca_path(args, config: Config) -> int:
    import os

    from mitmproxy import certs

    state = _state(args, config)
    os.umask(0o077)
    paths.ca_dir(state).mkdir(parents=True, exist_ok=True, mode=0o700)
    certs.CertStore.from_store(paths.ca_dir(state), "mitmproxy", 2048)
    if _fmt(args, default="table") == "json":
        _print_json({"ca_cert": str(paths.ca_cert(state))})
    else:
        print(paths.ca_cert(state))
    return ExitStatus.OK


# -- demo -------------------------------------------------------------------------


def cmd_demo(args, config: Config) -> int:
    from hush.daemon.cli import demo

    return demo.run(tor=args.tor)


# Each command (a group's with its subcommand) and the function that runs it.
COMMANDS: dict[tuple[str, ...], Callable[[argparse.Namespace, Config], int]] = {
    ("run",): cmd_run,
    ("status",): cmd_status,
    ("stop",): cmd_stop,
    ("reload",): cmd_reload,
    ("ui",): cmd_ui,
    ("policy", "check"): cmd_policy_check,
    ("policy", "explain"): cmd_explain,
    ("policy", "suggest"): cmd_policy_suggest,
    ("audit", "tail"): cmd_audit_tail,
    ("audit", "summary"): cmd_audit_summary,
    ("audit", "show"): cmd_audit_show,
    ("audit", "export"): cmd_audit_export,
    ("audit", "purge"): cmd_audit_purge,
    ("audit", "report"): cmd_audit_report,
    ("launch",): cmd_launch,
    ("demo",): cmd_demo,
    ("doctor",): cmd_doctor,
    ("install-unit",): cmd_install_unit,
    ("tor", "status"): cmd_tor_status,
    ("tor", "newnym"): cmd_tor_newnym,
    ("ca", "path"): cmd_ca_path,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
