"""The `masksmith` command: one Typer app (app.py) whose train options are generated from the config (options.py)."""

from masksmith.cli.app import main

__all__ = ["main"]
