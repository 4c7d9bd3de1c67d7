"""What runs inside Ray workers: the decode task, the model actor and the finish task.

Rows move between the stages as {"key": study key, "kind": ..., "blob": pickled payload}:
  ref     -> a StudyRef (the driver's input)
  work    -> a decoded StudyWork (images + prompt), on its way to the model actors
  answer  -> (StudyWork, ModelOutput, ModelInfo), on its way to the finish tasks
  result  -> (StudyResult, ModelInfo | None, stats), on its way back to the driver
  fatal   -> a one-line message that stops the whole run (model cannot load, workers disagree
             with the driver about the model or the data files): a usage problem, exit 2.
Every stage turns a study's own failure into a `result` row (errors are values); only a worker
process that dies loses rows, and the driver notices which (see driver.py).

Nothing here imports Ray: Ray Data calls these functions and this class; they are plain Python.
"""

from __future__ import annotations

import pickle
import socket
import threading
from dataclasses import dataclass
from typing import Any, Iterable

from ... import __version__, stages
from ...config import RunConfig
from ...errors import UsageProblem, first_line, one_line
from ...records import StudyError
from ...resources import Resources
from ..base import BatchJob, finish_or_error, model_stage, preprocess_works


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs, checked against what the driver recorded in the ledger."""

    config: RunConfig  # paths made absolute on the driver
    identity: dict | None  # the model identity the run's fingerprint keys on (None: not resolved yet)
    version: str  # medvlm version on the driver
    resource_hashes: dict  # prompt/vocabulary/rules hashes the driver fingerprinted


def pack(key: str, kind: str, payload: Any) -> dict:
    return {"key": key, "kind": kind, "blob": pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)}


def rows_of(batch: dict) -> Iterable[tuple[str, str, Any]]:
    """(key, kind, payload) for every row of a Ray Data batch (a dict of columns)."""
    for key, kind, blob in zip(batch["key"], batch["kind"], batch["blob"]):
        yield str(key), str(kind), pickle.loads(bytes(blob))


def columns(rows: list[dict]) -> dict[str, list]:
    return {name: [r[name] for r in rows] for name in ("key", "kind", "blob")}


# One Resources per worker process and spec: the data files are loaded and checked once, not per task.
_RESOURCES: dict[int, Resources] = {}
_RESOURCES_LOCK = threading.Lock()


class WorkerMismatch(RuntimeError):
    """This worker would not produce what the driver fingerprinted (other medvlm version or data files)."""


def worker_resources(spec: WorkerSpec) -> Resources:
    """The run's prompt/vocabulary/rules as loaded on this node, after checking they are the driver's."""
    key = hash(pickle.dumps((spec.config.prompt_file, spec.config.vocab_file, spec.config.rules_file,
                             spec.config.modality, spec.version)))
    with _RESOURCES_LOCK:
        if key not in _RESOURCES:
            host = socket.gethostname()
            if __version__ != spec.version:
                raise WorkerMismatch(f"worker {host} runs medvlm {__version__} but the driver runs {spec.version}; "
                                     "install the same version on every node")
            resources = Resources.for_config(spec.config)
            if resources.hashes(spec.config.modality) != spec.resource_hashes:
                raise WorkerMismatch(f"worker {host} has other prompt/vocabulary/rules files than the driver; "
                                     "install the same medvlm on every node and put --prompt/--vocab/--rules files "
                                     "on storage every node mounts at the same path")
            _RESOURCES[key] = resources
        return _RESOURCES[key]


def decode_batch(batch: dict, spec: WorkerSpec) -> dict:
    """Ray task: decode each study and render its prompt (stages.prepare); failures become result rows."""
    try:
        resources = worker_resources(spec)
    except Exception as exc:  # noqa: BLE001 - a misconfigured node stops the run with one line
        return columns([pack(key, "fatal", first_line(exc)) for key, _, _ in rows_of(batch)])
    out = []
    for key, _, ref in rows_of(batch):
        try:
            prepared = stages.prepare(ref, spec.config, resources)
        except Exception as exc:  # noqa: BLE001 - prepare returns errors as values; this is a last resort
            prepared = StudyError(ref, "ingest", one_line(exc))
        if isinstance(prepared, StudyError):
            out.append(pack(key, "result", (stages.error_result(prepared), None, {})))
        else:
            out.append(pack(key, "work", prepared))
    return columns(out)


class ModelActor:
    """Ray actor: one loaded model, `--batch-size` studies per generate() through the shared model_stage().

    Ray Data may run two calls at once on this actor (see driver.py): one preprocesses its batch
    while the other generates, and the lock keeps generate() calls one at a time, the way the
    local executor overlaps its prefetch thread with the model.
    """

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.fatal: str | None = None
        self.lock = threading.Lock()
        self.job: BatchJob | None = None
        self.info = None
        self.pending_stats: dict[str, float] = {}
        try:
            self.job = BatchJob(spec.config, worker_resources(spec))
            backend = self.job.load_backend()
            self.info = backend.info
            self.pending_stats = {"load_s": self.job.stats.pop("load_s", 0.0), "model_loads": 1}
            if spec.identity is not None and backend.identity != spec.identity:
                self.fatal = identity_mismatch(socket.gethostname(), backend.identity, spec.identity,
                                               spec.config.backend)
        except Exception as exc:  # noqa: BLE001 - ModelUnavailable and the like end the run with one line
            self.fatal = first_line(exc) if isinstance(exc, UsageProblem) else one_line(exc)

    def __call__(self, batch: dict) -> dict:
        rows = list(rows_of(batch))
        if self.fatal is not None:
            return columns([pack(key, "fatal", self.fatal) for key, _, _ in rows])
        out = [pack(key, kind, payload) for key, kind, payload in rows if kind != "work"]  # results pass through
        works = [payload for _, kind, payload in rows if kind == "work"]
        if works:
            prepared = preprocess_works(self.job.backend, works)  # outside the lock: overlaps the other call
            with self.lock:
                before = dict(self.job.stats)
                answered = model_stage(self.job, works, prepared)
                stats = {k: v - before.get(k, 0) for k, v in self.job.stats.items()}
                for k, v in self.pending_stats.items():
                    stats[k] = stats.get(k, 0) + v
                self.pending_stats = {}
            for w, output in answered:
                key = w.study.ref.key
                if isinstance(output, BaseException):
                    err = StudyError(w.study.ref, "model", one_line(output))
                    out.append(pack(key, "result", (stages.error_result(err), self.info, stats)))
                else:
                    out.append(pack(key, "answer", (w, output, self.info, stats)))
                stats = {}  # the batch's figures travel once, with its first study
            del prepared, answered
        return columns(out)


def finish_batch(batch: dict, spec: WorkerSpec) -> dict:
    """Ray task: findings, grade, report record and rendered files (as bytes) for each answered study."""
    out = []
    resources = None
    for key, kind, payload in rows_of(batch):
        if kind != "answer":
            out.append(pack(key, kind, payload))
            continue
        work, output, info, stats = payload
        if resources is None:
            resources = worker_resources(spec)
        result = finish_or_error(work, output, info, spec.config, resources)
        out.append(pack(key, "result", (result, info, stats)))
    return columns(out)


def identity_mismatch(host: str, loaded: dict, expected: dict, backend: str) -> str:
    """One line: what this node resolved differently from the run (e.g. its CPU lacks bf16 instructions)."""
    from ...models.backends import settings_env

    keys = sorted(k for k in set(loaded) | set(expected) if loaded.get(k) != expected.get(k))
    diffs = ", ".join(f"{k} {loaded.get(k, '(unset)')} where the run has {expected.get(k, '(unset)')}" for k in keys)
    names = settings_env(backend)
    settings = f", set {' / '.join(names)} on the driver (it forwards them to every worker)" if names else ""
    return (f"worker {host} resolves the model differently from the run ({diffs}); give --device/--dtype/--quant "
            f"explicitly{settings}, or use identical nodes")


def resolve_identity(backend: str, model: str, options: dict) -> dict:
    """Ray task: the backend identity as a worker with the model actors' resources resolves it."""
    from ...models import get_kind

    kind = get_kind(backend)
    return kind.identity(model, kind.check_options(options))

