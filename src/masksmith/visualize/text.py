"""Text drawn into images: captions, headers and legends (Pillow), tick labels and titles (matplotlib).

File names and class names come from the user's files. Drawn as they are, a line break makes Pillow's layout
fail (``raqm_layout() failed``) and a ``$...$`` pair is parsed by matplotlib as math, failing on an unknown
command; a name thousands of characters long would stretch the image. The helpers here give the text as one
bounded line of printable characters.
"""

from __future__ import annotations

from typing import Any

MAX_DRAWN_CHARS = 160  # longer texts are cut with an ellipsis (the gallery cuts again to the width it has)


def drawable_text(text: Any, max_chars: int = MAX_DRAWN_CHARS) -> str:
    """`text` as one line of printable characters: line breaks, tabs, other control characters and file-name
    bytes that were not UTF-8 shown as their escapes (\\n, \\t, \\x1b, \\udce9), cut to `max_chars` with "…"."""
    shown = "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(text))
    return shown if len(shown) <= max_chars else shown[: max(0, max_chars - 1)] + "…"


def plot_text(text: Any, max_chars: int = MAX_DRAWN_CHARS) -> str:
    """drawable_text for matplotlib, whose text parser reads a pair of dollar signs as math: each one escaped."""
    return drawable_text(text, max_chars).replace("$", r"\$")
