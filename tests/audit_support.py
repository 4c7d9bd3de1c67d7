"""Helpers shared by the tests that drive the real CLI (audit, resume, verify, export, user errors, hostile inputs)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def png(path: Path, seed: int = 0, size: int = 64) -> Path:
    """A small grey noise PNG at path (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8), mode="L").save(path)
    return path


def make_png_studies(root: Path, n: int = 6, size: int = 96) -> Path:
    """n single-image studies: one small grey PNG each, in the folder root (each file is a study)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        png(root / f"cxr-{i:02d}.png", seed=i, size=size)
    return root


def pinned_resources(folder: Path) -> list[str]:
    """Copies of the chest_xray prompt, vocabulary and rules, so edits to the tree during a test
    (colleagues tune the vocabulary) cannot change the attempt fingerprint between two runs."""
    from medvlm.paths import PACKAGE_DIR, prompts_dir

    folder.mkdir(parents=True, exist_ok=True)
    sources = {
        "--prompt": prompts_dir() / "chest_xray.yaml",
        "--vocab": PACKAGE_DIR / "findings" / "vocab" / "chest_xray.yaml",
        "--rules": PACKAGE_DIR / "risk" / "rules" / "chest_xray.yaml",
    }
    args = []
    for flag, src in sources.items():
        dst = folder / f"{flag.strip('-')}.yaml"
        dst.write_bytes(src.read_bytes())
        args += [flag, str(dst)]
    return args


def batch_args(studies: Path, out: Path, *extra: str) -> list[str]:
    return [
        "batch", str(studies), "--modality", "chest_xray", "--model", "demo", "--out", str(out),
        "--max-new-tokens", "8", "--no-pdf", *extra,
    ]


def sigint_as_in_a_terminal() -> None:
    """Popen's preexec_fn for a child that a test stops with SIGINT: Ctrl-C's default action, as a shell's
    foreground job has it. A test runner started as a background job without job control (`pytest ... &`
    in a script) ignores SIGINT, and its children would inherit that and never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def medvlm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "medvlm", *args]


def run_medvlm(*args, env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, bounded in time; `env` adds to this process's environment."""
    return subprocess.run(medvlm_cmd(*map(str, args)), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def cli(*args, env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """run_medvlm, and no command may print a traceback."""
    proc = run_medvlm(*args, env=env, cwd=cwd, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return proc


def read_summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def ledger_records(out: Path) -> list[dict]:
    path = out / "ledger.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().split(b"\n"):
        try:
            records.append(json.loads(line))
        except ValueError:
            pass  # torn or empty
    return records


def attempts(out: Path) -> list[dict]:
    return [r for r in ledger_records(out) if r.get("kind") == "attempt"]
