"""A run to review: procedural chest phantoms read by a backend that answers with written report texts.

The images are the phantom generator's (real PNG and DICOM files with known findings and
synthetic patient identifiers); the "model" answers each study with a fixed text, so the run has
findings that are right, wrong, missed and negated, one answer that tries to inject HTML, and one
study that fails. Everything after the model (ingest, extraction, grading, reports, ledger) is
medvlm's real batch.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from audit_support import medvlm_cmd  # noqa: F401 - the review tests take it from here
from medvlm.config import RunConfig
from medvlm.models.base import BackendBase, ModelInfo
from medvlm.records import ModelOutput

PROJECT = Path(__file__).resolve().parent.parent

# Phantom study index -> the answer "the model" gives. Index 0..5 of seed 7.
ANSWERS = {
    0: "FINDINGS: Small right pleural effusion. No pneumothorax. Heart size is normal.\n"
       "IMPRESSION: Small right pleural effusion.",
    1: "FINDINGS: The lungs are clear. No pleural effusion or pneumothorax. Normal heart size.\n"
       "IMPRESSION: No acute cardiopulmonary abnormality.",
    2: "FINDINGS: Moderate cardiomegaly. Left lower lobe consolidation. No pneumothorax.\n"
       "IMPRESSION: Cardiomegaly and left lower lobe pneumonia.",
    3: "FINDINGS: Large left pneumothorax with mediastinal shift. Possible small left effusion.\n"
       "IMPRESSION: Tension pneumothorax.",
    4: "<script>alert('x')</script><img src=x onerror=alert(1)> Right upper lobe nodule. No effusion.",
    5: "FINDINGS: Mild pulmonary edema. Bilateral small pleural effusions. Cardiomegaly.\n"
       "IMPRESSION: Congestive heart failure.",
}


class ScriptBackend(BackendBase):
    """Answers each study with ANSWERS[index], the index taken from the phantom folder name."""

    def __init__(self, answers: dict[int, str]):
        self.answers = answers
        digest = hashlib.sha256(repr(sorted(answers.items())).encode()).hexdigest()
        self.info = ModelInfo(name="scripted-reader", source="tests/review_support.py", local_dir=None, revision=None,
                              random_weights=False, dtype="none", quantization="none", device="none", backend="script",
                              identity={"backend": "script", "answers": digest})

    def generate(self, batch, *, max_new_tokens, ignore_eos=False):
        out = []
        for study, _prompt in batch:
            name = Path(study.ref.source).parts[0]
            index = int(name.split("_")[1])
            text = self.answers.get(index, "No acute cardiopulmonary abnormality.")
            out.append(ModelOutput(text, "complete", 40, len(text.split())))
        return out


def make_studies(root: Path, n: int = 6, seed: int = 7, size: int = 192) -> Path:
    """n phantom studies (PNG with sidecar or DICOM) and one unreadable study."""
    from medvlm.phantoms import generate

    root.mkdir(parents=True, exist_ok=True)
    generate(root, n, seed, size, png_share=0.5, lateral_share=0.3)
    (root / "truth.csv").unlink()
    bad = root / "zz_broken"
    bad.mkdir()
    (bad / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # truncated: becomes an error row
    return root


def make_run(tmp: Path, *, include_phi: bool = False, answers: dict[int, str] | None = None, n: int = 6) -> Path:
    """A finished batch over make_studies() with ScriptBackend; returns the run folder."""
    from medvlm.pipeline import run_batch

    studies = make_studies(tmp / "studies", n=n)
    out = tmp / "run"
    run_batch(RunConfig(studies=studies, out=out, model="scripted-reader", write_pdf=False, include_phi=include_phi),
              backend=ScriptBackend(answers or ANSWERS))
    return out


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(PROJECT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


class ReviewProcess:
    """`medvlm review RUN ... --no-browser` as a real subprocess; .url is the printed address (with the token)."""

    def __init__(self, run: Path, *args: str, timeout: float = 60):
        self.proc = subprocess.Popen(medvlm_cmd("review", str(run), "--no-browser", *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env())
        deadline = time.monotonic() + timeout
        self.line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line:
                self.line = line.strip()
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"medvlm review exited {self.proc.returncode}: {self.proc.stderr.read()}")
        if "http://" not in self.line:
            self.stop()
            raise RuntimeError(f"no address printed within {timeout}s: {self.line!r}")
        self.url = self.line.split()[2]
        self.base = self.url.split("/?")[0]
        self.token = self.url.split("token=")[1]

    def stop(self, timeout: float = 20) -> tuple[int, str, str]:
        """Ctrl-C (SIGINT), as a user stops it; SIGKILL only if it does not stop in time."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        out, err = self.proc.communicate()
        return self.proc.returncode, out, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
