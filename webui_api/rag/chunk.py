"""Character chunking on structure (Markdown headings, paragraphs, sentences, words) with exact offsets."""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

_HEADING = re.compile(r"^#{1,6}[ \t]+\S", re.MULTILINE)
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)", re.MULTILINE)
# Separators from coarse to fine; each match ends a piece (the separator stays with the text before it).
_SEPARATORS = [
    re.compile(r"\n[ \t]*\n\s*"),                                 # paragraphs
    re.compile(r"\n"),                                            # lines
    re.compile(r"[.!?\u3002\uff01\uff1f][\"')\]\u201d\u2019]*\s+"),  # sentences
    re.compile(r"[;:,]\s+"),                                      # clauses
    re.compile(r"\s+"),                                           # words
]


@dataclass(frozen=True)
class Piece:
    """A chunk: `text == source[start:end]`."""

    text: str
    start: int
    end: int


def split_text(text: str, size: int = 1000, overlap: int = 100, markdown: bool = True) -> list[Piece]:
    """Cut `text` into chunks of at most `size` characters, consecutive chunks sharing up to `overlap`
    characters. Markdown sections are never merged across headings when `markdown` is true."""
    size = max(1, int(size))
    overlap = max(0, min(int(overlap), size - 1))
    pieces: list[Piece] = []
    for start, end in (_sections(text) if markdown else [(0, len(text))]):
        spans = _spans(text, start, end, 0, size)
        for first, last in _merge(spans, size, overlap):
            piece = _trimmed(text, first, last)
            if piece is not None:
                pieces.append(piece)
    return pieces


def _sections(text: str) -> list[tuple[int, int]]:
    """Boundaries before each Markdown heading that is not inside a fenced code block."""
    fences = [m.start() for m in _FENCE.finditer(text)]
    starts = [0]
    for match in _HEADING.finditer(text):
        inside_fence = bisect.bisect_left(fences, match.start()) % 2 == 1
        if match.start() > 0 and not inside_fence:
            starts.append(match.start())
    ends = starts[1:] + [len(text)]
    return [(s, e) for s, e in zip(starts, ends) if e > s]


def _spans(text: str, start: int, end: int, level: int, size: int) -> list[tuple[int, int]]:
    """Contiguous spans covering [start, end), each at most `size` long, cut at the coarsest separator."""
    if end - start <= size:
        return [(start, end)]
    if level == len(_SEPARATORS):
        return [(i, min(i + size, end)) for i in range(start, end, size)]
    cuts = [m.end() for m in _SEPARATORS[level].finditer(text, start, end) if start < m.end() < end]
    if not cuts:
        return _spans(text, start, end, level + 1, size)
    spans: list[tuple[int, int]] = []
    for s, e in zip([start] + cuts, cuts + [end]):
        spans.extend(_spans(text, s, e, level + 1, size) if e - s > size else [(s, e)])
    return spans


def _merge(spans: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Greedily join neighbouring spans up to `size`; the next chunk restarts up to `overlap` back."""
    chunks: list[tuple[int, int]] = []
    first = 0
    while first < len(spans):
        last = first
        while last + 1 < len(spans) and spans[last + 1][1] - spans[first][0] <= size:
            last += 1
        chunks.append((spans[first][0], spans[last][1]))
        if last + 1 >= len(spans):
            break
        nxt = last + 1
        # Back up over trailing spans that fit in the overlap and still leave room for the next span.
        restart = nxt
        while (restart - 1 > first
               and spans[last][1] - spans[restart - 1][0] <= overlap
               and spans[nxt][1] - spans[restart - 1][0] <= size):
            restart -= 1
        first = restart
    return chunks


def _trimmed(text: str, start: int, end: int) -> Piece | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Piece(text[start:end], start, end) if end > start else None
