import asyncio
import gc
import logging
import time

from hush.daemon import loopwatch
from hush.daemon.loopwatch import LoopWatch


def test_a_blocked_loop_is_measured_and_logged(caplog):
    watch = LoopWatch(period=0.01, warn=0.1)

    async def go():
        watch.start()
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # something holds the loop
        await asyncio.sleep(0.05)
        watch.stop()

    with caplog.at_level(logging.WARNING, logger="hush.loop"):
        asyncio.run(go())
    st = watch.status()
    assert 180 <= st["max_stall_ms"] < 1000
    assert st["last_warning"]["stall_ms"] >= 180
    assert "event loop was held" in caplog.text


def test_full_collections_are_counted_and_timed():
    watch = LoopWatch()

    async def go():
        watch.start()
        gc.collect(1)  # not a full one
        gc.collect()
        gc.collect()
        watch.stop()
        gc.collect()  # after stop: not counted

    gc.disable()  # only the collections asked for here: an automatic one would change the count
    try:
        asyncio.run(go())
    finally:
        gc.enable()
    st = watch.status()
    assert st["gc_full"] == 2 and st["gc_full_max_ms"] > 0
    assert st["gc_full_total_ms"] >= st["gc_full_max_ms"]
    assert st["last_warning"] is None


def test_survivors_of_a_full_collection_are_frozen_and_thawed_only_when_idle(monkeypatch):
    """freeze_survivors: what survives a full pass is frozen, so the next one walks only what came
    since; a thaw (unfreeze, collect, freeze) collects the cycles among frozen objects, and only
    when nothing is connected and the frozen set grew enough."""
    # the frozen set here is the test process's (its size depends on what was imported before)
    monkeypatch.setattr(loopwatch, "THAW_GROWTH", 1.0)
    monkeypatch.setattr(loopwatch, "THAW_MIN_OBJECTS", 20_000)
    monkeypatch.setattr(loopwatch, "THAW_FORCED", 1_000.0)
    idle = False
    watch = LoopWatch(freeze_survivors=True, idle=lambda: idle)
    kept = []

    class Cycle:
        def __init__(self):
            self.me = self

    async def go():
        watch.start()
        watch.freeze()
        kept.extend(Cycle() for _ in range(30_000))  # long-lived, like held flows
        gc.collect()
        assert gc.get_freeze_count() >= watch._frozen_base + 30_000  # frozen by the full pass's callback
        kept.clear()  # now cyclic garbage, frozen: only a thaw finds it
        watch._last_thaw -= 3600
        watch._last_count -= 3600  # counted once per THAW_MIN_INTERVAL, open connections or not
        assert not watch.maybe_thaw()  # a connection is open: not now
        nonlocal idle
        idle = True
        frozen = gc.get_freeze_count()
        assert watch.maybe_thaw()
        assert gc.get_freeze_count() <= frozen - 30_000  # the cycles were collected
        assert not watch.maybe_thaw()  # nothing grew since
        watch.stop()

    try:
        asyncio.run(go())
    finally:
        gc.unfreeze()
    st = watch.status()
    assert st["gc_thaws"] == 1 and st["gc_full"] >= 1


def test_recent_stalls_are_kept_per_second():
    watch = LoopWatch()
    now = time.time()
    watch.observe(0.002)
    watch.observe(0.030)
    watch.observe(0.001)
    assert watch.recent_max_stall(now - 1) == 0.030
    assert watch.recent_max_stall(now + 5) == 0.0
    assert watch.status()["recent_stalls_ms"][-1][1] == 30.0
