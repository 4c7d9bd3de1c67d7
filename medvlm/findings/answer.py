"""What of a model's answer is graded: reasoning blocks, disclaimers, restated questions and markdown syntax are not.

The stored answer keeps everything. `graded_view` returns a text of the same length in which the
parts that are not graded are blanked with spaces (newlines kept, so sentence and list structure
survive); the extractor reads findings from it, and every offset it reports is an offset into the
stored answer. Which words make a disclaimer, a restatement or a reasoning block is data: the
`answer` section of the cue file (cues/en.yaml).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medvlm.findings.cueset import CueSet
from medvlm.findings.text import split_sentences

# Markdown syntax that is not text: bold/italic markers, inline code ticks, heading hashes, quote
# marks, horizontal rules. List bullets and numbers stay (they mark sentence starts).
_EMPHASIS = re.compile(r"\*\*+|__+|`+|(?<![\w*])\*(?=[^\s*])|(?<=[^\s*])\*(?![\w*])")
_HEADING = re.compile(r"^[ \t]*#{1,6}(?=[ \t])", re.MULTILINE)
_QUOTE = re.compile(r"^[ \t]*>", re.MULTILINE)
_RULE = re.compile(r"^[ \t]*(?:[-*_][ \t]*){3,}$", re.MULTILINE)
_TABLE_ROW = re.compile(r"^[ \t]*\|.*\|[ \t]*$", re.MULTILINE)
_TABLE_RULE = re.compile(r"^[\s|:-]+$")
_CLAUSE_START = re.compile(r"[,;:\u2013\u2014]|\s-\s")
_WORD = re.compile(r"\w")


@dataclass(frozen=True)
class GradedView:
    """The answer as graded: `text` has the answer's length, with what is not graded blanked out."""

    text: str
    hidden: tuple[tuple[int, int, str], ...]  # (start, end, why): reasoning, disclaimer or restatement

    @property
    def has_answer(self) -> bool:
        return bool(_WORD.search(self.text))


def _blank(chars: list[str], start: int, end: int) -> None:
    for i in range(start, end):
        if chars[i] != "\n":
            chars[i] = " "


def _reasoning(text: str, chars: list[str], cues: CueSet, hidden: list) -> None:
    pos = 0
    pairs = cues.answer.reasoning
    ahead: dict[int, re.Match | None] = {}  # each opener's next match, searched again only once passed
    while pairs:
        found = []
        for i, (opener, close) in enumerate(pairs):
            if i not in ahead or (ahead[i] is not None and ahead[i].start() < pos):
                ahead[i] = opener.search(text, pos)
            if ahead[i] is not None:
                found.append((ahead[i], close))
        if not found:
            return
        opening, close = min(found, key=lambda f: f[0].start())
        closing = close.search(text, opening.end())
        end = closing.end() if closing else len(text)  # an unclosed block hides the rest
        _blank(chars, opening.start(), end)
        hidden.append((opening.start(), end, "reasoning"))
        pos = end


def _markdown(text: str, chars: list[str]) -> None:
    for pattern in (_EMPHASIS, _HEADING, _QUOTE, _RULE):
        for m in pattern.finditer(text):
            _blank(chars, m.start(), m.end())
    for m in _TABLE_ROW.finditer(text):
        row = text[m.start() : m.end()]
        if _TABLE_RULE.match(row):
            _blank(chars, m.start(), m.end())
            continue
        # | label | value | more |  ->   label : value ; more   (a table row reads like a "label: value" line)
        pipes = [m.start() + i for i, c in enumerate(row) if c == "|"]
        for n, at in enumerate(pipes):
            chars[at] = " " if n in (0, len(pipes) - 1) else (":" if n == 1 else ";")


def _sentences(chars: list[str], cues: CueSet, hidden: list) -> None:
    masked = "".join(chars)
    answer = cues.answer
    for s0, s1 in split_sentences(masked):
        sentence = masked[s0:s1]
        if answer.restatement is not None and answer.restatement.match(sentence):
            _blank(chars, s0, s1)
            hidden.append((s0, s1, "restatement"))
            continue
        m = answer.disclaimer.search(sentence) if answer.disclaimer is not None else None
        if m:
            starts = [c.end() for c in _CLAUSE_START.finditer(sentence, 0, m.start())]
            start = s0 + (starts[-1] if starts else 0)
            _blank(chars, start, s1)
            hidden.append((start, s1, "disclaimer"))


def graded_view(answer: str, cues: CueSet) -> GradedView:
    """The part of `answer` that findings are read from, at the same offsets (see module docstring)."""
    chars = list(answer)
    hidden: list[tuple[int, int, str]] = []
    _reasoning(answer, chars, cues, hidden)
    _markdown(answer, chars)
    _sentences(chars, cues, hidden)
    return GradedView("".join(chars), tuple(sorted(hidden)))


def answer_status(answer: str, status: str, cues: CueSet) -> str:
    """`status` as generation ended it, except that a complete answer with nothing gradeable left is `empty`.

    A model that only reasons, only restates the question or only adds a disclaimer has not answered;
    such an answer must never be graded as a normal study.
    """
    if status == "complete" and not graded_view(answer, cues).has_answer:
        return "empty"
    return status


_COLON = re.compile(r":(?!\d)")


def key_value(text: str, s0: int, s1: int, cues: CueSet) -> tuple[int, str | None, str | None] | None:
    """For a "Label: value" sentence (a label of at most eight words): (colon offset, value kind, value cue).

    The kind is absent/uncertain/present when the value starts with one of the cue file's
    `answer.values`, else None (the label's own words then decide, and the value holds its attributes).
    """
    colon = _COLON.search(text, s0, s1)
    if colon is None or not 0 < len(text[s0 : colon.start()].split()) <= 8:
        return None
    start = colon.end()
    while start < s1 and text[start].isspace():
        start += 1
    values = cues.answer.values
    m = values.match(text, start, s1) if values is not None else None
    if not m:
        return colon.start(), None, None
    kind = next(k for k, v in m.groupdict().items() if v)
    return colon.start(), kind, m.group(0)
