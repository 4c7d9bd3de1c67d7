"""The one console printer of the command line: what medvlm prints goes through here.

Text from users, files, reports and models (file names such as `x[/red].png`, reasons such as
`[enforce fail at alloc_cpu.cpp:127]`, `:emoji:` codes) is never read as rich markup: the consoles
have markup and emoji off, and styled prefixes are built as `rich.text.Text` pieces. Lines are
never cut or wrapped to the terminal width. Log records of medvlm's loggers print here (above the
progress bar), Python warnings from pydicom never reach the console (ingest records the ones that
matter in the study's notes).
"""

from __future__ import annotations

import logging
import warnings

from rich.console import Console
from rich.text import Text


def _console(stderr: bool) -> Console:
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False)


class Printer:
    """stdout (results) and stderr (progress, problems, errors) of one command."""

    def __init__(self) -> None:
        self.out = _console(False)
        self.err = _console(True)

    def line(self, text: str, *, err: bool = False) -> None:
        """One line printed as is."""
        (self.err if err else self.out).print(Text(str(text)), soft_wrap=True)

    def styled(self, prefix: str, style: str, text: str, *, err: bool = True) -> None:
        """`prefix` in `style`, then `text` as is."""
        (self.err if err else self.out).print(Text.assemble((prefix, style), " ", str(text)), soft_wrap=True)

    def error(self, message: str) -> None:
        self.styled("error:", "bold red", message)

    def warning(self, message: str) -> None:
        self.styled("warning:", "yellow", message)

    def study_problem(self, status: str, source: str, reason: str) -> None:
        """`error SOURCE: REASON` for one study that failed or was skipped (the source said once)."""
        self.styled(status, "yellow", f"{source}: {without_source(reason, source)}")

    def table(self, table, *, min_width: int | None = None) -> None:
        """A rich Table (its cells are Text or plain strings, never markup)."""
        if min_width and not self.out.is_terminal:
            self.out.width = max(self.out.width, min_width)  # a log file or pipe: no reason to wrap at 80
        self.out.print(table)


def without_source(reason: str, source: str) -> str:
    """The reason without a leading repetition of the study's source ("x.dcm: x.dcm: not a DICOM file")."""
    text = reason or ""
    for name in filter(None, (source, source.rsplit("/", 1)[-1])):
        while text.startswith(f"{name}: "):
            text = text[len(name) + 2 :]
    return text


class _ConsoleHandler(logging.Handler):
    def __init__(self, printer: Printer) -> None:
        super().__init__(logging.INFO)
        self.printer = printer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call must not stop a batch
            message = str(record.msg)
        if record.levelno >= logging.WARNING:
            self.printer.warning(message)
        else:
            self.printer.line(message, err=True)


def install(printer: Printer) -> None:
    """Route medvlm's log records through `printer` and keep library warnings off the console."""
    logger = logging.getLogger("medvlm")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler(printer))
        logger.setLevel(logging.INFO)
        logger.propagate = False
    # pydicom warns about every non-conforming value it reads (UIDs, ages, lengths); ingest records
    # what matters for a study in its notes, and the console stays one line per problem.
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
