"""`medvlm bench`: run the pipeline on a folder, time every stage, and compare with a seed-style baseline."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import RunConfig

STAGES = ("discover", "decode", "preprocess", "prefill", "decode_tokens", "extract", "grade", "render")


class PeakRSS:
    """Samples this process's resident memory in a thread; .peak is the largest value seen."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self.peak_anon = 0
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        info = self._proc.memory_info()
        self.peak = max(self.peak, info.rss)
        # rss minus file-backed pages (e.g. a checkpoint mmap that the kernel can drop at will)
        self.peak_anon = max(self.peak_anon, info.rss - getattr(info, "shared", 0))

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class RunFigures:
    """One timed run: stage seconds (summed over studies/threads), wall time, throughput, memory."""

    label: str
    batch_size: int
    quantization: str
    dtype: str
    studies_ok: int
    studies_failed: int
    wall_s: float  # excluding the one-time model load
    load_s: float
    stages: dict[str, float]
    model_s: float  # prefill + decode tokens, on the critical path by construction
    outside_model_s: float  # wall - model: time the model was not running
    generated_tokens: int
    peak_rss: int  # while the batch ran (model loaded)
    peak_anon: int  # the same without file-backed pages
    load_peak_rss: int  # while the model loaded and was quantised
    load_peak_anon: int
    peak_gpu: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def studies_per_min(self) -> float:
        return 60 * self.studies_ok / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(
            tokens_per_s=self.tokens_per_s,
            studies_per_min=self.studies_per_min,
            outside_model_fraction=self.outside_model_s / self.wall_s if self.wall_s else 0.0,
        )
        return d


def _gpu_peak_reset() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # noqa: BLE001 - no GPU, no figure
        pass


def _gpu_peak() -> int | None:
    try:
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        return None


def run_pipeline(config: RunConfig, label: str) -> RunFigures:
    """The real pipeline (prefetch, batching, background rendering), timed."""
    from . import ingest
    from .models import load_backend
    from .pipeline import resolve_batch_size, run_batch

    # `auto` is resolved as run_batch would (the model is loaded here first, sized for the chosen batch)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    key = ingest.load_or_create_key(Path(config.out))
    todo = sum(1 for r in ingest.discover(Path(config.studies), key, config.modality) if not hasattr(r, "stage"))
    config = resolve_batch_size(config, None, todo)
    _gpu_peak_reset()
    with PeakRSS() as load_rss:
        t0 = time.perf_counter()
        backend = load_backend(
            config.model, backend=config.backend, batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens, images_per_study=config.max_images, **config.backend_options,
        )
        load = time.perf_counter() - t0
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        result = run_batch(config, backend=backend)
        wall = time.perf_counter() - t0
    s = result.stats
    model = s.get("prefill_s", 0.0) + s.get("decode_tokens_s", 0.0)
    stages = {
        "discover": s.get("discover_s", 0.0),
        "decode": s.get("decode_s", 0.0),
        "preprocess": s.get("preprocess_s", 0.0),
        "prefill": s.get("prefill_s", 0.0),
        "decode_tokens": s.get("decode_tokens_s", 0.0),
        "extract": s.get("extract_s", 0.0),
        "grade": s.get("grade_s", 0.0),
        "render": s.get("report_s", 0.0) + s.get("render_s", 0.0),
    }
    info = _model_info(config.out)
    del result, backend
    gc.collect()
    return RunFigures(
        label=label,
        batch_size=config.batch_size,
        quantization=info.get("quantization", config.option("quant")),
        dtype=info.get("dtype", config.option("dtype")),
        studies_ok=_count(config.out, "ok"),
        studies_failed=_count(config.out, "error"),
        wall_s=wall,
        load_s=load,
        stages=stages,
        model_s=model,
        outside_model_s=max(0.0, wall - model),
        generated_tokens=int(s.get("generated_tokens", 0)),
        peak_rss=rss.peak,
        peak_anon=rss.peak_anon,
        load_peak_rss=load_rss.peak,
        load_peak_anon=load_rss.peak_anon,
        peak_gpu=_gpu_peak(),
        extra={"prefetch_wait_s": s.get("prefetch_wait_s", 0.0), "render_wait_s": s.get("render_wait_s", 0.0)},
    )


@contextlib.contextmanager
def _plain_malloc():
    """The seed loop leaves glibc's malloc as it is: its backend load does not raise the thresholds.

    (Thresholds are per process: in `medvlm bench` the optimised run goes first and has set them already.)
    """
    from .models.hf.int8 import MALLOC_REUSE_ENV

    before = os.environ.get(MALLOC_REUSE_ENV)
    os.environ[MALLOC_REUSE_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MALLOC_REUSE_ENV, None)
        else:
            os.environ[MALLOC_REUSE_ENV] = before


def run_seed_style(config: RunConfig, label: str = "seed-style baseline") -> RunFigures:
    """The seed article's loop: load fp32, then per study decode, preprocess, generate, write, one at a time."""
    from . import ingest
    from .models import load_backend
    from .report.write import write_study_files
    from .resources import Resources
    from .stages import StudyWork, finish, prepare

    config = replace(config, batch_size=1, backend_options={**config.backend_options, "quant": "none", "dtype": "float32"})
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = dict.fromkeys(STAGES, 0.0)
    _gpu_peak_reset()
    with PeakRSS() as load_rss, _plain_malloc():
        t_load = time.perf_counter()
        backend = load_backend(
            config.model, backend=config.backend, batch_size=1, max_new_tokens=config.max_new_tokens,
            images_per_study=config.max_images, **config.backend_options,
        )
        load = time.perf_counter() - t_load
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        key = ingest.load_or_create_key(out)
        resources = Resources.for_config(config)
        refs = [r for r in ingest.discover(Path(config.studies), key, config.modality) if not hasattr(r, "stage")]
        stages["discover"] = time.perf_counter() - t0
        ok = failed = tokens = 0
        for ref in refs:
            work = prepare(ref, config, resources)
            if not isinstance(work, StudyWork):
                failed += 1
                continue
            prepared = backend.preprocess([(work.study, work.prompt)])
            (output,) = backend.generate_prepared(prepared, max_new_tokens=config.max_new_tokens, ignore_eos=True)
            timing = backend.timing(prepared)
            tokens += timing.generated_tokens or output.new_tokens
            work.timings.add("preprocess", timing.preprocess_s)
            result = finish(work, output, backend.info, config, resources)
            write_study_files(out / result.ref.key, result.files)
            ok += 1
            for name in ("decode", "preprocess", "extract", "grade"):
                stages[name] += work.timings.stages.get(name, 0.0)
            stages["prefill"] += timing.prefill_s or 0.0
            stages["decode_tokens"] += timing.decode_s or 0.0
            stages["render"] += work.timings.stages.get("report", 0.0) + work.timings.stages.get("render", 0.0)
        wall = time.perf_counter() - t0
    info = backend.info
    del backend
    gc.collect()
    model = stages["prefill"] + stages["decode_tokens"]
    return RunFigures(
        label=label, batch_size=1, quantization=info.quantization, dtype=info.dtype, studies_ok=ok,
        studies_failed=failed, wall_s=wall, load_s=load, stages=stages, model_s=model,
        outside_model_s=max(0.0, wall - model), generated_tokens=tokens, peak_rss=rss.peak, peak_anon=rss.peak_anon,
        load_peak_rss=load_rss.peak, load_peak_anon=load_rss.peak_anon, peak_gpu=_gpu_peak(),
    )


def _model_info(out: Path) -> dict:
    try:
        doc = json.loads((Path(out) / "run.json").read_text())
        return doc.get("model") or {}
    except (OSError, ValueError):
        return {}


def _count(out: Path, status: str) -> int:
    import csv

    try:
        with open(Path(out) / "summary.csv", newline="") as f:
            return sum(1 for row in csv.DictReader(f) if row["status"] == status)
    except OSError:
        return 0


def weights_bytes(model_dir: Path | None, quant: str, dtype: str) -> int | None:
    """Resident weight bytes for a mode, from the memory estimator (for the RSS target)."""
    if model_dir is None:
        return None
    from .models.memory import estimate, model_shape, param_counts

    est = estimate(param_counts(model_dir), model_shape(model_dir), dtype=dtype, quant=quant, device="cpu",
                   batch_size=1, max_new_tokens=1, images_per_study=1)
    return est.weights


def table(runs: list[RunFigures]) -> list[list[str]]:
    """Rows for printing: one column per run."""
    header = ["", *[r.label for r in runs]]
    rows = [header]
    rows.append(["batch size / quantization", *[f"{r.batch_size} / {r.quantization.split(' (')[0]} {r.dtype}" for r in runs]])
    for stage in STAGES:
        rows.append([f"{stage} s", *[f"{r.stages.get(stage, 0.0):.2f}" for r in runs]])
    rows.append(["model load s (excluded)", *[f"{r.load_s:.1f}" for r in runs]])
    rows.append(["wall s", *[f"{r.wall_s:.1f}" for r in runs]])
    rows.append(["outside model % of wall", *[f"{100 * r.outside_model_s / r.wall_s:.1f}" for r in runs]])
    rows.append(["tokens/s", *[f"{r.tokens_per_s:.2f}" for r in runs]])
    rows.append(["studies/min", *[f"{r.studies_per_min:.2f}" for r in runs]])
    rows.append(["peak RSS GB (batch)", *[f"{r.peak_rss / 1024**3:.2f}" for r in runs]])
    rows.append(["peak RSS GB (load)", *[f"{r.load_peak_rss / 1024**3:.2f}" for r in runs]])
    rows.append(["peak anon GB (batch / load)", *[f"{r.peak_anon / 1024**3:.2f} / {r.load_peak_anon / 1024**3:.2f}" for r in runs]])
    if any(r.peak_gpu for r in runs):
        rows.append(["peak GPU GB", *[f"{(r.peak_gpu or 0) / 1024**3:.2f}" for r in runs]])
    return rows


def chart(runs: list[RunFigures], path: Path) -> None:
    """Stacked bars of stage seconds per run, with tokens/s on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    bottoms = [0.0] * len(runs)
    labels = [r.label for r in runs]
    for stage in STAGES:
        values = [r.stages.get(stage, 0.0) for r in runs]
        ax.bar(labels, values, bottom=bottoms, label=stage)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.scatter(labels, [r.wall_s for r in runs], color="black", marker="_", s=2000, label="wall (excl. load)", zorder=3)
    for i, r in enumerate(runs):
        ax.annotate(f"{r.tokens_per_s:.1f} tok/s", (i, max(bottoms[i], r.wall_s)), ha="center", va="bottom")
    ax.set_ylabel("seconds (stage sums; overlapped stages can exceed wall)")
    ax.set_title("medvlm bench (random-weight model; research use only)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(config: RunConfig, *, baseline: bool = True, bounds: bool = True) -> dict:
    """Optimised run, then (optionally) the seed-style baseline on the same inputs; writes bench.json/.png."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config = replace(config, ignore_eos=True)
    load_start = list(os.getloadavg())
    runs = [run_pipeline(replace(config, out=out / "optimised"), "optimised")]
    if baseline:
        runs.append(run_seed_style(replace(config, out=out / "baseline")))
    doc: dict = {
        "config": config.as_dict(),
        "threads": _threads(),
        "cpu_count": os.cpu_count(),
        "runs": [r.as_dict() for r in runs],
    }
    opt = runs[0]
    model_dir = _model_dir(config.model)
    weights = weights_bytes(model_dir, "int8" if opt.quantization.startswith("int8") else "none", opt.dtype)
    doc["targets"] = {
        "outside_model_fraction": opt.outside_model_s / opt.wall_s if opt.wall_s else None,
        "rss_minus_weights_gb": (opt.peak_rss - weights) / 1024**3 if weights else None,
        "load_rss_minus_weights_gb": (opt.load_peak_rss - weights) / 1024**3 if weights else None,
        "weights_gb": weights / 1024**3 if weights else None,
    }
    if baseline:
        doc["targets"]["speedup_tokens_per_s"] = opt.tokens_per_s / runs[1].tokens_per_s if runs[1].tokens_per_s else None
    if baseline:
        # the headline: the default command including its model load vs the seed loop excluding its own
        doc["targets"]["speedup_incl_load"] = runs[1].wall_s / (opt.wall_s + opt.load_s) if opt.wall_s else None
    if bounds and model_dir is not None:
        doc["bounds"] = _bounds(config, runs, model_dir)
    if config.write_pdf:
        from .report.pdf import font_subsetter

        doc["pdf_font_subsetter"] = font_subsetter()
    doc["load_average"] = {"start": load_start, "end": list(os.getloadavg())}
    doc["table"] = table(runs)
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    chart(runs, out / "bench.png")
    return doc


def _report_sizes(out: Path) -> tuple[int, int, list[int]]:
    """(prompt tokens, images, prompt tokens per study) over the run's reports."""
    tokens = images = 0
    per_study = []
    for path in sorted(Path(out).glob("*/report.json")):
        doc = json.loads(path.read_text())
        n = int(doc["model_output"].get("prompt_tokens") or 0)
        tokens += n
        per_study.append(n)
        images += len(doc.get("images") or [])
    return tokens, images, per_study


def _vision_params(model_dir: Path) -> int:
    """Parameters of the vision tower and projector, from the safetensors headers."""
    from .models.checkpoint import read_safetensors_header, safetensors_files
    from .models.hf.int8 import PROJECTOR_PARTS, VISION_PARTS

    parts = tuple(f"{name}." for name in VISION_PARTS + PROJECTOR_PARTS)
    total = 0
    for path in safetensors_files(model_dir):
        for name, meta in read_safetensors_header(path)[1].items():
            if any(p in name for p in parts):
                n = 1
                for d in meta["shape"]:
                    n *= int(d)
                total += n
    return total


def _bounds(config: RunConfig, runs: list[RunFigures], model_dir: Path) -> dict:
    """The machine's matmul rates and bandwidth at this model's shapes, and each run's share of those bounds."""
    from .bench_bounds import Shapes, kv_bytes_per_step, measure, shares
    from .executors.local import chunks
    from .models.memory import model_shape, param_counts, sliding_layers

    shape, counts = model_shape(model_dir), param_counts(model_dir)
    opt = runs[0]
    tokens, images, per_study = _report_sizes(Path(config.out) / "optimised")
    mean_tokens = tokens // max(len(per_study), 1) or 300
    measured = measure(Shapes(shape.hidden, shape.intermediate, shape.vision_hidden, shape.vision_intermediate,
                              prefill_rows=mean_tokens * opt.batch_size, decode_rows=opt.batch_size,
                              vision_rows=shape.patches))
    head = shape.vocab * shape.hidden  # the lm_head runs on the last prompt token only in prefill, every step in decode
    layer_linear = counts.quantizable - (0 if counts.tied_lm_head else head)
    vision = _vision_params(model_dir)
    sliding = sliding_layers(model_dir)
    result = {"machine": measured, "runs": {}}
    for run in runs:
        int8 = run.quantization.startswith("int8")
        lm_kind = "int8" if int8 else ("bf16" if run.dtype == "bfloat16" else "fp32")
        # CPU int8 keeps the vision tower in bf16 unless the CPU lacks bf16 matrix instructions (then the
        # backend's quantization text says "vision tower fp32")
        vision_kind = "bf16" if (int8 or run.dtype == "bfloat16") and "vision tower fp32" not in run.quantization else "fp32"
        sub = Path(config.out) / ("optimised" if run is opt else "baseline")
        tok, imgs, per = _report_sizes(sub)
        batches = len(list(chunks(list(range(len(per))), max(1, run.batch_size))))
        weight_bytes = (layer_linear + head) * (1 if int8 else (2 if lm_kind == "bf16" else 4))
        rows = len(per) / max(batches, 1)
        # keys and values are held in the activations' dtype: fp32 beside CPU int8 and fp32 weights, else 2 bytes
        kv = kv_bytes_per_step(layers=shape.layers, kv_heads=shape.kv_heads, head_dim=shape.head_dim,
                               width=2 if lm_kind == "bf16" else 4, rows=rows,
                               context=tok / max(len(per), 1) + config.max_new_tokens / 2, **sliding)
        result["runs"][run.label] = shares(
            measured, lm_linear_params=layer_linear, lm_weight_bytes=weight_bytes, vision_params=vision,
            prompt_tokens=tok, images=imgs, patches_per_image=shape.patches, prefill_s=run.stages.get("prefill", 0.0),
            decode_steps=batches * max(config.max_new_tokens - 1, 0), decode_s=run.stages.get("decode_tokens", 0.0),
            batch_size=rows, vision_kind=vision_kind, lm_kind=lm_kind, kv_bytes_per_step=kv,
        )
    return result


def _model_dir(model: str) -> Path | None:
    from .models.registry import resolve

    resolved = resolve(model)
    if resolved.random:
        from .models.demo import BENCH_SPEC, DEMO_SPEC, ensure_random_model

        return ensure_random_model(DEMO_SPEC if resolved.random == "demo" else BENCH_SPEC)
    return resolved.local_dir


def _threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:  # noqa: BLE001
        return None
