"""One module per command (``training`` holds the three training steps, which share their
options); each function is registered on the app in ``msn_cli.cli``.

Commands parse, validate, call a stage, print (the printers are in :mod:`msn_cli.report`): no
logic, no torch at import time. :mod:`~msn_cli.commands.batch` holds what the commands over
many slides share (manifest, ``--shard``, the per-slide failure report).
"""
