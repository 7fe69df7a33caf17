"""The whole hush pipeline for a stock mitmdump::

    .venv/bin/mitmdump -s addons/pipeline.py \\
        --set hush_policies=policies --set hush_app=whatsapp \\
        --set hush_state_dir=/tmp/hush-state --set connection_strategy=lazy

Each addon file also loads on its own (``-s addons/decide.py``); see
docs/architecture.md.
"""

from hush.addons import chain

addons = list(chain())
