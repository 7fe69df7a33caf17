import asyncio, cProfile, pstats, threading, time, sys, os, signal
from pathlib import Path
from hush.daemon.config import load_config
from hush.daemon.policy import load
from hush.daemon.run import serve
cfg = load_config(None)
ps = load([Path("policies")], cfg.parse_context)
prof = cProfile.Profile()
def stopper():
    time.sleep(14)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=stopper, daemon=True).start()
prof.enable()
asyncio.run(serve(ps, cfg, Path("state"), Path("policies")))
prof.disable()
st = pstats.Stats(prof); st.sort_stats("tottime").print_stats(25)
