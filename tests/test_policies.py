"""Every shipped policy loads, and every example in it holds."""

import pytest

from hush.daemon import paths
from hush.daemon.policy import check_examples, load, policy_files

SHIPPED = paths.shipped_policies()
FILES = policy_files([SHIPPED])


def test_there_are_shipped_policies():
    assert len(FILES) >= 4


def test_shipped_policies_load_together():
    ps = load([SHIPPED])
    assert sorted(ps.policies) == sorted(f.stem for f in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_is_named_after_its_app_and_has_examples(path):
    ps = load([path])
    [(app, policy)] = ps.policies.items()
    assert app == path.stem
    assert policy.examples, f"{path.name} has no examples"


def _examples():
    ps = load([SHIPPED])
    for policy in ps.policies.values():
        for example in policy.examples:
            yield pytest.param(ps, policy.app, example, id=f"{example.location}")


@pytest.mark.parametrize("ps, app, example", list(_examples()))
def test_example(ps, app, example):
    decision = ps.decide(app, example.request)
    assert decision.action.name == example.expect, f"{example.location}: decided by {decision.describe()}"


def test_check_examples_agrees():
    assert check_examples(load([SHIPPED])) == []
