import asyncio
import gc
import logging
import time

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
