"""audit.ship's target as the config reads it."""

import re

import pytest

from hush.daemon.audit.shipconfig import Target, parse_syslog_url


@pytest.mark.parametrize(("text", "error"), [
    ("http://h:1", "must start with tcp:// or udp://"),
    ("tcp://h", "needs a host and a port"),
    ("tcp://:514", "needs a host and a port"),
    ("tcp://h:99999", "not a syslog address"),
    ("udp://h:514/path", "more than HOST:PORT"),
])
def test_bad_syslog_addresses(text, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_syslog_url(text)


def test_syslog_addresses():
    assert parse_syslog_url("tcp://127.0.0.1:514") == Target("tcp", "127.0.0.1", 514)
    assert str(parse_syslog_url("udp://[::1]:5514")) == "syslog udp://[::1]:5514"


def test_reading_the_config_imports_nothing_that_sends():
    import subprocess
    import sys

    code = ("import sys, hush.daemon.config; print(sorted(m for m in ('hush.daemon.audit.ship', 'hashlib', 'secrets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
