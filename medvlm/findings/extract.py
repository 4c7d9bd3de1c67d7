"""Turn free-text radiology (or model) reports into coded findings with auditable evidence."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from medvlm.paths import resolve_data_path
from medvlm.findings.yamlmarks import LineDict, LineList, load_marked, reject_unknown_keys
from medvlm.records import MODALITIES, Evidence, Finding

NO_FINDING = "no_finding"
_STATUS_RANK = {"present": 2, "uncertain": 1, "absent": 0}


class VocabularyError(ValueError):
    """A vocabulary file is invalid; the message is one line "path:line: what is wrong"."""


@dataclass(frozen=True)
class VocabEntry:
    code: str
    label: str
    synonyms: tuple[str, ...]
    exclusions: tuple[str, ...] = ()
    critical: bool = False
    negative_forms: tuple[str, ...] = ()  # phrases that by themselves say the finding is absent


@dataclass(frozen=True, eq=False)
class Vocabulary:
    id: str
    path: Path
    hash: str  # sha256 of the file bytes
    entries: dict[str, VocabEntry]
    version: str = ""
    _compiled: object = field(default=None, repr=False, compare=False)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(self.entries)


# ---------------------------------------------------------------- loading

_ENTRY_KEYS = {"label", "critical", "synonyms", "exclusions", "negative_forms"}
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_VOCAB_CACHE: dict[tuple[str, str], Vocabulary] = {}


def phrase_to_regex(phrase: str) -> str:
    """Vocabulary phrase syntax to a whole-word regex: words, `*` word endings, or `re:` raw."""
    return rf"(?<![\w])(?:{_phrase_body(phrase)})(?![\w])"


def _phrase_body(phrase: str) -> str:
    if phrase.startswith("re:"):
        body = phrase[3:]
    else:
        words = []
        for word in phrase.split():
            if word.endswith("*"):
                words.append(re.escape(word[:-1]) + r"\w*")
            else:
                words.append(re.escape(word))
        body = r"[\s\-]+".join(words)
    return body


def _string_list(value, where: str, path: Path, line: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise VocabularyError(f"{path}:{line}: {where} must be a list of non-empty strings")
    lines = getattr(value, "item_lines", [line] * len(value))
    for item, item_line in zip(value, lines):
        try:
            re.compile(phrase_to_regex(item), re.IGNORECASE)
        except re.error as exc:
            raise VocabularyError(f"{path}:{item_line}: bad pattern {item!r} in {where}: {exc}") from None
    return tuple(value)


def load_vocabulary(modality_or_path: str | Path) -> Vocabulary:
    """Load and validate a vocabulary (a modality name or a YAML path); cached by content hash."""
    path = resolve_data_path(modality_or_path, "findings/vocab", MODALITIES)
    if not path.is_file():
        raise VocabularyError(f"{path}:0: vocabulary file not found")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cached = _VOCAB_CACHE.get((str(path), digest))
    if cached is not None:
        return cached
    data = load_marked(path, VocabularyError)
    if not isinstance(data, LineDict):
        raise VocabularyError(f"{path}:1: top level must be a mapping with 'id' and 'findings'")
    reject_unknown_keys(data, {"id", "version", "findings", "description"}, path, VocabularyError, "top-level key")
    vocab_id = data.get("id")
    if not isinstance(vocab_id, str) or not vocab_id:
        raise VocabularyError(f"{path}:{data.key_lines.get('id', 1)}: 'id' must be a non-empty string")
    findings = data.get("findings")
    if not isinstance(findings, LineDict) or not findings:
        line = data.key_lines.get("findings", 1)
        raise VocabularyError(f"{path}:{line}: 'findings' must be a non-empty mapping of code -> entry")
    entries: dict[str, VocabEntry] = {}
    for code, body in findings.items():
        line = findings.key_lines[code]
        if not isinstance(code, str) or not _CODE_RE.match(code):
            raise VocabularyError(f"{path}:{line}: finding code {code!r} must be lower_snake_case")
        if not isinstance(body, LineDict):
            raise VocabularyError(f"{path}:{line}: finding {code!r} must be a mapping")
        reject_unknown_keys(body, _ENTRY_KEYS, path, VocabularyError, "key", f" in finding {code!r}")
        label = body.get("label")
        if not isinstance(label, str) or not label:
            raise VocabularyError(f"{path}:{line}: finding {code!r} needs a 'label' string")
        critical = body.get("critical", False)
        if not isinstance(critical, bool):
            line_c = body.key_lines.get("critical", line)
            raise VocabularyError(f"{path}:{line_c}: 'critical' of {code!r} must be true or false")
        synonyms = _string_list(body.get("synonyms"), f"synonyms of {code!r}", path, body.key_lines.get("synonyms", line))
        if not synonyms:
            raise VocabularyError(f"{path}:{line}: finding {code!r} needs at least one synonym")
        entries[code] = VocabEntry(
            code=code,
            label=label,
            synonyms=synonyms,
            exclusions=_string_list(body.get("exclusions"), f"exclusions of {code!r}", path, body.key_lines.get("exclusions", line)),
            critical=critical,
            negative_forms=_string_list(
                body.get("negative_forms"), f"negative_forms of {code!r}", path, body.key_lines.get("negative_forms", line)
            ),
        )
    vocab = Vocabulary(
        id=vocab_id,
        path=path,
        hash=digest,
        entries=entries,
        version=str(data.get("version", "")),
    )
    object.__setattr__(vocab, "_compiled", _compile(vocab))
    _VOCAB_CACHE[(str(path), digest)] = vocab
    return vocab


@dataclass(frozen=True)
class _CompiledEntry:
    entry: VocabEntry
    mention: re.Pattern
    exclusion: re.Pattern | None
    negative: re.Pattern | None


def _alternation(phrases: tuple[str, ...]) -> re.Pattern | None:
    if not phrases:
        return None
    # Longer phrases first so the alternation prefers the most specific synonym.
    ordered = sorted(phrases, key=len, reverse=True)
    # One boundary check around the whole alternation is several times faster than one per phrase.
    body = "|".join(f"(?:{_phrase_body(p)})" for p in ordered)
    return re.compile(rf"(?<![\w])(?:{body})(?![\w])", re.IGNORECASE)


def _compile(vocab: Vocabulary) -> tuple[_CompiledEntry, ...]:
    return tuple(
        _CompiledEntry(
            entry=e,
            mention=_alternation(e.synonyms),
            exclusion=_alternation(e.exclusions),
            negative=_alternation(e.negative_forms),
        )
        for e in vocab.entries.values()
    )


# ---------------------------------------------------------------- sentences and clauses

_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "vs", "e.g", "i.e", "approx", "fig", "st", "no", "lt", "rt", "etc", "cf"}
_BOUNDARY = re.compile(r"[.!?](?=\s|$)|\n\s*\n|\n(?=\s*(?:[-*\u2022]|\d{1,2}[.)]|[A-Z]))")
_LIST_MARKER = re.compile(r"\s*(?:\d{1,2}[.)]|[-*\u2022])\s+")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of sentences (list markers and surrounding space trimmed)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.end() if m.group(0) in ".!?" else m.start()
        if m.group(0) == ".":
            before = text[start : m.start()]
            word = re.search(r"([A-Za-z.]+)$", before)
            if word and word.group(1).lower() in _ABBREVIATIONS and not before.rstrip().endswith("XXXX"):
                # "Dr." and friends do not end a sentence ("No." only when followed by a digit).
                if word.group(1).lower() != "no" or re.match(r"\s*\d", text[m.end() :]):
                    continue
            if re.fullmatch(r"\s*\d{1,2}", before):  # "1." of a numbered list
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


# Words that end the scope of a negation or uncertainty cue inside a sentence.
_CLAUSE_BREAK = re.compile(
    r";|:(?!\d)|\b(?:but|however|although|though|whereas|while|yet|except(?: for)?|aside from|apart from"
    r"|other than|with the exception of|which|that is|otherwise|now)\b"
    r"|\b(?:and|,)?\s*there (?:is|are|has been|have been|was|were)\b"
    r"|,\s*(?=(?:and\s+)?(?:the|this|these|it|there)\b)"
    r"|\band\s+(?=(?:the|a|an)\s)",
    re.IGNORECASE,
)

# ---------------------------------------------------------------- cues

_PSEUDO = [
    r"no (?:(?:significant|appreciable|interval|definite|substantial|radiographic)\s+)*(?:change|increase|decrease|progression|difference|worsening)",
    r"not (?:only|necessarily|significantly changed|changed)",
    r"without (?:(?:significant|appreciable|interval|definite|substantial|radiographic)\s+)*change",
    r"gram negative",
    r"(?:most|strongly|highly|very) (?:suggestive of|suggests|suggesting)",  # as strong as "likely"
    r"(?:to|that would|which would) (?:suggest|indicate|represent)",
    r"no longer (?:requires?|needs?)",
]
_UNCERTAIN = [
    r"can ?not (?:be )?(?:entirely |completely |definitely |totally )?(?:exclude|excluded|rule out|ruled out)",
    r"can't (?:be )?(?:entirely )?(?:exclude|excluded|rule out|ruled out)",
    r"not (?:entirely |completely |definitely )?(?:excluded|ruled out)",
    r"(?:difficult|hard) to (?:entirely |completely )?(?:exclude|rule out)",
    r"(?:may|might|could) (?:also )?(?:represent|reflect|be|indicate|relate|include|have|signify|correspond)",
    r"possibl[ey]",
    r"maybe",
    r"(?:to )?(?:exclude|rule out|evaluate for|assess for|look for)",
    r"(?:correlate (?:clinically )?|(?:clinical )?correlation )for",
    r"in the (?:appropriate|proper|right) clinical (?:setting|context)",
    r"questionabl[ey]",
    r"question(?: of)?",
    r"(?:could|may|might|can) (?:obscure|mask|hide)",
    r"(?:detect(?:ing|ion of)?|to detect)",
    r"suspicious (?:for|of)",
    r"suspect(?:ed)?",
    r"suggest(?:s|ive of|ing|ed)?",
    r"concern(?:ing)? for",
    r"worrisome for",
    r"versus|vs\.?",
    r"differential (?:diagnosis )?(?:includes?|considerations?)",
    r"rule out|r/o",
    r"equivocal",
    r"indeterminate",
    r"uncertain",
    r"cannot be (?:excluded|ruled out)",
    r"raises? the possibility",
    r"(?:not|cannot be) (?:clearly |well )?(?:characterized|evaluated|assessed)",
]
_RESOLVED = [
    r"(?:interval |complete |near complete )?resolution of",
    r"resolved",
    r"no longer (?:seen |visualized |present |evident |identified |apparent )?(?:is )?(?:evidence of|seen|present|visualized|identified|evident|apparent|visible)?",
    r"(?:has |have )?cleared",
    r"clearing of",
]
_NEGATION = [
    r"no (?:evidence|signs?|findings?|radiographic evidence|convincing evidence|definite evidence|suggestion) (?:of|for|to suggest)",
    r"negative for",
    r"free of",
    r"clear of",
    r"absence of",
    r"without(?: evidence of| signs? of)?",
    r"no(?:ne)?",
    r"not",
    r"nor",
    r"neither",
    r"never",
    r"absent",
]
_HISTORY = [
    r"(?:known )?history of",
    r"hx of",
    r"h/o",
    r"previously (?:seen|noted|described|demonstrated|identified|visualized)",
    r"previous",
    r"prior",
]

_PRE_CUES = re.compile(
    r"(?<![\w])(?:"
    + "|".join(
        f"(?P<{kind}{i}>{pattern})"
        for kind, patterns in (
            ("pseudo", _PSEUDO),
            ("uncertain", _UNCERTAIN),
            ("resolved", _RESOLVED),
            ("negated", _NEGATION),
            ("history", _HISTORY),
        )
        for i, pattern in enumerate(patterns)
    )
    + r")(?![\w])",
    re.IGNORECASE,
)

_COPULA = r"(?:(?:is|are|was|were|has|have)(?: (?:been|now|also|again))?\s+)?"
_POST_CUES = re.compile(
    r"(?P<sep>[^.;]*?)\s*(?:"
    rf"(?P<uncertain>{_COPULA}(?:not (?:entirely |completely |definitely )?(?:excluded|ruled out)"
    r"|can ?not be (?:entirely |completely )?(?:excluded|ruled out)|(?:suspected|questioned|possible|considered)"
    r"|(?:difficult|hard) to (?:entirely |completely )?(?:exclude|rule out))|\?)"
    rf"|(?P<resolved>{_COPULA}(?:resolved|cleared|no longer (?:seen|visualized|present|evident|identified|apparent|visible)))"
    rf"|(?P<negated>{_COPULA}(?:not|no longer) (?:(?:well |clearly |definitely )?(?:seen|identified|visualized|present"
    r"|evident|demonstrated|appreciated|noted|detected|visible|apparent|shown|recognized))"
    r"|(?:is |are )?(?:absent|excluded|ruled out))"
    r")(?![\w])",
    re.IGNORECASE,
)
# "X versus Y": the cue also reaches back to the alternative just before it.
_VERSUS_AFTER = re.compile(r"\s*(?:[\w/-]+\s+){0,4}?(?:versus|vs\.?)(?![\w])", re.IGNORECASE)
_VERB_BETWEEN = re.compile(r"\b(?:is|are|was|were|has|have|there|with|shows?|demonstrates?|appears?)\b", re.IGNORECASE)
_REASSERT = re.compile(
    r"\b(?:again (?:seen|noted|demonstrated|identified|visualized)|re-?demonstrated|persist\w*|unchanged|stable"
    r"|remains?|still|continues?|is (?:again )?(?:seen|present|noted|identified))\b",
    re.IGNORECASE,
)

_SEVERITY = re.compile(
    r"\b(?:(?P<a>trace|minimal|tiny|small|mild|slight|moderate|large|severe|marked|massive|extensive|tension|"
    r"borderline|subtle)(?:ly)?(?:\s+(?:to|-)\s+(?P<b>small|mild|moderate|large|severe|marked)(?:ly)?)?)\b",
    re.IGNORECASE,
)
_SEVERITY_CANON = {
    "trace": "minimal",
    "tiny": "minimal",
    "minimal": "minimal",
    "subtle": "minimal",
    "slight": "mild",
    "mild": "mild",
    "borderline": "borderline",
    "small": "small",
    "moderate": "moderate",
    "large": "large",
    "massive": "large",
    "extensive": "large",
    "severe": "severe",
    "marked": "severe",
    "tension": "tension",
}
_LATERALITY = re.compile(
    r"\b(?P<bi>bilateral(?:ly)?|both|bibasilar|bibasal|bi-?apical|biapical)\b|\b(?P<left>left|lt)\b|\b(?P<right>right|rt)\b",
    re.IGNORECASE,
)
_CHANGE = [
    ("new", re.compile(r"\b(?:new(?:ly)?|interval (?:development|appearance)|developing|since developed)\b", re.I)),
    (
        "worsening",
        re.compile(
            r"\b(?:worsen\w*|increas(?:ing|ed in size|e in)|enlarging|progress\w*|interval increase|larger|more (?:prominent|extensive))\b",
            re.I,
        ),
    ),
    ("improving", re.compile(r"\b(?:improv\w*|decreas\w*|smaller|resolving|diminish\w*|less (?:prominent|extensive)|regress\w*)\b", re.I)),
    (
        "stable",
        re.compile(
            r"\b(?:stable|stably|unchanged|again (?:seen|noted|demonstrated)|persist\w*|re-?demonstrated|no (?:significant |interval )?change)\b",
            re.I,
        ),
    ),
]
# Separators between noun phrases in a list ("small left effusion and right basilar atelectasis").
_PHRASE_SEP = re.compile(r",|;|\b(?:and|or|with|versus|vs)\b", re.IGNORECASE)


@dataclass
class _Mention:
    code: str
    start: int
    end: int
    sent_start: int
    sent_end: int
    status: str
    cue: str | None
    severity: str | None
    laterality: str | None
    change: str | None


def _clauses(text: str, s0: int, s1: int, blocked: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Split a sentence span into clause spans at scope-ending words and at normal statements."""
    cuts = {s0, s1}
    for m in _CLAUSE_BREAK.finditer(text, s0, s1):
        cuts.add(m.start())
        cuts.add(m.end())
    for b0, b1 in blocked:
        cuts.add(b0)
        cuts.add(b1)
    ordered = sorted(c for c in cuts if s0 <= c <= s1)
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if b > a]


def _phrase_span(text: str, c0: int, c1: int, start: int, end: int) -> tuple[int, int]:
    """The noun phrase around a mention: from the previous list separator to the next one."""
    left = c0
    for m in _PHRASE_SEP.finditer(text, c0, start):
        left = m.end()
    right = c1
    m = _PHRASE_SEP.search(text, end, c1)
    if m:
        right = m.start()
    return left, right


def _severity(window: str) -> str | None:
    m = _SEVERITY.search(window)
    if not m:
        return None
    a = _SEVERITY_CANON[m.group("a").lower()]
    if m.group("b"):
        return f"{a}-{_SEVERITY_CANON[m.group('b').lower()]}"
    return a


def _laterality(window: str) -> str | None:
    sides = set()
    for m in _LATERALITY.finditer(window):
        sides.add("bilateral" if m.group("bi") else "left" if m.group("left") else "right")
    if not sides:
        return None
    if "bilateral" in sides or sides == {"left", "right"}:
        return "bilateral"
    return sides.pop()


def _change(window: str) -> str | None:
    for name, pattern in _CHANGE:
        if pattern.search(window):
            return name
    return None


def _decide(text: str, c0: int, c1: int, start: int, end: int, cues: list[re.Match]) -> tuple[str, str | None, str | None]:
    """Status, cue text and change implied by cues in the clause around one mention."""
    mention_text = text[start:end]
    post = _POST_CUES.match(text, end, c1)
    if post and not re.search(r"\b(?:is|are|appears?)\b", mention_text, re.I):
        between = post.group("sep")
        if not _VERB_BETWEEN.search(between):
            kind = next(k for k in ("uncertain", "resolved", "negated") if post.group(k))
            cue = post.group(kind).strip()
            if kind == "resolved":
                return "absent", cue, "resolved"
            return ("uncertain" if kind == "uncertain" else "absent"), cue, None
    versus = _VERSUS_AFTER.match(text, end, c1)
    if versus:
        return "uncertain", versus.group(0).split()[-1], None
    pre = [m for m in cues if c0 <= m.start() and m.end() <= start]
    if pre:
        m = pre[-1]
        kind = re.sub(r"\d+$", "", m.lastgroup or "")
        cue = m.group(0)
        if kind == "uncertain":
            return "uncertain", cue, None
        if kind == "negated":
            return "absent", cue, None
        if kind == "resolved":
            return "absent", cue, "resolved"
        if kind == "history":
            if _REASSERT.search(text, end, c1) or _REASSERT.search(text, m.end(), start):
                return "present", cue, "stable"
            return "absent", cue, None
    return "present", None, None


def _matches(text: str, compiled: tuple[_CompiledEntry, ...]) -> list[tuple[_CompiledEntry, int, int, bool]]:
    """Every vocabulary match in the text: (entry, start, end, is_negative_form)."""
    spans: list[tuple[_CompiledEntry, int, int, bool]] = []
    for ce in compiled:
        taken: list[tuple[int, int]] = []
        if ce.negative is not None:
            for m in ce.negative.finditer(text):
                spans.append((ce, m.start(), m.end(), True))
                taken.append((m.start(), m.end()))
        if ce.exclusion is not None:
            taken.extend((m.start(), m.end()) for m in ce.exclusion.finditer(text))
        for m in ce.mention.finditer(text):
            a, b = m.start(), m.end()
            if not any(a < y and x < b for x, y in taken):
                spans.append((ce, a, b, False))
    spans.sort(key=lambda s: s[1])
    return spans


def _mentions(text: str, compiled: tuple[_CompiledEntry, ...]) -> list[_Mention]:
    out: list[_Mention] = []
    matches = _matches(text, compiled)
    if not matches:
        return out
    for s0, s1 in split_sentences(text):
        spans = [m for m in matches if s0 <= m[1] and m[2] <= s1]
        if not spans:
            continue
        normal_spans = [(a, b) for ce, a, b, _ in spans if ce.entry.code == NO_FINDING]
        clauses = _clauses(text, s0, s1, normal_spans)
        sentence_cues = [
            m
            for m in _PRE_CUES.finditer(text, s0, s1)
            if not (m.lastgroup or "").startswith("pseudo") and not any(x <= m.start() < y for x, y in normal_spans)
        ]
        for ce, a, b, is_negative_form in spans:
            c0, c1 = next(((x, y) for x, y in clauses if x <= a < y), (s0, s1))
            c1 = max(c1, b)
            if ce.entry.code == NO_FINDING:
                status, cue, change = "present", None, None
            elif is_negative_form:
                status, cue, change = "absent", text[a:b], None
            else:
                cues = [m for m in sentence_cues if c0 <= m.start() and m.end() <= c1 and not (a <= m.start() < b)]
                status, cue, change = _decide(text, c0, c1, a, b, cues)
            p0, p1 = _phrase_span(text, c0, c1, a, b)
            # Words inside the mention itself ("small bowel obstruction") are not attributes.
            window = f"{text[p0:a]} | {text[b:p1]}"
            out.append(
                _Mention(
                    code=ce.entry.code,
                    start=a,
                    end=b,
                    sent_start=s0,
                    sent_end=s1,
                    status=status,
                    cue=cue,
                    severity=_severity(window),
                    laterality=_laterality(text[p0:p1]),
                    change=change or _change(text[c0:c1]),
                )
            )
    return out


def extract(text: str, modality: str = "chest_xray", vocab: Vocabulary | None = None) -> list[Finding]:
    """Findings (one per code, strongest status wins) with evidence offsets into `text`."""
    if vocab is None:
        vocab = load_vocabulary(modality)
    if not text or not text.strip():
        return []
    compiled = vocab._compiled or _compile(vocab)
    by_code: dict[str, list[_Mention]] = {}
    for mention in _mentions(text, compiled):
        by_code.setdefault(mention.code, []).append(mention)
    findings: list[tuple[int, Finding]] = []
    for code, mentions in by_code.items():
        best = max(mentions, key=lambda m: (_STATUS_RANK[m.status], -m.start))
        same = [m for m in mentions if m.status == best.status]
        severity = best.severity or next((m.severity for m in same if m.severity), None)
        laterality = best.laterality or next((m.laterality for m in same if m.laterality), None)
        entry = vocab.entries[code]
        evidence = Evidence(
            text=text[best.start : best.end],
            start=best.start,
            end=best.end,
            sentence=text[best.sent_start : best.sent_end],
            sentence_start=best.sent_start,
            sentence_end=best.sent_end,
        )
        findings.append(
            (
                best.start,
                Finding(
                    code=code,
                    label=entry.label,
                    status=best.status,
                    evidence=evidence,
                    critical=entry.critical,
                    severity=severity,
                    laterality=laterality,
                    change=best.change,
                    cue=best.cue,
                ),
            )
        )
    return [f for _, f in sorted(findings, key=lambda x: x[0])]
