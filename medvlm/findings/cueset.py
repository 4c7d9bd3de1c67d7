"""Negation, uncertainty and attribute cues as data: load, validate and compile a cue file."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from medvlm.fileio import sha256_file
from medvlm.findings.errors import CuesError
from medvlm.findings.yamlmarks import LineDict, LineList, load_marked, read_data_file, reject_unknown_keys
from medvlm.paths import data_dir

CUES_KIND = "findings/cues"
DEFAULT_CUES = "en"
BEFORE_KINDS = ("pseudo", "uncertain", "resolved", "negated", "history")
AFTER_KINDS = ("uncertain", "resolved", "negated")
SIDES = ("bilateral", "left", "right")
CHANGES = ("new", "worsening", "improving", "stable")
_TOP_KEYS = {
    "id", "version", "description", "clause_breaks", "before", "after", "versus_after", "reassert",
    "phrase_separators", "severity", "laterality", "change", "answer",
}
VALUE_KINDS = ("absent", "uncertain", "present")
_REQUIRED = ("id", "clause_breaks", "before", "after", "versus_after", "reassert", "phrase_separators",
             "severity", "laterality", "change")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_WORD_RE = re.compile(r"^[a-z]+$")
_SIDE_GROUP = {"bilateral": "bi", "left": "left", "right": "right"}
_BACKREFERENCE = re.compile(r"(?<!\\)(?:\\\\)*\\[1-9]")  # \1 .. \9 (an escaped backslash before a digit is not one)
_CACHE: dict[tuple[str, str], "CueSet"] = {}


@dataclass(frozen=True, eq=False)
class CueSet:
    """A validated cue file with its compiled patterns; `hash` is the SHA-256 of the file bytes."""

    id: str
    path: Path
    hash: str
    version: str
    clause_breaks: re.Pattern = field(repr=False)
    before: re.Pattern | None = field(repr=False)  # one group per pattern, named <kind><index>
    after: re.Pattern | None = field(repr=False)  # groups: sep, and one per kind in AFTER_KINDS that has patterns
    versus_after: re.Pattern = field(repr=False)
    verbs_between: re.Pattern | None = field(repr=False)
    verbs_in_mention: re.Pattern | None = field(repr=False)
    reassert: re.Pattern | None = field(repr=False)
    phrase_separators: re.Pattern | None = field(repr=False)
    severity: re.Pattern | None = field(repr=False)  # groups a (severity word) and b (end of a range)
    severity_words: dict[str, str] = field(repr=False)
    laterality: re.Pattern | None = field(repr=False)  # groups bi, left, right
    change: tuple[tuple[str, re.Pattern], ...] = field(repr=False)
    answer: "AnswerCues" = field(default=None, repr=False)

    def provenance(self) -> dict:
        """{"id", "sha256", "path"} as written into report provenance."""
        return {"id": self.id, "sha256": self.hash, "path": str(self.path)}


@dataclass(frozen=True, eq=False)
class AnswerCues:
    """What of a model answer is not graded (reasoning, disclaimers, restatements) and key-value values."""

    reasoning: tuple[tuple[re.Pattern, re.Pattern], ...] = ()
    disclaimer: re.Pattern | None = None
    restatement: re.Pattern | None = None  # matched at a sentence start
    values: re.Pattern | None = None  # groups absent, uncertain, present; matched at a value's start


NO_ANSWER_CUES = AnswerCues()


def cues_path(name_or_path: str | Path = DEFAULT_CUES, relative_to: Path | None = None) -> Path:
    """A cue set name ("en") maps to findings/cues/<name>.yaml; anything else is a path."""
    if isinstance(name_or_path, str) and _NAME_RE.match(name_or_path):
        return data_dir(CUES_KIND) / f"{name_or_path}.yaml"
    path = Path(name_or_path)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    return path


def load_cues(name_or_path: str | Path = DEFAULT_CUES) -> CueSet:
    """Load, validate and compile a cue file (a name such as "en", or a YAML path); cached by content hash."""
    path = cues_path(name_or_path)
    if not path.is_file():
        raise CuesError(f"{path}:0: cue file not found")
    try:
        known = _CACHE.get((str(path), sha256_file(path)))
    except OSError as exc:
        raise CuesError(f"{path}:0: cannot read file ({exc.strerror or exc})") from None
    if known is not None:
        return known
    raw, text = read_data_file(path, CuesError)
    cues = _parse(path, raw, text)
    _CACHE[(str(path), cues.hash)] = cues
    return cues


class _Reader:
    """Validation helpers that know the file, so every error carries path:line."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, line: int, what: str):
        raise CuesError(f"{self.path}:{line}: {what}")

    def mapping(self, value, line: int, where: str) -> LineDict:
        if not isinstance(value, LineDict):
            self.fail(line, f"{where} must be a mapping")
        return value

    def patterns(self, value, line: int, where: str) -> list[str]:
        """A list of regular expressions, each valid on its own and free of named groups."""
        if not isinstance(value, LineList):
            self.fail(line, f"{where} must be a list of regular expressions")
        for item, item_line in zip(value, value.item_lines):
            self.pattern(item, item_line, where)
        return list(value)

    def pattern(self, item, line: int, where: str, may_be_empty: bool = False) -> str:
        if not isinstance(item, str) or not item:
            self.fail(line, f"{where}: every pattern must be a non-empty string")
        # Patterns are combined into one expression: their group names and numbers are not theirs to use.
        if "(?P<" in item or "(?P=" in item or _BACKREFERENCE.search(item):
            self.fail(line, f"{where}: named groups and back-references are reserved, use (?:...) in {item!r}")
        try:
            compiled = re.compile(item, re.IGNORECASE)
        except re.error as exc:
            self.fail(line, f"bad pattern {item!r} in {where}: {exc}")
        if not may_be_empty and compiled.fullmatch(""):
            self.fail(line, f"{where}: pattern {item!r} matches empty text")
        return item

    def compile(self, regex: str, line: int, where: str) -> re.Pattern:
        try:
            return re.compile(regex, re.IGNORECASE)
        except re.error as exc:  # each part compiled alone; together they may still clash
            self.fail(line, f"the patterns of {where} do not combine: {exc}")


def _any(patterns: list[str]) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


def _words(patterns: list[str]) -> str:
    return rf"\b(?:{_any(patterns)})\b"


def _parse(path: Path, raw: bytes, text: str) -> CueSet:
    r = _Reader(path)
    data = load_marked(path, CuesError, text)
    if not isinstance(data, LineDict):
        r.fail(1, "top level must be a mapping with 'id', 'before', 'after', ...")
    reject_unknown_keys(data, _TOP_KEYS, path, CuesError, "top-level key")
    for key in _REQUIRED:
        if key not in data:
            r.fail(1, f"missing top-level key {key!r}")
    line = data.key_lines
    cue_id = data["id"]
    if not isinstance(cue_id, str) or not cue_id:
        r.fail(line["id"], "'id' must be a non-empty string")

    clause = r.patterns(data["clause_breaks"], line["clause_breaks"], "clause_breaks")
    if not clause:
        r.fail(line["clause_breaks"], "clause_breaks must list at least one pattern")

    before = r.mapping(data["before"], line["before"], "'before'")
    reject_unknown_keys(before, set(BEFORE_KINDS), path, CuesError, "cue kind", " in 'before'")
    groups = []
    for kind, value in before.items():
        for i, p in enumerate(r.patterns(value, before.key_lines[kind], f"before.{kind}")):
            groups.append(f"(?P<{kind}{i}>{p})")
    before_re = r.compile(rf"(?<![\w])(?:{'|'.join(groups)})(?![\w])", line["before"], "'before'") if groups else None

    after = r.mapping(data["after"], line["after"], "'after'")
    reject_unknown_keys(after, {"copula", "kinds", "verbs_between", "verbs_in_mention"}, path, CuesError, "key", " in 'after'")
    copula = r.pattern(after["copula"], after.key_lines["copula"], "after.copula", may_be_empty=True) if "copula" in after else ""
    kinds = r.mapping(after.get("kinds"), after.key_lines.get("kinds", line["after"]), "after.kinds")
    reject_unknown_keys(kinds, set(AFTER_KINDS), path, CuesError, "cue kind", " in 'after.kinds'")
    alternatives = []
    for kind, body in kinds.items():
        body = r.mapping(body, kinds.key_lines[kind], f"after.kinds.{kind}")
        reject_unknown_keys(body, {"with_copula", "alone"}, path, CuesError, "key", f" in 'after.kinds.{kind}'")
        parts = []
        if "with_copula" in body:
            with_copula = r.patterns(body["with_copula"], body.key_lines["with_copula"], f"after.kinds.{kind}.with_copula")
            if with_copula:
                parts.append(f"{copula}(?:{_any(with_copula)})")
        if "alone" in body:
            parts.extend(f"(?:{p})" for p in r.patterns(body["alone"], body.key_lines["alone"], f"after.kinds.{kind}.alone"))
        if parts:
            alternatives.append(f"(?P<{kind}>{'|'.join(parts)})")
    # `sep`: the words between the mention and the cue, checked for verbs by the extractor.
    after_re = (
        r.compile(rf"(?P<sep>[^.;]*?)\s*(?:{'|'.join(alternatives)})(?![\w])", line["after"], "'after'")
        if alternatives
        else None
    )
    verbs_between = _optional_words(r, after, "verbs_between", "after")
    verbs_in_mention = _optional_words(r, after, "verbs_in_mention", "after")

    versus = r.compile(r.pattern(data["versus_after"], line["versus_after"], "versus_after"), line["versus_after"], "versus_after")
    reassert = r.patterns(data["reassert"], line["reassert"], "reassert")
    separators = r.patterns(data["phrase_separators"], line["phrase_separators"], "phrase_separators")

    severity, severity_words = _severity(r, data["severity"], line["severity"])

    sides = r.mapping(data["laterality"], line["laterality"], "'laterality'")
    reject_unknown_keys(sides, set(SIDES), path, CuesError, "side", " in 'laterality' (bilateral, left, right)")
    side_groups = [
        rf"\b(?P<{_SIDE_GROUP[side]}>{_any(r.patterns(v, sides.key_lines[side], f'laterality.{side}'))})\b"
        for side, v in sides.items()
        if v
    ]

    change_map = r.mapping(data["change"], line["change"], "'change'")
    reject_unknown_keys(change_map, set(CHANGES), path, CuesError, "change", f" in 'change' ({', '.join(CHANGES)})")
    change = tuple(
        (name, r.compile(_words(pats), change_map.key_lines[name], f"change.{name}"))
        for name, value in change_map.items()
        if (pats := r.patterns(value, change_map.key_lines[name], f"change.{name}"))
    )

    return CueSet(
        id=cue_id,
        path=path,
        hash=hashlib.sha256(raw).hexdigest(),
        version=str(data.get("version", "")),
        clause_breaks=r.compile(_any(clause), line["clause_breaks"], "clause_breaks"),
        before=before_re,
        after=after_re,
        versus_after=versus,
        verbs_between=verbs_between,
        verbs_in_mention=verbs_in_mention,
        reassert=r.compile(_words(reassert), line["reassert"], "reassert") if reassert else None,
        phrase_separators=r.compile(_any(separators), line["phrase_separators"], "phrase_separators") if separators else None,
        severity=severity,
        severity_words=severity_words,
        laterality=r.compile("|".join(side_groups), line["laterality"], "laterality") if side_groups else None,
        change=change,
        answer=_answer(r, data["answer"], line["answer"]) if "answer" in data else NO_ANSWER_CUES,
    )


def _answer(r: _Reader, value, line: int) -> AnswerCues:
    section = r.mapping(value, line, "'answer'")
    reject_unknown_keys(section, {"reasoning", "disclaimer", "restatement", "values"}, r.path, CuesError, "key",
                        " in 'answer'")
    where = section.key_lines
    reasoning = []
    pairs = section.get("reasoning", LineList())
    if not isinstance(pairs, list):
        r.fail(where.get("reasoning", line), "answer.reasoning must be a list of [opener, closer] pairs")
    for pair, pair_line in zip(pairs, getattr(pairs, "item_lines", [line] * len(pairs))):
        if not isinstance(pair, list) or len(pair) != 2:
            r.fail(pair_line, "answer.reasoning: every entry is [opener, closer]")
        opener, closer = (r.pattern(p, pair_line, "answer.reasoning") for p in pair)
        reasoning.append((r.compile(opener, pair_line, "answer.reasoning"), r.compile(closer, pair_line, "answer.reasoning")))
    disclaimer = restatement = None
    if "disclaimer" in section and (pats := r.patterns(section["disclaimer"], where["disclaimer"], "answer.disclaimer")):
        disclaimer = r.compile(rf"(?<![\w])(?:{_any(pats)})", where["disclaimer"], "answer.disclaimer")
    if "restatement" in section and (pats := r.patterns(section["restatement"], where["restatement"], "answer.restatement")):
        restatement = r.compile(rf"(?:{_any(pats)})", where["restatement"], "answer.restatement")
    values = None
    if "values" in section:
        kinds = r.mapping(section["values"], where["values"], "answer.values")
        reject_unknown_keys(kinds, set(VALUE_KINDS), r.path, CuesError, "value kind", " in 'answer.values'")
        groups = [
            f"(?P<{kind}>{_any(pats)})"
            for kind in VALUE_KINDS
            if kind in kinds and (pats := r.patterns(kinds[kind], kinds.key_lines[kind], f"answer.values.{kind}"))
        ]
        if groups:
            values = r.compile(rf"(?:{'|'.join(groups)})(?![\w])", where["values"], "answer.values")
    return AnswerCues(tuple(reasoning), disclaimer, restatement, values)


def _optional_words(r: _Reader, section: LineDict, key: str, where: str) -> re.Pattern | None:
    if key not in section:
        return None
    patterns = r.patterns(section[key], section.key_lines[key], f"{where}.{key}")
    return r.compile(_words(patterns), section.key_lines[key], f"{where}.{key}") if patterns else None


def _severity(r: _Reader, value, line: int) -> tuple[re.Pattern | None, dict[str, str]]:
    section = r.mapping(value, line, "'severity'")
    reject_unknown_keys(section, {"words", "range_ends"}, r.path, CuesError, "key", " in 'severity'")
    words = r.mapping(section.get("words", LineDict()), section.key_lines.get("words", line), "severity.words")
    canon: dict[str, str] = {}
    for word, reported in words.items():
        w_line = words.key_lines[word]
        if not isinstance(word, str) or not _WORD_RE.match(word):
            r.fail(w_line, f"severity word {word!r} must be one lower-case word (letters only)")
        if not isinstance(reported, str) or not reported.strip():
            r.fail(w_line, f"severity word {word!r} needs the severity it is reported as")
        canon[word] = reported
    ends = section.get("range_ends", LineList())
    ends_line = section.key_lines.get("range_ends", line)
    if not isinstance(ends, list) or not all(isinstance(e, str) for e in ends):
        r.fail(ends_line, "severity.range_ends must be a list of severity words")
    for end, end_line in zip(ends, getattr(ends, "item_lines", [ends_line] * len(ends))):
        if end not in canon:
            r.fail(end_line, f"range end {end!r} is not one of severity.words")
    if not canon:
        return None, canon
    range_part = rf"(?:\s+(?:to|-)\s+(?P<b>{'|'.join(ends)})(?:ly)?)?" if ends else ""
    pattern = rf"\b(?:(?P<a>{'|'.join(canon)})(?:ly)?{range_part})\b"
    return r.compile(pattern, line, "severity"), canon
