"""Finding vocabularies as data: load and validate a YAML file, compile its phrases to patterns."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from medvlm.fileio import sha256_file
from medvlm.findings.cueset import DEFAULT_CUES, CueSet, cues_path, load_cues
from medvlm.findings.errors import VocabularyError
from medvlm.findings.yamlmarks import LineDict, load_marked, read_data_file, reject_unknown_keys
from medvlm.paths import resolve_data_path
from medvlm.records import MODALITIES

NO_FINDING = "no_finding"

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
    cues: CueSet | None = None  # negation/uncertainty cues; None means the default cue file
    _compiled: object = field(default=None, repr=False, compare=False)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(self.entries)

    @property
    def cues_hash(self) -> str:
        """SHA-256 of the cue file this vocabulary is read with."""
        return (self.cues or load_cues()).hash

    def provenance(self) -> dict:
        """{"id", "sha256", "path"} as written into report provenance."""
        return {"id": self.id, "sha256": self.hash, "path": str(self.path)}


@dataclass(frozen=True)
class CompiledEntry:
    """One vocabulary entry's phrases compiled to whole-word alternations."""

    entry: VocabEntry
    mention: re.Pattern
    exclusion: re.Pattern | None
    negative: re.Pattern | None


# ---------------------------------------------------------------- phrases

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


def _alternation(phrases: tuple[str, ...]) -> re.Pattern | None:
    if not phrases:
        return None
    # Longer phrases first so the alternation prefers the most specific synonym.
    ordered = sorted(phrases, key=len, reverse=True)
    # One boundary check around the whole alternation is several times faster than one per phrase.
    body = "|".join(f"(?:{_phrase_body(p)})" for p in ordered)
    return re.compile(rf"(?<![\w])(?:{body})(?![\w])", re.IGNORECASE)


def compile_entries(vocab: Vocabulary) -> tuple[CompiledEntry, ...]:
    """The vocabulary's patterns, compiled once when it is loaded."""
    if vocab._compiled is not None:
        return vocab._compiled
    return tuple(
        CompiledEntry(
            entry=e,
            mention=_alternation(e.synonyms),
            exclusion=_alternation(e.exclusions),
            negative=_alternation(e.negative_forms),
        )
        for e in vocab.entries.values()
    )


# ---------------------------------------------------------------- loading

_ENTRY_KEYS = {"label", "critical", "synonyms", "exclusions", "negative_forms"}
_TOP_KEYS = {"id", "version", "findings", "description", "cues"}
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# (path, file sha256) -> (vocabulary without cues, the cue set it names, line of that name)
_PARSED: dict[tuple[str, str], tuple[Vocabulary, str, int]] = {}
# (path, file sha256, cue file sha256) -> the vocabulary handed out
_VOCAB_CACHE: dict[tuple[str, str, str], Vocabulary] = {}


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
    """Load and validate a vocabulary (a modality name or a YAML path) and its cue file; cached by content hash."""
    path = resolve_data_path(modality_or_path, "findings/vocab", MODALITIES)
    if not path.is_file():
        raise VocabularyError(f"{path}:0: vocabulary file not found")
    try:
        parsed = _PARSED.get((str(path), sha256_file(path)))
    except OSError as exc:
        raise VocabularyError(f"{path}:0: cannot read file ({exc.strerror or exc})") from None
    if parsed is None:
        parsed = _parse(path)
        _PARSED[(str(path), parsed[0].hash)] = parsed
    bare, cue_ref, cue_line = parsed
    cue_file = cues_path(cue_ref, relative_to=path.parent)  # resolved each time: MEDVLM_FINDINGS_CUES_DIR may change
    if not cue_file.is_file():
        raise VocabularyError(f"{path}:{cue_line}: cue file not found: {cue_file}")
    cues = load_cues(cue_file)
    key = (str(path), bare.hash, cues.hash)
    vocab = _VOCAB_CACHE.get(key)
    if vocab is None:
        vocab = replace(bare, cues=cues)  # shares the compiled patterns
        _VOCAB_CACHE[key] = vocab
    return vocab


def _parse(path: Path) -> tuple[Vocabulary, str, int]:
    raw, text = read_data_file(path, VocabularyError)
    data = load_marked(path, VocabularyError, text)
    if not isinstance(data, LineDict):
        raise VocabularyError(f"{path}:1: top level must be a mapping with 'id' and 'findings'")
    reject_unknown_keys(data, _TOP_KEYS, path, VocabularyError, "top-level key")
    vocab_id = data.get("id")
    if not isinstance(vocab_id, str) or not vocab_id:
        raise VocabularyError(f"{path}:{data.key_lines.get('id', 1)}: 'id' must be a non-empty string")
    cue_ref = data.get("cues", DEFAULT_CUES)
    cue_line = data.key_lines.get("cues", 1)
    if not isinstance(cue_ref, str) or not cue_ref.strip():
        raise VocabularyError(f"{path}:{cue_line}: 'cues' must name a cue set (e.g. en) or a YAML path")
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
        hash=hashlib.sha256(raw).hexdigest(),
        entries=entries,
        version=str(data.get("version", "")),
    )
    object.__setattr__(vocab, "_compiled", compile_entries(vocab))
    return vocab, cue_ref.strip(), cue_line

