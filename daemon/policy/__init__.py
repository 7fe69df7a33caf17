"""Per-app policies: the loader, the immutable PolicySet, and decisions."""

from hush.daemon.policy.loader import build, check_examples, load, policy_files
from hush.daemon.policy.model import Decision, Listener, Policy, PolicySet, RequestInfo, Rule

__all__ = [
    "Decision", "Listener", "Policy", "PolicySet", "RequestInfo", "Rule",
    "build", "check_examples", "load", "policy_files",
]
