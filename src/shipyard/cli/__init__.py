"""The `shipyard` command line: `app.py` is the root and registers every verb, `_common.py` holds
what the verbs share (settings, options, the `--json` contract), and each other module is one verb
or verb group, named as users type it. `app` and `main` are re-exported for `from shipyard.cli import
app` and the `shipyard.cli:main` entry point of older installs."""

from shipyard.cli.app import app, main

__all__ = ["app", "main"]
