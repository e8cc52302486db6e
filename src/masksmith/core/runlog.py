"""A run's log: messages to the terminal (unless quiet) and always to a log file in the run folder."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console


class RunLog:
    """Print a message and append it, time-stamped, to the run's log file."""

    def __init__(self, path: Path | None, quiet: bool = False):
        self.path = path
        self.console = Console(stderr=True, quiet=quiet, highlight=False)

    def info(self, message: str) -> None:
        """Log one message."""
        self.console.print(message, markup=False, soft_wrap=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def warn(self, message: str) -> None:
        """Log a warning."""
        self.info(f"warning: {message}")
