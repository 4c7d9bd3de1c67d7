"""Findings extraction: vocabularies as data, negation/uncertainty-aware extractor."""

from medvlm.findings.extract import (
    NO_FINDING,
    VocabEntry,
    Vocabulary,
    VocabularyError,
    extract,
    load_vocabulary,
    split_sentences,
)

__all__ = [
    "NO_FINDING",
    "VocabEntry",
    "Vocabulary",
    "VocabularyError",
    "extract",
    "load_vocabulary",
    "split_sentences",
]
