"""Report text structure: sentence spans, clause spans and the noun phrase around a mention."""

from __future__ import annotations

import re

_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "vs", "e.g", "i.e", "approx", "fig", "st", "no", "lt", "rt", "etc", "cf"}
_BOUNDARY = re.compile(r"[.!?](?=\s|$)|\n\s*\n|\n(?=\s*(?:[-*\u2022]|\d{1,2}[.)]|[A-Z]))")
_LIST_MARKER = re.compile(r"\s*(?:\d{1,2}[.)]|[-*\u2022])\s+")
_LAST_WORD = re.compile(r"([A-Za-z.]+)$")
_DIGIT_NEXT = re.compile(r"\s*\d")
_LIST_NUMBER = re.compile(r"\s*\d{1,2}")
_TAIL = 32  # longer than any abbreviation; a longer word is cut to 32 letters and is no abbreviation either


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of sentences (list markers and surrounding space trimmed)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.end() if m.group(0) in ".!?" else m.start()
        if m.group(0) == ".":
            # Only the last few characters before the dot are read (never a slice back to the
            # sentence start), so a long run of abbreviations stays linear in the text's length.
            tail = text[max(start, m.start() - _TAIL) : m.start()]
            word = _LAST_WORD.search(tail)
            if word and word.group(1).lower() in _ABBREVIATIONS and not tail.rstrip().endswith("XXXX"):
                # "Dr." and friends do not end a sentence ("No." only when followed by a digit).
                if word.group(1).lower() != "no" or _DIGIT_NEXT.match(text, m.end()):
                    continue
            if _LIST_NUMBER.fullmatch(text, start, m.start()):  # "1." of a numbered list
                continue
        _add_span(text, start, end, spans)
        start = m.end()
    _add_span(text, start, len(text), spans)
    return spans


def _add_span(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    marker = _LIST_MARKER.match(text, start, end) if start < end else None
    if marker:
        start = marker.end()
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start and re.search(r"\w", text[start:end]):
        spans.append((start, end))


def split_clauses(
    text: str, s0: int, s1: int, breaks: re.Pattern, blocked: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Split the sentence span (s0, s1) into clause spans at `breaks` and around `blocked` spans."""
    cuts = {s0, s1}
    for m in breaks.finditer(text, s0, s1):
        cuts.add(m.start())
        cuts.add(m.end())
    for b0, b1 in blocked:
        cuts.add(b0)
        cuts.add(b1)
    ordered = sorted(c for c in cuts if s0 <= c <= s1)
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if b > a]


def phrase_span(
    text: str, c0: int, c1: int, start: int, end: int, separators: re.Pattern | None
) -> tuple[int, int]:
    """The noun phrase around a mention: from the previous list separator to the next one, within (c0, c1)."""
    if separators is None:
        return c0, c1
    left = c0
    for m in separators.finditer(text, c0, start):
        left = m.end()
    right = c1
    m = separators.search(text, end, c1)
    if m:
        right = m.start()
    return left, right
