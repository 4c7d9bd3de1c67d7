"""Grade risk from coded findings with rules kept as data (one YAML file per modality)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from medvlm.findings.errors import VocabularyError
from medvlm.findings.vocabulary import NO_FINDING, Vocabulary, load_vocabulary
from medvlm.findings.yamlmarks import LineDict, LineList, load_marked, reject_unknown_keys
from medvlm.paths import resolve_data_path
from medvlm.records import MODALITIES, RISK_LEVELS, FiredRule, Finding, RiskGrade

# Severity order of the levels a rule may fire; indeterminate sits outside the scale.
LEVEL_ORDER = {"normal": 0, "low": 1, "moderate": 2, "high": 3, "critical": 4}
ANSWER_STATUSES = ("complete", "truncated", "empty", "error")
_STATUSES = ("present", "absent", "uncertain")
_WHEN_KEYS = {"code", "critical", "status", "severity", "laterality", "change"}
_RULE_KEYS = {"id", "level", "description", "when", "min_count", "only_unmatched"}


class RulesError(ValueError):
    """A rules file is invalid; the message is one line "path:line: what is wrong"."""


@dataclass(frozen=True)
class Rule:
    id: str
    level: str
    description: str
    codes: frozenset[str] | None = None  # None: any code except no_finding
    critical: bool | None = None
    statuses: frozenset[str] = frozenset({"present"})
    severities: frozenset[str] | None = None
    lateralities: frozenset[str] | None = None
    changes: frozenset[str] | None = None
    min_count: int = 1
    only_unmatched: bool = False  # fire only for findings that no earlier rule matched
    line: int = 0

    def matches(self, f: Finding) -> bool:
        if self.codes is None:
            if f.code == NO_FINDING:
                return False
        elif f.code not in self.codes:
            return False
        if self.critical is not None and f.critical != self.critical:
            return False
        if f.status not in self.statuses:
            return False
        for wanted, value in ((self.severities, f.severity), (self.lateralities, f.laterality), (self.changes, f.change)):
            if wanted is not None and value not in wanted:
                return False
        return True


@dataclass(frozen=True)
class RuleSet:
    id: str
    path: Path
    hash: str  # sha256 of the rules file bytes
    rules: tuple[Rule, ...]
    vocabulary_id: str = ""
    version: str = ""


def _as_set(value, key: str, path: Path, line: int, allowed: set[str] | None = None) -> frozenset[str]:
    items = list(value) if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise RulesError(f"{path}:{line}: '{key}' must be a string or a list of strings")
    lines = getattr(value, "item_lines", None) or [line] * len(items)
    if allowed is not None:
        for item, item_line in zip(items, lines):
            if item not in allowed:
                raise RulesError(f"{path}:{item_line}: unknown {key} {item!r} (known: {', '.join(sorted(allowed))})")
    return frozenset(items)


def _parse_rule(raw, path: Path, line: int, vocab: Vocabulary) -> Rule:
    if not isinstance(raw, LineDict):
        raise RulesError(f"{path}:{line}: each rule must be a mapping with id, level, when")
    reject_unknown_keys(raw, _RULE_KEYS, path, RulesError, "rule key")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        raise RulesError(f"{path}:{line}: rule needs an 'id' string")
    level = raw.get("level")
    if level not in RISK_LEVELS:
        lvl_line = raw.key_lines.get("level", line)
        raise RulesError(f"{path}:{lvl_line}: rule {rule_id!r} has unknown level {level!r} (known: {', '.join(RISK_LEVELS)})")
    description = raw.get("description", rule_id)
    if not isinstance(description, str):
        raise RulesError(f"{path}:{raw.key_lines['description']}: description of {rule_id!r} must be a string")
    min_count = raw.get("min_count", 1)
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        raise RulesError(f"{path}:{raw.key_lines.get('min_count', line)}: min_count of {rule_id!r} must be a positive integer")
    only_unmatched = raw.get("only_unmatched", False)
    if not isinstance(only_unmatched, bool):
        raise RulesError(f"{path}:{raw.key_lines['only_unmatched']}: only_unmatched of {rule_id!r} must be true or false")
    when = raw.get("when")
    if not isinstance(when, LineDict):
        raise RulesError(f"{path}:{raw.key_lines.get('when', line)}: rule {rule_id!r} needs a 'when' mapping")
    reject_unknown_keys(when, _WHEN_KEYS, path, RulesError, "condition", f" in rule {rule_id!r}")

    def cond(key: str, allowed: set[str] | None = None) -> frozenset[str] | None:
        if key not in when:
            return None
        return _as_set(when[key], key, path, when.key_lines[key], allowed)

    critical = when.get("critical")
    if critical is not None and not isinstance(critical, bool):
        raise RulesError(f"{path}:{when.key_lines['critical']}: 'critical' must be true or false")
    return Rule(
        id=rule_id,
        level=level,
        description=description,
        codes=cond("code", set(vocab.entries)),
        critical=critical,
        statuses=cond("status", set(_STATUSES)) or frozenset({"present"}),
        severities=cond("severity"),
        lateralities=cond("laterality", {"left", "right", "bilateral"}),
        changes=cond("change", {"new", "worsening", "stable", "improving", "resolved"}),
        min_count=min_count,
        only_unmatched=only_unmatched,
        line=line,
    )


def load_rules(modality_or_path: str | Path, vocab: Vocabulary | None = None) -> RuleSet:
    """Load and validate a rules file against a vocabulary (the file's own, unless given)."""
    path = resolve_data_path(modality_or_path, "risk/rules", MODALITIES)
    if not path.is_file():
        raise RulesError(f"{path}:0: rules file not found")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    data = load_marked(path, RulesError)
    if not isinstance(data, LineDict):
        raise RulesError(f"{path}:1: top level must be a mapping with 'id' and 'rules'")
    reject_unknown_keys(data, {"id", "version", "vocabulary", "rules", "description"}, path, RulesError, "top-level key")
    rules_id = data.get("id")
    if not isinstance(rules_id, str) or not rules_id:
        raise RulesError(f"{path}:{data.key_lines.get('id', 1)}: 'id' must be a non-empty string")
    if vocab is None:
        vocab_ref = data.get("vocabulary", rules_id)
        try:
            vocab = load_vocabulary(vocab_ref if isinstance(vocab_ref, str) else rules_id)
        except VocabularyError as exc:
            raise RulesError(f"{path}:{data.key_lines.get('vocabulary', 1)}: cannot load vocabulary: {exc}") from None
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, LineList) or not raw_rules:
        raise RulesError(f"{path}:{data.key_lines.get('rules', 1)}: 'rules' must be a non-empty list")
    rules = []
    seen: set[str] = set()
    for raw, line in zip(raw_rules, raw_rules.item_lines):
        rule = _parse_rule(raw, path, line, vocab)
        if rule.id in seen:
            raise RulesError(f"{path}:{line}: duplicate rule id {rule.id!r}")
        seen.add(rule.id)
        rules.append(rule)
    return RuleSet(
        id=rules_id,
        path=path,
        hash=digest,
        rules=tuple(rules),
        vocabulary_id=vocab.id,
        version=str(data.get("version", "")),
    )


def _evidence(f: Finding) -> str:
    ev = f.evidence
    return f"{ev.sentence} [{ev.start}:{ev.end} {ev.text!r}]"


def grade(findings: list[Finding], rules: RuleSet, answer_status: str = "complete") -> RiskGrade:
    """Risk level plus every rule that fired; incomplete answers never grade normal."""
    if answer_status not in ANSWER_STATUSES:
        raise ValueError(f"answer_status must be one of {', '.join(ANSWER_STATUSES)}, not {answer_status!r}")
    fired: list[FiredRule] = []
    covered: set[str] = set()
    for rule in rules.rules:
        hits = [f for f in findings if rule.matches(f) and not (rule.only_unmatched and f.code in covered)]
        if len(hits) < rule.min_count:
            continue
        for f in hits:
            covered.add(f.code)
            fired.append(FiredRule(rule.id, rule.level, rule.description, f.code, f.status, _evidence(f)))
    real = [f for f in findings if f.code != NO_FINDING and f.status in ("present", "uncertain")]
    for f in real:
        if f.code not in covered:
            # A finding no rule speaks for must still keep the study off "normal".
            fired.append(FiredRule("unmatched_finding", "low", "Finding not covered by any rule", f.code, f.status, _evidence(f)))
    scaled = [r.level for r in fired if r.level in LEVEL_ORDER]
    if not scaled:
        level = "indeterminate"
    else:
        level = max(scaled, key=LEVEL_ORDER.__getitem__)
        if level == "normal" and (real or any(r.level == "indeterminate" for r in fired)):
            level = "indeterminate"
    if answer_status != "complete" and (not real or level == "normal"):
        fired.append(
            FiredRule(
                f"answer_{answer_status}",
                "indeterminate",
                f"The model answer is {answer_status}; absence of findings cannot be trusted",
            )
        )
        level = "indeterminate"
    return RiskGrade(level=level, rules_fired=tuple(fired), rules_id=rules.id, rules_hash=rules.hash)
