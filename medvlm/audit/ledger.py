"""The run ledger: an append-only, hash-chained JSON-lines file in the output folder.

Why JSON lines and not SQLite: an auditor must be able to read the trail months later from the
output folder alone, with `tail`, `jq` or pandas and without medvlm; an append touches only the end
of one plain file, so a power cut can damage at most the last line (detected and repaired, below);
and a hash chain over canonical JSON lines is simple enough to re-implement in a dozen lines.

Each line is one canonical JSON object (sorted keys, no spaces) with `seq` (its 0-based line
number), `prev` (the previous record's `hash`, GENESIS for the first) and `hash` (SHA-256 of the
canonical JSON of the record without `hash`). Editing, inserting, deleting or reordering any line
breaks the chain at that point. The chain is tamper-evident, not tamper-proof: whoever can write
the folder can rewrite the whole chain, so keep the head hash that `medvlm verify` prints elsewhere.

Torn last line: a record is appended with one write() of line + newline, then fsync. A crash in
the middle (power loss) can leave bytes after the last newline. Those bytes never became part of
the chain, so the next batch (holding the run lock) moves them to `.medvlm/torn/`, truncates the
ledger to its last complete line and appends a `repair` record naming the length and SHA-256 of
what it removed. Until then `medvlm verify` reports the torn tail as a problem. Anything wrong
before the last newline is never repaired: it is reported as a broken chain.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RunBusy
from ..fileio import _fsync_dir, atomic_write_bytes

LEDGER_NAME = "ledger.jsonl"
GENESIS = "0" * 64


def canonical(obj: dict) -> bytes:
    """The one byte form that is hashed and written (sorted keys, no whitespace, UTF-8).

    A lone surrogate (a file name that is not UTF-8, echoed in some message) is written as its JSON
    escape (\\udcXX), which reads back as the same string: the record still hashes the same.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "backslashreplace")


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


@dataclass
class LedgerProblem:
    line: int  # 1-based line number in ledger.jsonl
    kind: str  # invalid_json, record_edited, broken_chain, torn_tail
    message: str


@dataclass
class LedgerState:
    """A parsed ledger: the records that chain correctly, and what is wrong with the rest."""

    path: Path
    records: list[dict] = field(default_factory=list)
    problems: list[LedgerProblem] = field(default_factory=list)
    good_bytes: int = 0  # length of the prefix that ends with the last complete line
    torn: bytes = b""  # bytes after the last newline (a crash mid-append)
    prefix_sha256: str = ""  # SHA-256 of the first good_bytes bytes (lets a later read parse only what was appended)

    @property
    def head(self) -> str:
        return self.records[-1]["hash"] if self.records else GENESIS


def read_ledger(path: Path, previous: LedgerState | None = None) -> LedgerState:
    """Parse and check the whole chain; never raises for a damaged file (problems are listed).

    With `previous` (an earlier read of the same file without problems), when the file still starts
    with exactly the bytes that read covered (compared by SHA-256), only the lines appended since are
    parsed and checked: the same answer as a full read at a fraction of the cost on a long ledger.
    """
    path = Path(path)
    state = LedgerState(path)
    if not path.is_file():
        return state
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    state.good_bytes, state.torn = cut, data[cut:]
    expected_prev, expected_seq, start = GENESIS, 0, 0
    if (previous is not None and not previous.problems and previous.path == path and previous.good_bytes <= cut
            and previous.prefix_sha256 == hashlib.sha256(data[:previous.good_bytes]).hexdigest()):
        state.records = list(previous.records)
        expected_prev, expected_seq, start = previous.head, len(previous.records), previous.good_bytes
    for number, raw in enumerate(data[start:cut].split(b"\n")[:-1], start=len(state.records) + 1):
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            state.problems.append(LedgerProblem(number, "invalid_json", "not a JSON record (edited or corrupted)"))
            expected_prev = expected_seq = None
            continue
        if record.get("hash") != record_hash(record):
            state.problems.append(
                LedgerProblem(number, "record_edited", "record content does not match its hash (edited)")
            )
        elif expected_prev is not None and record.get("prev") != expected_prev:
            state.problems.append(
                LedgerProblem(
                    number, "broken_chain", "broken chain: prev does not match the previous record's hash "
                    "(a record was removed, inserted or reordered)"
                )
            )
        elif expected_seq is not None and record.get("seq") != expected_seq:
            state.problems.append(
                LedgerProblem(number, "broken_chain", f"broken chain: seq {record.get('seq')} where {expected_seq} was expected")
            )
        expected_prev = record.get("hash")
        expected_seq = record.get("seq", -1) + 1 if isinstance(record.get("seq"), int) else None
        state.records.append(record)
    state.prefix_sha256 = hashlib.sha256(data[:cut]).hexdigest()
    if state.torn:
        state.problems.append(
            LedgerProblem(
                len(state.records) + 1,
                "torn_tail",
                f"torn last record ({len(state.torn)} bytes after the last newline): a batch stopped mid-append; "
                "the next batch repairs it",
            )
        )
    return state


class LedgerChanged(RunBusy):
    """The ledger no longer holds the chain this writer appended (someone else wrote it): exit code 2."""


class LedgerWriter:
    """Appends records to a ledger whose chain was read by read_ledger (the caller holds the run lock)."""

    def __init__(self, state: LedgerState, *, torn_dir: Path):
        self.path = state.path
        self.head = state.head
        self.seq = len(state.records)
        self._torn_dir = Path(torn_dir)
        self._state = state
        self._size = state.good_bytes + len(state.torn)  # what the file's length is after our last append

    def repair_torn_tail(self) -> dict | None:
        """Move bytes after the last newline aside, truncate, and append a `repair` record."""
        torn = self._state.torn
        if not torn:
            return None
        self._size = self._state.good_bytes
        digest = hashlib.sha256(torn).hexdigest()
        saved = self._torn_dir / f"ledger-offset{self._state.good_bytes}-{digest[:12]}.part"
        atomic_write_bytes(saved, torn)
        with open(self.path, "r+b") as fh:
            fh.truncate(self._state.good_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        self._state.torn = b""
        return self.append(
            {
                "kind": "repair",
                "torn_bytes": len(torn),
                "torn_sha256": digest,
                "saved_to": str(saved.relative_to(self.path.parent)) if saved.is_relative_to(self.path.parent) else str(saved),
            }
        )

    def append(self, fields: dict) -> dict:
        """Chain, hash and durably append one record; returns it as written."""
        if self._file_size() != self._size:
            self._resync()
        record = {**fields, "seq": self.seq, "prev": self.head}
        record["hash"] = record_hash(record)
        line = canonical(record) + b"\n"
        new_file = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            self.head, self.seq, self._size = record["hash"], self.seq + 1, self._size + len(line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new_file:
            _fsync_dir(self.path.parent)
        return record

    def _file_size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _resync(self) -> None:
        """Take the head from the file when an earlier append was cut off between its write and the bookkeeping.

        Ctrl-C (KeyboardInterrupt) can land after a record's bytes reached the file and before the head
        moved on; chaining the next record (the run's `run_end`) to the stale head would break the
        chain for good. The lines we wrote are re-read and checked; a half-written line is moved aside
        like any torn tail. Anything else wrong means another writer, and nothing more is appended.
        """
        previous = self._state if not self._state.problems else None
        state = read_ledger(self.path, previous)
        bad = [p for p in state.problems if p.kind != "torn_tail"]
        if bad:
            raise LedgerChanged(f"{self.path} line {bad[0].line}: {bad[0].message}; it changed while this run held it")
        self._state, self.head, self.seq = state, state.head, len(state.records)
        self._size = state.good_bytes + len(state.torn)
        self.repair_torn_tail()


def latest_attempts(records: list[dict]) -> dict[str, dict]:
    """study_key -> its most recent `attempt` record."""
    latest: dict[str, dict] = {}
    for record in records:
        if record.get("kind") == "attempt" and record.get("study_key"):
            latest[record["study_key"]] = record
    return latest
