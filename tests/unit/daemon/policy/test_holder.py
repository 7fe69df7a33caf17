"""PolicyHolder: the active PolicySet, replaced in one step; a reader keeps the snapshot it took."""

import threading

from hush.daemon.policy import build
from hush.daemon.policy.holder import PolicyHolder

V1 = "app: a\nlisten: 8101\ndefault: allow\n"
V2 = "app: a\nlisten: 8101\ndefault: block\n"


def test_empty_until_a_set_is_swapped_in():
    holder = PolicyHolder()
    assert holder.current is None
    first = build([("a.yaml", V1)])
    assert holder.swap(first) is None  # nothing was replaced
    assert holder.current is first


def test_swap_returns_the_set_it_replaced_and_a_taken_snapshot_stays_whole():
    first, second = build([("a.yaml", V1)]), build([("a.yaml", V2)])
    holder = PolicyHolder(first)
    snapshot = holder.current  # what a flow takes once
    assert holder.swap(second) is first
    assert holder.current is second
    assert snapshot is first and snapshot.policies["a"].default.name == "allow"  # unchanged by the swap
    assert holder.current.policies["a"].default.name == "block"


def test_readers_see_one_set_or_the_other_never_anything_else():
    sets = [build([("a.yaml", V1)]), build([("a.yaml", V2)])]
    holder = PolicyHolder(sets[0])
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(id(holder.current))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(2000):
        holder.swap(sets[i % 2])
    stop.set()
    reader.join()
    assert seen <= {id(s) for s in sets} and seen


# -- expires: derived again when a rule expires, without a reload ---------------------------

def test_a_rule_is_dropped_at_its_expiry_on_the_loop_and_on_change_is_told():
    import asyncio
    import time

    from hush.daemon.policy import RequestInfo
    from hush.daemon.policy.expiry import format_time

    async def main():
        when = format_time(time.time() + 1.2)
        text = (f"app: a\ndefault: block\nrules:\n  - match: {{host: x.example}}\n    action: allow\n"
                f"    expires: {when}\n")
        holder = PolicyHolder(build([("a.yaml", text)]))
        changes = []
        holder.on_change = lambda old, new: changes.append((old, new))
        req = RequestInfo.from_url("http://x.example/")
        assert holder.current.decide("a", req).action.name == "allow"
        started = time.monotonic()
        while not changes and time.monotonic() - started < 5:
            await asyncio.sleep(0.05)
        assert changes and changes[0][1] is holder.current
        assert holder.current.decide("a", req).action.name == "block"
        assert holder.current is not holder.loaded
        holder.close()

    asyncio.run(main())


def test_a_temporary_rule_comes_first_and_a_reload_keeps_it():
    import dataclasses

    from hush.daemon.policy import RequestInfo

    holder = PolicyHolder(build([("a.yaml", V2)]))
    allow = build([("a.yaml", "app: a\ndefault: block\nrules:\n  - {match: {site: example.com}, action: allow}\n")])
    rule = dataclasses.replace(allow.policies["a"].rules[0], index=0)
    seen = []
    holder.on_change = lambda old, new: seen.append(new)
    holder.add_temporary("a", rule)
    req = RequestInfo.from_url("http://www.example.com/")
    assert holder.current.decide("a", req).action.name == "allow" and seen == [holder.current]
    holder.swap(build([("a.yaml", V1.replace("allow", "block"))]))
    assert holder.current.decide("a", req).action.name == "allow"  # kept across a reload
    assert holder.temporary("a") == (rule,)
