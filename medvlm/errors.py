"""Errors every layer may raise or report; this module imports nothing from medvlm (a leaf).

Usage errors end a command with exit code 2 and one line on stderr; everything else that goes
wrong with one study is recorded as a value (a StudyError row), not raised.
"""

from __future__ import annotations


class UsageProblem(ValueError):
    """A whole-run problem the user can fix (bad option, file, folder or configuration): exit code 2."""


class RunBusy(UsageProblem):
    """The run folder is locked by another medvlm process, or its ledger is damaged."""


class NotARun(UsageProblem):
    """The folder given is not a medvlm run folder."""


class ModelUnavailable(UsageProblem, RuntimeError):
    """The model cannot be used on this machine; the message is one actionable sentence."""


class StudyFailure(RuntimeError):
    """One study failed for a reason whose message is already the one line to record (no type prefix)."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """`Type: first line` for reasons recorded in summaries and ledgers (a StudyFailure: its first line alone)."""
    text = str(exc).strip()
    if isinstance(exc, StudyFailure) and text:
        return text.splitlines()[0]
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
