"""Turn free-text radiology (or model) reports into coded findings with auditable evidence.

The decisions live here; the vocabulary (vocabulary.py), the cue patterns (cueset.py, data in
cues/<name>.yaml) and the sentence/clause structure (text.py) are inputs to them.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from medvlm.findings.answer import graded_view, key_value
from medvlm.findings.cueset import AFTER_KINDS, CueSet, load_cues
from medvlm.findings.text import phrase_span, split_clauses, split_sentences
from medvlm.findings.vocabulary import NO_FINDING, CompiledEntry, Vocabulary, compile_entries, load_vocabulary
from medvlm.records import Evidence, Finding

_STATUS_RANK = {"present": 2, "uncertain": 1, "absent": 0}
CONTEXT_CHARS = 400  # how far around a mention its clause is read for cues and attributes


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted spans merged where they overlap (for `_inside`)."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _inside(pos: int, merged: list[tuple[int, int]]) -> bool:
    """Whether pos falls in one of the merged spans (bisection, not a scan)."""
    i = bisect_right(merged, (pos, float("inf"))) - 1
    return i >= 0 and merged[i][0] <= pos < merged[i][1]


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


def _severity(cues: CueSet, window: str) -> str | None:
    m = cues.severity.search(window) if cues.severity is not None else None
    if not m:
        return None
    a = cues.severity_words[m.group("a").lower()]
    if m.groupdict().get("b"):
        return f"{a}-{cues.severity_words[m.group('b').lower()]}"
    return a


def _laterality(cues: CueSet, window: str) -> str | None:
    if cues.laterality is None:
        return None
    sides = set()
    for m in cues.laterality.finditer(window):
        groups = m.groupdict()
        sides.add("bilateral" if groups.get("bi") else "left" if groups.get("left") else "right")
    if not sides:
        return None
    if "bilateral" in sides or sides == {"left", "right"}:
        return "bilateral"
    return sides.pop()


def _change(cues: CueSet, window: str) -> str | None:
    for name, pattern in cues.change:
        if pattern.search(window):
            return name
    return None


def _decide(
    cues: CueSet, text: str, c0: int, c1: int, start: int, end: int, before: list[re.Match]
) -> tuple[str, str | None, str | None]:
    """Status, cue text and change implied by cues in the clause around one mention."""
    mention_text = text[start:end]
    post = cues.after.match(text, end, c1) if cues.after is not None else None
    if post and not (cues.verbs_in_mention is not None and cues.verbs_in_mention.search(mention_text)):
        between = post.group("sep")
        if not (cues.verbs_between is not None and cues.verbs_between.search(between)):
            groups = post.groupdict()
            kind = next((k for k in AFTER_KINDS if groups.get(k)), None)
            if kind is not None:
                cue = groups[kind].strip()
                if kind == "resolved":
                    return "absent", cue, "resolved"
                return ("uncertain" if kind == "uncertain" else "absent"), cue, None
    versus = cues.versus_after.match(text, end, c1)
    if versus:
        return "uncertain", versus.group(0).split()[-1], None
    pre = [m for m in before if c0 <= m.start() and m.end() <= start]
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
            if cues.reassert is not None and (cues.reassert.search(text, end, c1) or cues.reassert.search(text, m.end(), start)):
                return "present", cue, "stable"
            return "absent", cue, None
    return "present", None, None


def _matches(text: str, compiled: tuple[CompiledEntry, ...]) -> list[tuple[CompiledEntry, int, int, bool]]:
    """Every vocabulary match in the text: (entry, start, end, is_negative_form)."""
    spans: list[tuple[CompiledEntry, int, int, bool]] = []
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


def _mentions(text: str, compiled: tuple[CompiledEntry, ...], cues: CueSet) -> list[_Mention]:
    out: list[_Mention] = []
    matches = _matches(text, compiled)
    if not matches:
        return out
    starts = [m[1] for m in matches]  # sorted: each sentence takes its matches by bisection (linear overall)
    for s0, s1 in split_sentences(text):
        spans = [m for m in matches[bisect_left(starts, s0) : bisect_right(starts, s1)] if m[2] <= s1]
        if not spans:
            continue
        normal_spans = [(a, b) for ce, a, b, _ in spans if ce.entry.code == NO_FINDING]
        clauses = split_clauses(text, s0, s1, cues.clause_breaks, normal_spans)
        clause_starts = [x for x, _ in clauses]
        normal_union = _union(normal_spans)
        sentence_cues = [
            m
            for m in (cues.before.finditer(text, s0, s1) if cues.before is not None else ())
            if not (m.lastgroup or "").startswith("pseudo") and not _inside(m.start(), normal_union)
        ]
        cue_starts = [m.start() for m in sentence_cues]
        kv = key_value(text, s0, s1, cues)
        for ce, a, b, is_negative_form in spans:
            i = bisect_right(clause_starts, a) - 1
            c0, c1 = clauses[i] if i >= 0 and a < clauses[i][1] else (s0, s1)
            # Cues act within a few lines of their mention: bounding the context keeps one huge run-on
            # sentence linear in its length (clauses of ordinary reports are far shorter than this).
            c0, c1 = max(c0, a - CONTEXT_CHARS), max(min(c1, b + CONTEXT_CHARS), b)
            labelled = kv is not None and b <= kv[0] and ce.entry.code != NO_FINDING and not is_negative_form
            if ce.entry.code == NO_FINDING:
                status, cue, change = "present", None, None
            elif labelled and kv[1] is not None:
                # "Pneumothorax: none" / "| Effusion | yes |": the value decides.
                status, cue, change = kv[1], (kv[2] if kv[1] != "present" else None), None
            elif is_negative_form:
                status, cue, change = "absent", text[a:b], None
            else:
                nearby = sentence_cues[bisect_left(cue_starts, c0) : bisect_left(cue_starts, c1)]
                before = [m for m in nearby if m.end() <= c1 and not (a <= m.start() < b)]
                status, cue, change = _decide(cues, text, c0, c1, a, b, before)
            if labelled:  # "Pleural effusion: small, left": the attributes are in the value
                c0, c1 = s0, s1
                p0, p1 = s0, s1
            else:
                p0, p1 = phrase_span(text, c0, c1, a, b, cues.phrase_separators)
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
                    severity=_severity(cues, window),
                    laterality=_laterality(cues, text[p0:p1]),
                    change=change or _change(cues, text[c0:c1]),
                )
            )
    return out


def extract(text: str, modality: str = "chest_xray", vocab: Vocabulary | None = None) -> list[Finding]:
    """Findings (one per code, strongest status wins) with evidence offsets into `text`.

    The vocabulary's cue file decides negation and uncertainty (the default cues when it has none)
    and which parts of a model answer are not graded (reasoning, disclaimers, restatements).
    """
    if vocab is None:
        vocab = load_vocabulary(modality)
    if not text or not text.strip():
        return []
    cues = vocab.cues or load_cues()
    # Reasoning blocks, disclaimers, restated questions and markdown syntax are blanked (answer.py);
    # offsets into the graded view are offsets into `text`, which the evidence is cut from.
    graded = graded_view(text, cues)
    if not graded.has_answer:
        return []
    by_code: dict[str, list[_Mention]] = {}
    for mention in _mentions(graded.text, compile_entries(vocab), cues):
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
