"""The ledger on its own: chaining, tamper detection, torn-tail repair, weights digest."""

from __future__ import annotations

import contextlib
import json
import os
import signal

import pytest

from medvlm.audit.ledger import GENESIS, LedgerChanged, LedgerWriter, read_ledger, record_hash
from medvlm.models.checkpoint import weights_digest


def _ledger(tmp_path, n=4):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "ledger.jsonl"
    writer = LedgerWriter(read_ledger(path), torn_dir=tmp_path / "torn")
    for i in range(n):
        writer.append({"kind": "attempt", "study_key": f"k{i}", "status": "ok"})
    return path


def test_records_chain_and_verify(tmp_path):
    path = _ledger(tmp_path)
    state = read_ledger(path)
    assert not state.problems
    assert [r["seq"] for r in state.records] == [0, 1, 2, 3]
    assert state.records[0]["prev"] == GENESIS
    for a, b in zip(state.records, state.records[1:]):
        assert b["prev"] == a["hash"] == record_hash(a)


def test_appending_after_reopen_continues_the_chain(tmp_path):
    path = _ledger(tmp_path, 2)
    writer = LedgerWriter(read_ledger(path), torn_dir=tmp_path / "torn")
    writer.append({"kind": "attempt", "study_key": "k9"})
    state = read_ledger(path)
    assert not state.problems and len(state.records) == 3


def test_edited_record_and_deleted_line_are_named(tmp_path):
    path = _ledger(tmp_path)
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["status"] = "error"
    lines[1] = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    assert [(p.line, p.kind) for p in read_ledger(path).problems] == [(2, "record_edited")]

    path = _ledger(tmp_path / "b")
    lines = path.read_text().splitlines()
    del lines[2]
    path.write_text("\n".join(lines) + "\n")
    assert [(p.line, p.kind) for p in read_ledger(path).problems] == [(3, "broken_chain")]


def test_rehashed_edit_still_breaks_the_chain_at_the_next_record(tmp_path):
    path = _ledger(tmp_path)
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["status"] = "error"
    edited["hash"] = record_hash(edited)
    lines[1] = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    assert [(p.line, p.kind) for p in read_ledger(path).problems] == [(3, "broken_chain")]


def test_torn_tail_is_reported_then_repaired_without_breaking_the_chain(tmp_path):
    path = _ledger(tmp_path, 3)
    with open(path, "ab") as fh:
        fh.write(b'{"kind":"attempt","study_key":"k3","sta')  # power cut mid-append
    state = read_ledger(path)
    assert [p.kind for p in state.problems] == ["torn_tail"]
    assert len(state.records) == 3

    writer = LedgerWriter(state, torn_dir=tmp_path / ".medvlm" / "torn")
    repair = writer.repair_torn_tail()
    assert repair["kind"] == "repair" and repair["torn_bytes"] == 39
    saved = tmp_path / repair["saved_to"]
    assert saved.read_bytes().startswith(b'{"kind":"attempt"')
    writer.append({"kind": "attempt", "study_key": "k3", "status": "ok"})
    state = read_ledger(path)
    assert not state.problems
    assert [r["kind"] for r in state.records][-2:] == ["repair", "attempt"]


@contextlib.contextmanager
def _ctrl_c_after_write(fraction=1.0):
    """Deliver a real SIGINT to this process right after the ledger's write() of `fraction` of a line.

    Python raises KeyboardInterrupt at the next bytecode, before the writer notes its new head: the
    window a Ctrl-C hit in the Ray batch of stop 20's CI run.
    """
    real_write = os.write

    def write_then_interrupt(fd, data):
        written = real_write(fd, bytes(data)[: max(1, int(len(data) * fraction))])
        os.kill(os.getpid(), signal.SIGINT)
        return written

    os.write = write_then_interrupt
    try:
        yield
    finally:
        os.write = real_write


def test_ctrl_c_between_a_write_and_its_bookkeeping_does_not_break_the_chain(tmp_path):
    path = _ledger(tmp_path, 2)
    writer = LedgerWriter(read_ledger(path), torn_dir=tmp_path / "torn")
    with pytest.raises(KeyboardInterrupt), _ctrl_c_after_write():
        writer.append({"kind": "attempt", "study_key": "k2", "status": "ok"})
    writer.append({"kind": "run_end", "completed": False})  # what the batch writes on its way out
    state = read_ledger(path)
    assert not state.problems
    assert [r["kind"] for r in state.records] == ["attempt"] * 3 + ["run_end"]
    assert [r["seq"] for r in state.records] == [0, 1, 2, 3]


def test_ctrl_c_in_the_middle_of_a_write_leaves_a_repaired_tail_not_a_broken_line(tmp_path):
    path = _ledger(tmp_path, 2)
    writer = LedgerWriter(read_ledger(path), torn_dir=tmp_path / "torn")
    with pytest.raises(KeyboardInterrupt), _ctrl_c_after_write(0.5):
        writer.append({"kind": "attempt", "study_key": "k2", "status": "ok"})
    writer.append({"kind": "run_end", "completed": False})
    state = read_ledger(path)
    assert not state.problems
    assert [r["kind"] for r in state.records] == ["attempt", "attempt", "repair", "run_end"]
    saved = tmp_path / "torn"
    assert [f.read_bytes()[:9] for f in saved.iterdir()] == [b'{"hash":"'] and b'"study_key":"k2"' not in path.read_bytes()


def test_a_writer_stops_when_the_ledger_was_edited_under_it(tmp_path):
    path = _ledger(tmp_path, 3)
    writer = LedgerWriter(read_ledger(path), torn_dir=tmp_path / "torn")
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"status":"ok"', '"status":"error"')
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    with pytest.raises(LedgerChanged, match="line 1: record content does not match its hash"):
        writer.append({"kind": "run_end"})
    assert path.read_bytes() == before


def test_weights_digest_is_cached_and_follows_content(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLM_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert weights_digest(model) is None
    (model / "model.safetensors").write_bytes(b"a" * 1000)
    first = weights_digest(model)
    assert first and first == weights_digest(model)
    assert (tmp_path / "cache" / "weights-sha256.json").is_file()
    (model / "model.safetensors").write_bytes(b"b" * 1001)
    assert weights_digest(model) != first
