"""The config's ``ui`` key (daemon/config.py): loopback only, off with ``ui: false``."""

from __future__ import annotations

import pytest

from hush.daemon.config import Config, parse_config
from hush.daemon.yamlschema import LoadError


@pytest.mark.parametrize(("text", "listen"), [
    ("log_level: info\n", ("127.0.0.1", 8100)),
    ("ui: true\n", ("127.0.0.1", 8100)),
    ("ui: false\n", None),
    ("ui: {listen: '127.0.0.2:9000'}\n", ("127.0.0.2", 9000)),
    ("ui:\n  listen: '[::1]:0'\n", ("::1", 0)),
])
def test_ui_listen(text: str, listen) -> None:
    assert parse_config("c.yaml", text).ui_listen == listen
    assert Config().ui_listen == ("127.0.0.1", 8100)


@pytest.mark.parametrize(("text", "message"), [
    ("ui: {listen: '0.0.0.0:8100'}\n", "c.yaml:1:14: ui listen must be a loopback address (127.0.0.0/8 or ::1), "
                                       "not 0.0.0.0: the page can change what leaves this machine"),
    ("ui: {listen: 'localhost:8100'}\n", "c.yaml:1:14: ui listen must be ADDRESS:PORT on loopback, such as "
                                         "127.0.0.1:8100 or [::1]:8100, not 'localhost:8100'"),
    ("ui: {listen: '127.0.0.1:70000'}\n", "c.yaml:1:14: ui listen needs a port between 0 and 65535, "
                                          "not '127.0.0.1:70000'"),
    ("ui: {port: 1}\n", "c.yaml:1:6: unknown key 'port' (expected one of: listen)"),
])
def test_ui_refused(text: str, message: str) -> None:
    with pytest.raises(LoadError) as e:
        parse_config("c.yaml", text)
    assert message in str(e.value)


@pytest.mark.parametrize(("text", "given"), [
    ("log_level: info\n", False), ("ui: true\n", False), ("ui: {}\n", False),
    ("ui: {listen: '127.0.0.1:8100'}\n", True),
])
def test_whether_the_address_was_given(text: str, given: bool) -> None:
    """Only the default address gives way to a free port when another hush has it."""
    assert parse_config("c.yaml", text).ui_listen_given is given
