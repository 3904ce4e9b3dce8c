"""Free text that ends up in a terminal (sweep names, worker ids and hosts): printable characters only.

`sweeper status` and `sweeper workers` print these as they are, so a control character in one (an
escape sequence, a newline, a carriage return) would repaint or forge what the operator sees; so would
the bidirectional overrides that reorder text on screen. Letters, marks and symbols of any script stay.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator

# Unicode's explicit bidirectional embeddings, overrides and isolates: they reorder the text around them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """`text`, if it holds no control character; else a ValueError naming the first one and where it is."""
    for position, character in enumerate(text):
        if unicodedata.category(character) == "Cc" or character in _BIDI_CONTROLS:
            raise ValueError(f"must not contain control characters (tabs and newlines included), but has "
                             f"{character!r} at position {position}")
    return text


Printable = AfterValidator(printable)
"""Annotate a `str` field with it: `Annotated[str, Printable]`."""

__all__ = ["Printable", "printable"]
