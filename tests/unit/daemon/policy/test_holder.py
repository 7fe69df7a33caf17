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
