"""Findings extraction: vocabularies and cues as data, a negation/uncertainty-aware extractor.

Layout: errors.py (file errors) < yamlmarks.py (YAML with line numbers) < cueset.py (cue files) <
vocabulary.py (vocabulary files, compiled phrases) ; text.py (sentences, clauses) ; answer.py (what of
a model answer is graded) ; extract.py (decisions) ; extract_csv.py (a CSV of reports in, findings out).
"""

from medvlm.findings.answer import GradedView, answer_status, graded_view
from medvlm.findings.cueset import CueSet, load_cues
from medvlm.findings.errors import CuesError, VocabularyError
from medvlm.findings.extract import extract
from medvlm.findings.text import split_sentences
from medvlm.findings.vocabulary import NO_FINDING, VocabEntry, Vocabulary, load_vocabulary

__all__ = [
    "NO_FINDING",
    "GradedView",
    "answer_status",
    "graded_view",
    "CueSet",
    "CuesError",
    "VocabEntry",
    "Vocabulary",
    "VocabularyError",
    "extract",
    "load_cues",
    "load_vocabulary",
    "split_sentences",
]
