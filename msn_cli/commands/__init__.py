"""One module per command group; each function is registered on the app in ``msn_cli.cli``.

Commands parse, validate, call a stage, print: no logic, no torch at import time.
"""
