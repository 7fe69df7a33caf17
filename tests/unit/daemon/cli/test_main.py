import json
import os
import textwrap

import pytest

from hush.daemon.audit.store import AuditWriter
from hush.daemon.cli.main import main
from hush.daemon.exitstatus import ExitStatus

POLICY = textwrap.dedent("""\
    app: x
    listen: 8101
    default: allow
    rules:
      - name: previews
        match: {header: {user-agent: "WhatsApp/*"}}
        action: block
      - match: {host: tracker.com}
        action: block
    examples:
      - url: https://a.org/
        headers: {User-Agent: WhatsApp/2}
        expect: block
""")


@pytest.fixture
def policies(tmp_path):
    d = tmp_path / "policies"
    d.mkdir()
    (d / "x.yaml").write_text(POLICY)
    return d


def test_check_ok(policies, capsys):
    assert main(["policy", "check", str(policies)]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert out == f"ok: 1 policy, 2 rules, 1 example pass (set {_version(policies)})\n"


def test_check_uses_hush_policies_env(policies, capsys, monkeypatch):
    monkeypatch.setenv("HUSH_POLICIES", str(policies))
    assert main(["policy", "check"]) == ExitStatus.OK


def test_check_invalid_prints_every_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("app: x\nlisten: 8101\ndefault: drop\nrules:\n  - {action: block, status: 9}\n")
    assert main(["policy", "check", str(bad)]) == ExitStatus.POLICY_INVALID
    assert capsys.readouterr().err.splitlines() == [
        f"{bad}:3:10: unknown action 'drop' "
        "(expected one of: allow, ask, block, debounce, delay, learn, passthrough, strip, tor)",
        f"{bad}:5:29: status must be between 100 and 599, not 9",
    ]


def test_check_failing_example(tmp_path, capsys):
    p = tmp_path / "x.yaml"
    p.write_text("app: x\nlisten: 8101\ndefault: allow\nexamples:\n  - {url: 'https://a/', expect: block}\n")
    assert main(["policy", "check", str(p)]) == ExitStatus.EXAMPLES_FAILED
    assert capsys.readouterr().err == f"{p}:5:5: example expects block but default ({p}:3) decides allow\n"


def test_explain_table(policies, capsys):
    argv = ["policy", "explain", "--policies", str(policies), "--app", "x", "https://a.org/p",
            "--header", "User-Agent: WhatsApp/2.19", "--table"]
    assert main(argv) == ExitStatus.OK
    assert capsys.readouterr().out.splitlines() == [
        f"block (answer 403)   by rule 1 'previews' ({policies}/x.yaml:5)",
        "decided per request: TLS to this host is intercepted, the app must trust hush's CA",
        "kind: preview; policy set " + _version(policies),
    ]


def _version(policies):
    from hush.daemon.policy import load

    return load([policies]).version


def test_explain_json_and_connect_level(policies, capsys):
    # tracker.com is matched at CONNECT time only if no earlier rule needs the request;
    # the User-Agent rule comes first, so it is inspected.
    assert main(["policy", "explain", "--policies", str(policies), "--app", "x", "https://tracker.com/",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "block" and result["rule"] == 2
    assert result["connection_level"] is False and result["tls_intercepted"] is True


def test_explain_unknown_app_and_bad_url(policies, capsys):
    argv = ["policy", "explain", "--policies", str(policies), "--app", "nope", "https://a/"]
    assert main(argv) == ExitStatus.NOT_FOUND
    assert capsys.readouterr().err == "hush: no policy for app 'nope' (apps: x)\n"
    assert main(["policy", "explain", "--policies", str(policies), "--app", "x", "a.org"]) == ExitStatus.USAGE
    assert main(["policy", "explain", "--policies", str(policies), "--app", "x", "https://a/",
                 "--header", "nocolon"]) == ExitStatus.USAGE


def test_usage_errors_exit_2(capsys):
    assert main([]) == ExitStatus.USAGE
    assert main(["policy", "frobnicate"]) == ExitStatus.USAGE


def _fill(state, records):
    writer = AuditWriter(state / "audit.db")
    for r in records:
        writer.submit(r)
    writer.close()


def rec(**kw):
    base = {"ts": 1795000000.0, "app": "x", "listener": "regular@127.0.0.1:8101", "level": "request",
            "method": "GET", "scheme": "https", "host": "a.org", "port": 443, "site": "a.org",
            "url": "https://a.org/", "kind": "other", "decision": "block", "rule": "p/x.yaml:5",
            "policy_version": "v1", "status": 403, "ip_exposed": False,
            "carried": {"user_agent": "WhatsApp/2", "cookies": 1, "referer": None, "accept_language": None,
                        "range": None, "authorization": False}, "sent": None}
    base.update(kw)
    return base


def test_audit_commands(tmp_path, capsys):
    state = tmp_path / "state"
    _fill(state, [rec(), rec(decision="allow", ip_exposed=True, sent={"user_agent": "WhatsApp/2", "cookies": 1}),
                  rec(app="y", site="b.org", host="b.org")])
    assert main(["audit", "summary", "--state-dir", str(state), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    x = summary["apps"]["x"]
    assert x["requests"] == 2 and x["by_decision"] == {"block": 1, "allow": 1}
    assert x["prevented"] == {"ip": 1, "user_agent": 1, "cookies": 1, "referer": 0, "accept_language": 0}
    assert x["ip_exposed"] == 1 and x["top_sites"] == [{"site": "a.org", "requests": 2}]
    assert main(["audit", "summary", "--state-dir", str(state), "--app", "y", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["apps"]) == ["y"]

    assert main(["audit", "tail", "-n", "2", "--state-dir", str(state), "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [2, 3]
    assert main(["audit", "show", "1", "--state-dir", str(state), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["carried"]["cookies"] == 1 and shown["ip_exposed"] is False
    assert main(["audit", "show", "99", "--state-dir", str(state)]) == ExitStatus.NOT_FOUND
    assert main(["audit", "summary", "--state-dir", str(state), "--since", "yesterday"]) == ExitStatus.USAGE


def test_audit_summary_table(tmp_path, capsys):
    state = tmp_path / "state"
    _fill(state, [rec(), rec()])
    assert main(["audit", "summary", "--state-dir", str(state), "--table"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "x: 2 requests to 1 site (block 2)",
        "  IP reached the site 0 times; prevented: ip 2, user_agent 2, cookies 2",
        "  top sites: a.org (2)",
    ]


def test_audit_without_database(tmp_path, capsys):
    assert main(["audit", "tail", "--state-dir", str(tmp_path)]) == ExitStatus.NOT_FOUND
    assert "no audit database" in capsys.readouterr().err


def test_ca_path_creates_a_private_ca(tmp_path, capsys):
    assert main(["ca", "path", "--state-dir", str(tmp_path)]) == 0
    cert = tmp_path / "ca" / "mitmproxy-ca-cert.pem"
    assert capsys.readouterr().out == f"{cert}\n"
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "ca" / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca").stat().st_mode & 0o777 == 0o700


def test_invalid_config_is_located(tmp_path, policies, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("audit:\n  redaction: none\nlog_level: loud\n")
    assert main(["policy", "check", str(policies), "--config", str(cfg)]) == ExitStatus.POLICY_INVALID
    assert capsys.readouterr().err.splitlines() == [
        f"{cfg}:2:14: unknown audit redaction 'none' (expected one of: full, no-query, site)",
        f"{cfg}:3:12: unknown log_level 'loud' (expected one of: debug, error, info, warning)",
    ]


@pytest.mark.parametrize("headers, by", [
    (["Host: tracker.com:"], "rule 2"),  # an empty port: still tracker.com
    (["Host: tracker.com.:"], "rule 2"),
    (["Host: a.org", "host: tracker.com"], "refused: the Host header 'a.org, tracker.com'"),  # two Host headers
    (["Host: a.org", "Host: a.org"], "refused: the Host header"),
    (["Host: user@tracker.com"], "refused: the Host header"),
    (["Host: tracker.com:http"], "refused: the Host header"),
])
def test_explain_decides_the_host_header_as_the_proxy_does(policies, capsys, headers, by):
    argv = ["policy", "explain", "--policies", str(policies), "--app", "x", "https://a.org/", "--json"]
    assert main(argv + [a for h in headers for a in ("--header", h)]) == ExitStatus.OK
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "block" and result["by"].startswith(by), result


def _leaves(parser, path=()):
    """Every runnable command of an argparse parser, as its words: ("audit", "tail"), ("run",)."""
    import argparse

    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return {path}
    return {leaf for name, sub in subparsers[0].choices.items() for leaf in _leaves(sub, (*path, name))}


def test_every_command_has_its_function_and_every_function_a_command():
    from hush.daemon.cli.main import COMMANDS, build_parser

    assert _leaves(build_parser()) == set(COMMANDS)


# -- item 14 of the issues: version, JSON, exit codes, global --state-dir, human output ----------------


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"hush {version('hush')}\n"


def test_help_shows_no_docstring_markup(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "::" not in out and ":class:" not in out and "``" not in out
    assert out.endswith("exit codes: 0 ok, 1 error, 2 usage, 3 policy invalid, 4 a listener could not bind,\n"
                        "  5 a policy example failed, 6 not found, 7 the daemon is unreachable\n")


def test_state_dir_before_the_subcommand(tmp_path, capsys):
    state, other = tmp_path / "state", tmp_path / "other"
    _fill(state, [rec()])
    assert main(["--state-dir", str(state), "audit", "tail", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [1]
    # the one after the subcommand wins
    assert main(["--state-dir", str(other), "audit", "tail", "--state-dir", str(state), "--json"]) == 0
    assert main(["--state-dir", str(other), "audit", "tail"]) == ExitStatus.NOT_FOUND
    assert main(["--state-dir", str(other), "status", "--json"]) == ExitStatus.DAEMON_UNREACHABLE
    assert json.loads(capsys.readouterr().out.split("\n]\n", 1)[1])["state_dir"] == str(other)


def test_check_json(policies, capsys):
    assert main(["policy", "check", str(policies), "--json"]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert json.loads(out) == {"ok": True, "apps": ["x"], "rules": 2, "examples": 1, "failures": [],
                               "policy_version": _version(policies)}
    assert out == json.dumps(json.loads(out), indent=2) + "\n"  # the one JSON style


def test_check_json_with_a_failing_example(tmp_path, capsys):
    p = tmp_path / "x.yaml"
    p.write_text("app: x\nlisten: 8101\ndefault: allow\nexamples:\n  - {url: 'https://a/', expect: block}\n")
    assert main(["policy", "check", str(p), "--json"]) == ExitStatus.EXAMPLES_FAILED
    out, err = capsys.readouterr()
    failure = f"{p}:5:5: example expects block but default ({p}:3) decides allow"
    assert json.loads(out)["ok"] is False and json.loads(out)["failures"] == [failure]
    assert err == failure + "\n"


def test_status_and_tor_without_a_daemon_exit_7(tmp_path, capsys):
    state = str(tmp_path)
    assert main(["status", "--state-dir", state, "--table"]) == ExitStatus.DAEMON_UNREACHABLE
    assert capsys.readouterr().out == (f"not running: hush is not running with --state-dir {state} "
                                       f"(no daemon at {state}/control.sock)\n")
    assert main(["tor", "status", "--state-dir", state, "--table"]) == ExitStatus.DAEMON_UNREACHABLE
    assert capsys.readouterr().err == (f"hush: hush's tor is not running (no {state}/tor/control-port; "
                                       "is hush running with this --state-dir?)\n")
    assert main(["tor", "status", "--state-dir", state, "--json"]) == ExitStatus.DAEMON_UNREACHABLE
    assert json.loads(capsys.readouterr().out)["running"] is False
    assert main(["tor", "newnym", "--state-dir", state]) == ExitStatus.DAEMON_UNREACHABLE


@pytest.mark.parametrize("argv, code", [
    (["policy", "check", "{policies}"], ExitStatus.OK),
    (["policy", "check", "{tmp}/nosuch.yaml"], ExitStatus.POLICY_INVALID),
    (["policy", "explain", "--policies", "{policies}", "--app", "nosuch", "https://a/"], ExitStatus.NOT_FOUND),
    (["policy", "explain", "--policies", "{policies}", "--app", "x", "not a url"], ExitStatus.USAGE),
    (["audit", "tail", "--state-dir", "{tmp}"], ExitStatus.NOT_FOUND),
    (["audit", "tail", "--state-dir", "{state}"], ExitStatus.OK),
    (["audit", "show", "99", "--state-dir", "{state}"], ExitStatus.NOT_FOUND),
    (["audit", "summary", "--app", "nosuch", "--state-dir", "{state}"], ExitStatus.NOT_FOUND),
    (["audit", "summary", "--since", "soon", "--state-dir", "{state}"], ExitStatus.USAGE),
    (["audit", "export", "--since", "soon", "--state-dir", "{state}"], ExitStatus.USAGE),
    (["audit", "purge", "--before", "soon", "--state-dir", "{state}"], ExitStatus.USAGE),
    (["audit", "purge", "--all", "--state-dir", "{tmp}"], ExitStatus.NOT_FOUND),
    (["audit", "report", "--since", "soon", "--state-dir", "{state}"], ExitStatus.USAGE),
    (["status", "--state-dir", "{tmp}"], ExitStatus.DAEMON_UNREACHABLE),
    (["tor", "status", "--state-dir", "{tmp}"], ExitStatus.DAEMON_UNREACHABLE),
    (["launch", "--app", "x", "--state-dir", "{tmp}", "--", "true"], ExitStatus.DAEMON_UNREACHABLE),
    (["frobnicate"], ExitStatus.USAGE),
])
def test_exit_codes_as_the_readme_says(argv, code, policies, tmp_path, capsys):
    state = tmp_path / "state"
    _fill(state, [rec()])
    words = [a.format(policies=policies, tmp=tmp_path, state=state) for a in argv]
    assert main(words) == code


def test_audit_tail_table(tmp_path, capsys):
    from hush.daemon.cli.main import _when

    state = tmp_path / "state"
    _fill(state, [rec(), rec(decision="tor-unavailable", rule=None, note="tor: not bootstrapped", ip_exposed=True,
                             url=None, method="CONNECT")])
    assert main(["audit", "tail", "--state-dir", str(state), "--table"]) == 0
    when = _when(1795000000.0)
    assert capsys.readouterr().out.splitlines() == [
        f"id  time{' ' * (len(when) - 4)}  app  decision         method   ip       url             rule",
        f" 1  {when}  x    block            GET      hidden   https://a.org/  p/x.yaml:5",
        f" 2  {when}  x    tor-unavailable  CONNECT  to site  a.org:443       tor: not bootstrapped",
    ]


def test_audit_show_table_has_no_python_reprs(tmp_path, capsys):
    state = tmp_path / "state"
    _fill(state, [rec(ip_exposed=True)])
    assert main(["audit", "show", "1", "--state-dir", str(state), "--table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "          note: -" in lines and "    ip_exposed: yes" in lines
    assert ("       carried: accept_language -, authorization no, cookies 1, range -, referer -, "
            "user_agent WhatsApp/2") in lines
    assert not any(word in line for line in lines for word in ("None", "True", "False", "{", "'"))


def test_audit_summary_plurals_and_an_unknown_app(tmp_path, capsys):
    state = tmp_path / "state"
    _fill(state, [rec(ip_exposed=True)])
    assert main(["audit", "summary", "--state-dir", str(state), "--table"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "x: 1 request to 1 site (block 1)",
        "  IP reached the site 1 time; prevented: user_agent 1, cookies 1",
        "  top sites: a.org (1)",
    ]
    assert main(["audit", "summary", "--app", "nosuch", "--state-dir", str(state)]) == ExitStatus.NOT_FOUND
    assert capsys.readouterr().err == "hush: no app 'nosuch' in the audit (apps: x)\n"
    assert main(["audit", "summary", "--app", "x", "--since", "2099-01-01", "--state-dir", str(state),
                 "--table"]) == 0
    assert capsys.readouterr().out.startswith("no records of x since 2099-01-01")


def test_json_of_the_commands_that_act(tmp_path, capsys):
    state = tmp_path / "state"
    _fill(state, [rec()])
    assert main(["audit", "report", "--html", str(tmp_path / "r.html"), "--state-dir", str(state), "--json"]) == 0
    assert capsys.readouterr().out == json.dumps({"wrote": str(tmp_path / "r.html")}, indent=2) + "\n"
    assert main(["audit", "purge", "--all", "--state-dir", str(state), "--json"]) == 0
    assert capsys.readouterr().out == json.dumps({"deleted": 1}, indent=2) + "\n"
    assert main(["audit", "tail", "--state-dir", str(state), "--table"]) == 0
    assert capsys.readouterr().out == "no records yet\n"
    assert main(["audit", "tail", "--state-dir", str(state), "--json"]) == 0
    assert capsys.readouterr().out == "[]\n"
    assert main(["ca", "path", "--state-dir", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ca_cert": str(state / "ca" / "mitmproxy-ca-cert.pem")}


def test_audit_summary_of_a_row_without_a_site(tmp_path, capsys):
    state = tmp_path / "state"
    _fill(state, [rec(site=None, host=None, url=None, carried=None)])
    assert main(["audit", "summary", "--state-dir", str(state), "--table"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "x: 1 request to 0 sites (block 1)",
        "  IP reached the site 0 times; prevented: ip 1",
        "  top sites: - (1)",
    ]


def test_explain_shows_both_layers_and_which_decided(policies, tmp_path, capsys):
    floor = tmp_path / "floor"
    floor.mkdir(mode=0o755)
    os.chmod(floor, 0o755)
    (floor / "x.yaml").write_text("app: x\ndefault: allow\nrules:\n  - {match: {host: a.org}, action: block}\n")
    os.chmod(floor / "x.yaml", 0o644)
    (tmp_path / "config.yaml").write_text(f"organisation_policies: {floor}\n")
    argv = ["policy", "explain", "--policies", str(policies), "--config", str(tmp_path / "config.yaml"),
            "--app", "x", "https://a.org/p"]
    assert main([*argv, "--table"]) == ExitStatus.OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        f"block (answer 403)   by rule 1 ({floor}/x.yaml:4)",
        f"  user:         allow   by default ({policies}/x.yaml:3)",
        f"  organisation: block (answer 403)   by rule 1 ({floor}/x.yaml:4)   ← applies",
    ]
    assert main([*argv, "--json"]) == ExitStatus.OK
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "block" and result["layer"] == "organisation"
    assert result["layers"]["user"]["decision"] == "allow" and result["layers"]["user"]["rule"] is None
    assert result["layers"]["organisation"] == {"decision": "block", "action": "block (answer 403)", "rule": 1,
                                                "source": f"{floor}/x.yaml:4", "by": f"rule 1 ({floor}/x.yaml:4)"}
    os.chmod(floor / "x.yaml", 0o664)  # a floor others can write is refused, here as in the daemon
    assert main([*argv, "--json"]) == ExitStatus.POLICY_INVALID
    assert "refused: organisation policies must be writable only by root" in capsys.readouterr().err


def test_audit_tail_follow_shows_a_connection_again_when_it_ends(tmp_path):
    """``audit tail -f`` prints a connection's row when it is decided, and again, with its bytes and
    duration, when the daemon completes the row in place (same id) at its close."""
    import queue
    import subprocess
    import sys
    import threading
    import time

    lines: queue.Queue[str] = queue.Queue()

    def line(proc) -> str:
        try:
            return lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError("audit tail -f printed nothing for 60 s") from None

    state = tmp_path / "state"
    tunnel = rec(level="connect", method="CONNECT", url=None, decision="passthrough", conn="c1", ip_exposed=True)
    _fill(state, [tunnel])
    tail = subprocess.Popen([sys.executable, "-m", "hush.daemon.cli", "audit", "tail", "-f", "--table",
                             "--state-dir", str(state)], stdout=subprocess.PIPE, text=True)
    threading.Thread(target=lambda: [lines.put(x) for x in tail.stdout], daemon=True).start()
    try:
        assert line(tail).split()[:2] == ["id", "time"]
        opened = line(tail)
        assert "a.org:443" in opened and "closed" not in opened
        time.sleep(0.3)
        _fill(state, [{**tunnel, "ended": tunnel["ts"] + 2.5, "duration_ms": 2500.0, "bytes_up": 1200,
                       "bytes_down": 3 * 1024 * 1024}])
        again = line(tail)
        assert again.split()[0] == "1" and "a.org:443 (closed after 2.5 s: 1.2 KB up, 3.0 MB down)" in again, again
    finally:
        tail.kill()
        tail.wait()


def test_main_leaves_the_garbage_collector_as_it_found_it(capsys):
    """main() turns collection off while a short command runs (start-up time) and back on after."""
    import gc

    assert gc.isenabled()
    assert main(["policy", "check", "--json"]) in (0, 5)
    assert gc.isenabled()
    assert main(["--state-dir", "/nonexistent", "nosuch"]) == 2
    assert gc.isenabled()
