"""Scenarios use the integration fixtures: origin, hush, curl, the Tor lab."""

from tests.integration.conftest import *  # noqa: F401,F403
