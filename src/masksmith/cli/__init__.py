"""The `masksmith` command: one Typer app (app.py) whose options are generated from the commands' configs (options.py)."""

from masksmith.cli.app import main

__all__ = ["main"]
