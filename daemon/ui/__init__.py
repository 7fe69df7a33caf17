"""The live view: a page served by the daemon on a loopback address (``ui.listen``).

``server.py`` serves it (asyncio, on the daemon's event loop), ``questions.py``
is the contract with the ``ask`` action, ``static/`` the page itself (docs/ui.md).
"""
