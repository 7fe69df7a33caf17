from pathlib import Path

import pytest

from hush.daemon.config import Config, load_config, parse_config
from hush.daemon.yamlschema import LoadError


def test_defaults():
    c = load_config(None)
    assert c == Config() and c.redaction == "site" and c.parse_context.user_agent.startswith("Mozilla/5.0")


def test_full_config_resolves_relative_paths():
    c = parse_config("/etc/hush/config.yaml", (
        "state_dir: state\npolicies: /abs/policies\naudit: {redaction: no-query}\n"
        "strip: {user_agent: Generic/1}\nupstream_ca: ca.pem\nlog_level: debug\n"))
    assert c.state_dir == Path("/etc/hush/state") and c.policies == Path("/abs/policies")
    assert c.upstream_ca == Path("/etc/hush/ca.pem") and c.redaction == "no-query"
    assert c.parse_context.user_agent == "Generic/1" and c.log_level == "debug"


@pytest.mark.parametrize("text, message", [
    ("state_dir: 5\n", "c.yaml:1:12: state_dir must be a string, not the number 5; quote it"),
    ("audit: {redaction: off}\n",
     "c.yaml:1:20: audit redaction: 'off' is read by YAML 1.1 as a boolean; quote it (\"off\") if you mean the string"),
    ("audit: {keep: 3}\n",
     "c.yaml:1:9: unknown key 'keep' (expected one of: keep_days, redaction, ship, ship_queue, ship_redaction)"),
    ("listen: 1\n",
     "c.yaml:1:1: unknown key 'listen' (expected one of: allow_non_loopback_listeners, audit, limits, listen_host, "
     "log_level, organisation_policies, policies, state_dir, strip, timing, tor, ui, upstream_ca)"),
    ("limits: {max_headers: 0}\n", "c.yaml:1:23: limits max_headers must be between 1 and 10000, not 0"),
    ("limits: {max_headers: many}\n", "c.yaml:1:23: limits max_headers must be a whole number, not 'many'"),
    ("limits: {max_header_bytes: 100}\n",
     "c.yaml:1:28: limits max_header_bytes must be between 1024 and 1048576 bytes, not 100"),
    ("limits: {max_header_bytes: 2GiB}\n",
     "c.yaml:1:28: limits max_header_bytes must be a size such as 32KiB, 64KB or 16384, not '2GiB'"),
    ("limits: {max_header_bytes: 2MiB}\n",
     "c.yaml:1:28: limits max_header_bytes must be between 1024 and 1048576 bytes, not 2MiB"),
    ("limits: {header_count: 5}\n",
     "c.yaml:1:10: unknown key 'header_count' (expected one of: max_header_bytes, max_headers)"),
    ("listen_host: 0.0.0.0\n",
     "c.yaml:1:14: listen_host 0.0.0.0 is not a loopback address: hush listens on loopback only "
     "(allow_non_loopback_listeners: true in the config allows it)"),
    ("tor: {mode: attach}\n", "c.yaml:1:6: tor mode attach needs 'control' (HOST:PORT or a socket path)"),
    ("tor: {torrc: [SocksPort 9050]}\n", "c.yaml:1:15: torrc line 'SocksPort' is set by hush itself"),
])
def test_errors(text, message):
    with pytest.raises(LoadError) as e:
        parse_config("c.yaml", text)
    assert [str(x) for x in e.value.errors] == [message]


def test_unreadable(tmp_path):
    with pytest.raises(LoadError) as e:
        load_config(tmp_path / "missing.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'missing.yaml'}:1:1: cannot read:")


def test_organisation_policies_default_and_relative_path():
    assert Config().organisation_policies == Path("/etc/hush/policies")
    c = parse_config("/home/a/.config/hush/config.yaml", "organisation_policies: floor\n")
    assert c.organisation_policies == Path("/home/a/.config/hush/floor")


def test_listen_host_is_the_default_for_port_only_listeners():
    from hush.daemon.policy import build

    c = parse_config("c.yaml", "listen_host: 127.0.0.5\n")
    ps = build([("p.yaml", "app: a\nlisten: 8101\ndefault: allow\n")], c.parse_context)
    assert ps.listeners[0].spec == "regular@127.0.0.5:8101" and ps.listeners[0].app == "a"


def test_non_loopback_listeners_need_the_explicit_flag():
    from hush.daemon.policy import build

    policy = [("p.yaml", "app: a\nlisten: 192.0.2.10:8101\ndefault: allow\n")]
    with pytest.raises(LoadError):
        build(policy, parse_config("c.yaml", "log_level: info\n").parse_context)
    ps = build(policy, parse_config("c.yaml", "allow_non_loopback_listeners: true\n").parse_context)
    assert ps.specs == ["regular@192.0.2.10:8101"]


def test_limits():
    assert (Config().max_headers, Config().max_header_bytes) == (100, 32 * 1024)
    c = parse_config("c.yaml", "limits:\n  max_headers: 50\n  max_header_bytes: 16KiB\n")
    assert (c.max_headers, c.max_header_bytes) == (50, 16384)
    assert parse_config("c.yaml", "limits: {max_header_bytes: 65536}\n").max_header_bytes == 65536
    assert parse_config("c.yaml", "limits: {max_header_bytes: 64KB}\n").max_header_bytes == 64000


def test_audit_ship():
    from hush.daemon.audit.ship import Target

    assert parse_config("c.yaml", "audit: {ship: journald}\n").ship == Target("journald")
    journal = parse_config("c.yaml", "audit: {ship: {journald: /tmp/j.sock}, ship_queue: 50}\n")
    assert journal.ship == Target("journald", path="/tmp/j.sock") and journal.ship_queue == 50
    c = parse_config("c.yaml", "audit:\n  ship: {syslog: 'tcp://logs.example:6514'}\n  ship_redaction: hash\n")
    assert c.ship == Target("tcp", "logs.example", 6514) and c.ship_redaction == "hash"
    assert parse_config("c.yaml", "audit: {ship: {syslog: 'udp://[::1]:514'}}\n").ship == Target("udp", "::1", 514)
    assert Config().ship is None and Config().ship_redaction == "site"


@pytest.mark.parametrize("text, message", [
    ("audit: {ship: syslog}\n", "c.yaml:1:15: audit ship must be journald, {journald: SOCKET_PATH} or "
     "{syslog: \"tcp://HOST:PORT\"} (udp:// too), not 'syslog'"),
    ("audit: {ship: {syslog: 'http://h:1'}}\n",
     "c.yaml:1:24: syslog address must start with tcp:// or udp://, not 'http://h:1'"),
    ("audit: {ship: {syslog: 'tcp://h'}}\n",
     "c.yaml:1:24: syslog address needs a host and a port: 'tcp://h'; expected tcp://HOST:PORT"),
    ("audit: {ship: {syslog: 'tcp://h:1', journald: x}}\n",
     "c.yaml:1:15: audit ship takes one of journald or syslog, not both"),
    ("audit: {ship_redaction: names}\n",
     "c.yaml:1:25: unknown audit ship_redaction 'names' (expected one of: full, hash, no-query, site)"),
])
def test_audit_ship_errors(text, message):
    with pytest.raises(LoadError) as e:
        parse_config("c.yaml", text)
    assert [str(x) for x in e.value.errors] == [message]
