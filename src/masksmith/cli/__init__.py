"""The `masksmith` command: one Typer app (app.py) whose train options are generated from the config (options.py)."""
