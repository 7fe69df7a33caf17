import subprocess
import sys

PROBE = """
import sys
import hush.daemon.run  # the daemon: mitmproxy.master with it
from hush.daemon.mitmaddons import mitmproxy_addons
addons = mitmproxy_addons()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"flask", "werkzeug", "ldap3", "jinja2"}
                or m.startswith("mitmproxy.addons."))
print(len(addons), " ".join(loaded))
"""


def test_the_daemon_imports_only_the_mitmproxy_addons_it_runs():
    # a fresh interpreter: in this one, other tests may have imported the whole package
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "6"
    assert out[1:] == ["mitmproxy.addons.block", "mitmproxy.addons.core", "mitmproxy.addons.disable_h2c",
                       "mitmproxy.addons.next_layer", "mitmproxy.addons.proxyserver", "mitmproxy.addons.termlog",
                       "mitmproxy.addons.tlsconfig"]


def test_an_already_imported_package_is_left_alone():
    probe = ("import mitmproxy.addons, sys\nimport hush.daemon.mitmaddons\n"
             "print(hasattr(mitmproxy.addons, 'default_addons'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
