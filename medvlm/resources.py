"""The data files a run uses per modality (prompt template, vocabulary, rules), loaded once and hashed.

The one place that loads them for a batch: the stages read them from here, and the resume
fingerprint takes their hashes from here, so both always agree on which files were used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import findings, risk
from .errors import UsageProblem, first_line
from .prompts import PromptError, PromptTemplate, load_template
from .records import MODALITIES


@dataclass(frozen=True)
class ModalityResources:
    template: PromptTemplate
    vocab: object  # findings.Vocabulary
    rules: object  # risk.RuleSet

    def provenance(self) -> dict:
        """The vocabulary, its cue file and the rules as a report's provenance names them."""
        v, r = self.vocab, self.rules
        return {
            "vocabulary": v.provenance(),
            "cues": v.cues.provenance(),
            "rules": {"id": r.id, "sha256": r.hash, "path": str(r.path)},
        }

    def hashes(self) -> dict:
        """What the resume fingerprint keys on for this modality."""
        return {
            "prompt": {"id": self.template.id, "sha256": self.template.hash},
            "vocabulary": self.vocab.hash,
            "cues": self.vocab.cues_hash,
            "rules": self.rules.hash,
        }


class Resources:
    """Per-modality templates, vocabularies and rules for one run (overrides from the config)."""

    def __init__(self, prompt_file: Path | None = None, vocab_file: Path | None = None, rules_file: Path | None = None):
        self.prompt_file, self.vocab_file, self.rules_file = prompt_file, vocab_file, rules_file
        self._cache: dict[str, ModalityResources] = {}

    @classmethod
    def for_config(cls, config) -> "Resources":
        return cls(config.prompt_file, config.vocab_file, config.rules_file)

    def __getstate__(self) -> dict:
        # Shipped to other processes by path; each process loads (and validates) its own copy.
        return {"prompt_file": self.prompt_file, "vocab_file": self.vocab_file, "rules_file": self.rules_file}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def for_modality(self, modality: str) -> ModalityResources:
        """Loaded and validated; a bad file is a UsageProblem naming it (file:line where known)."""
        if modality not in self._cache:
            try:
                template = load_template(self.prompt_file or modality)
                vocab = findings.load_vocabulary(self.vocab_file or modality)
                rules = risk.load_rules(self.rules_file or modality, vocab)
            except (PromptError, ValueError, OSError) as exc:
                raise UsageProblem(first_line(exc)) from None
            if self.prompt_file and template.modality != modality:
                raise UsageProblem(f"--prompt {self.prompt_file} is a template for {template.modality} studies, "
                                   f"not {modality} (its `modality:` field)")
            self._cache[modality] = ModalityResources(template, vocab, rules)
        return self._cache[modality]

    def hashes(self, modality: str) -> dict:
        """{modality: hashes} for every modality a run may use; a broken file is named, not raised."""
        modalities = MODALITIES if modality == "auto" else (modality,)
        out = {}
        for m in modalities:
            try:
                out[m] = self.for_modality(m).hashes()
            except UsageProblem as exc:  # the batch fails later with this message when it needs the file
                out[m] = {"unavailable": str(exc)}
        return out
