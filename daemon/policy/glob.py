"""Shell-style globs without backtracking.

``*`` matches any run of characters (``/`` included), ``?`` exactly one.
Nothing else is special, so no pattern can be written that takes longer than
one left-to-right pass per literal piece: the pattern is split at ``*`` and the
pieces are found leftmost-first, which is exact for this language.

    >>> g = Glob.parse("/_matrix/*/preview_url")
    >>> g.matches("/_matrix/media/v3/preview_url")
    True
"""

from __future__ import annotations

import dataclasses

MAX_PATTERN = 1024
_UNSUPPORTED = {"[": "character classes", "]": "character classes", "{": "braces", "}": "braces"}


@dataclasses.dataclass(frozen=True)
class Glob:
    pattern: str
    pieces: tuple[str, ...]  # the literal runs between '*'s; first and last anchor
    casefold: bool = False

    @classmethod
    def parse(cls, pattern: str, *, casefold: bool = False) -> Glob:
        """:raises ValueError: with the reason, for patterns hush does not accept."""
        if not pattern:
            raise ValueError("empty pattern")
        if len(pattern) > MAX_PATTERN:
            raise ValueError(f"pattern longer than {MAX_PATTERN} characters")
        for ch, what in _UNSUPPORTED.items():
            if ch in pattern:
                raise ValueError(f"{what} ({ch!r}) are not supported in {pattern!r}; use * and ?")
        text = pattern.lower() if casefold else pattern
        return cls(pattern, tuple(text.split("*")), casefold)

    def matches(self, text: str) -> bool:
        return self.matches_folded(text.lower() if self.casefold else text)

    def matches_folded(self, text: str) -> bool:
        """``matches`` for text already lower-cased (when ``casefold``)."""
        pieces = self.pieces
        if len(pieces) == 1:
            return len(text) == len(pieces[0]) and _equal_at(text, 0, pieces[0])
        first, last = pieces[0], pieces[-1]
        if len(first) + len(last) > len(text):
            return False
        if not _equal_at(text, 0, first) or not _equal_at(text, len(text) - len(last), last):
            return False
        pos, end = len(first), len(text) - len(last)
        for piece in pieces[1:-1]:
            found = _find(text, piece, pos, end)
            if found < 0:
                return False
            pos = found + len(piece)
        return True


def _equal_at(text: str, at: int, piece: str) -> bool:
    if "?" not in piece:
        return text.startswith(piece, at)
    if at + len(piece) > len(text):
        return False
    return all(p == "?" or p == text[at + i] for i, p in enumerate(piece))


def _find(text: str, piece: str, start: int, end: int) -> int:
    """Leftmost index >= start where piece fits entirely before end, or -1."""
    if "?" not in piece:
        return text.find(piece, start, end)
    for at in range(start, end - len(piece) + 1):
        if _equal_at(text, at, piece):
            return at
    return -1
