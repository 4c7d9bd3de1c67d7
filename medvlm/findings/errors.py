"""Errors of the findings data files (one line each: "path:line: what is wrong")."""


class VocabularyError(ValueError):
    """A vocabulary file is invalid; the message is one line "path:line: what is wrong"."""


class CuesError(VocabularyError):
    """A cue file is invalid (a vocabulary's language is part of the vocabulary)."""
