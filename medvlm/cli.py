"""Command line: each command parses options, calls the library, prints. Exit 0 ok, 1 some failed, 2 usage."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand

from . import RESEARCH_BANNER, __version__
from .console import Printer, install as install_console
from .config import LIMITS
from .errors import first_line
from .models.registry import DEFAULT_MODEL

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain help: real metavars, flags without a type, lines wrapped, never cut
    context_settings={"max_content_width": 120},
    help=f"medvlm {__version__}: vision-language model readings of imaging studies. {RESEARCH_BANNER}.",
)


class _Command(TyperCommand):
    """A command whose usage line names its arguments as their metavars (STUDIES, RUN_DIR), nothing added."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


command = partial(app.command, cls=_Command)
printer = Printer()
err, out = printer.err, printer.out  # markup and emoji off: user, file and model text prints as is
INTERRUPTED = "interrupted — rerun the same command to resume (finished studies are kept)"


def _print_version(value: bool) -> None:
    if value:
        print(f"medvlm {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version."),
) -> None:
    """Options that apply before any command."""


def fail(message: str, code: int = 2) -> None:
    """One line on stderr and an exit code; no traceback for expected failures."""
    printer.error(" ".join(str(message).split()) or "failed")
    raise typer.Exit(code)


def interrupted(message: str = "interrupted") -> None:
    """Ctrl-C: one line and exit 130 (the shell's code for SIGINT)."""
    printer.line(message, err=True)
    raise typer.Exit(130)


@command()
def batch(
    ctx: typer.Context,
    studies: Path = typer.Argument(..., metavar="STUDIES", help="Folder of studies (sub-folders, DICOM files, PNG/JPEG files)."),
    modality: str = typer.Option("chest_xray", "--modality", "-m", metavar="MODALITY", help="chest_xray, ct, mri or auto."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", metavar="NAME|PATH", help="Preset name, local model directory or hub id."),
    out_dir: Path = typer.Option(Path("runs/latest"), "--out", "-o", metavar="DIR", help="Output folder."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", metavar="N", min=LIMITS["max_new_tokens"][0], max=LIMITS["max_new_tokens"][1], help="Most tokens generated per study (MEDVLM_MAX_NEW_TOKENS)."),
    batch_size: str = typer.Option("auto", "--batch-size", metavar="N|auto", help="Studies per generate() call: auto (from the memory estimate and device, at most the number of studies) or 1-256 (MEDVLM_BATCH_SIZE)."),
    quant: str = typer.Option("auto", "--quant", metavar="MODE", help="none, int8, int4 or auto (int8 on CPU, nf4 on CUDA with bitsandbytes)."),
    dtype: str = typer.Option("auto", "--dtype", metavar="DTYPE", help="auto, float32, bfloat16 or float16."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    max_images: int = typer.Option(2, "--max-images", metavar="N", min=LIMITS["max_images"][0], max=LIMITS["max_images"][1], help="Images per study sent to the model."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos/--no-ignore-eos", help="Always generate --max-new-tokens (benchmarks)."),
    include_phi: bool = typer.Option(False, "--include-phi/--no-include-phi", help="Copy patient identifiers into reports."),
    force_modality: bool = typer.Option(False, "--force-modality/--no-force-modality", help="Run studies whose DICOM modality does not match."),
    pdf: bool = typer.Option(True, "--pdf/--no-pdf", help="Also write report.pdf."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt", metavar="FILE", help="Prompt template YAML overriding prompts/<modality>.yaml."),
    vocab_file: Optional[Path] = typer.Option(None, "--vocab", metavar="FILE", help="Findings vocabulary YAML."),
    rules_file: Optional[Path] = typer.Option(None, "--rules", metavar="FILE", help="Risk rules YAML."),
    executor: str = typer.Option("local", "--executor", metavar="NAME", help="local (this process) or ray (a Ray cluster)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", metavar="ADDRESS", help="Ray cluster: auto or HOST:PORT (default: start a local instance)."),
    workers: Optional[int] = typer.Option(None, "--workers", metavar="N", min=1, help="Ray: model workers, one loaded model each."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", metavar="G", min=0, help="Ray: GPUs per model worker (default 0)."),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker", metavar="C", min=0.01, help="Ray: CPUs (torch threads) per model worker (default 1)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", metavar="URL", help="Base URL of an OpenAI-compatible server (http://HOST:PORT/v1); the API key comes from MEDVLM_API_KEY or OPENAI_API_KEY."),
    concurrency: int = typer.Option(4, "--concurrency", metavar="N", min=1, max=256, help="--endpoint: requests in flight."),
    connect_timeout: float = typer.Option(10.0, "--connect-timeout", metavar="SECONDS", min=0.1, help="--endpoint: seconds to connect."),
    read_timeout: float = typer.Option(600.0, "--read-timeout", metavar="SECONDS", min=0.1, help="--endpoint: seconds to wait for an answer."),
    max_tries: int = typer.Option(5, "--max-tries", metavar="N", min=1, max=100, help="--endpoint: tries per study (connection errors, 429, 5xx)."),
    retry_budget: float = typer.Option(300.0, "--retry-budget", metavar="SECONDS", min=0, help="--endpoint: seconds a study may spend retrying."),
    image_max_side: int = typer.Option(896, "--image-max-side", metavar="PIXELS", min=32, max=8192, help="--endpoint: longest side of the PNG sent (saved as image-N.png)."),
    follow_links: bool = typer.Option(False, "--follow-links/--no-follow-links", help="Follow symlinks that point outside STUDIES (default: not followed)."),
) -> None:
    """Read every study in STUDIES and write validated JSON, HTML and PDF reports plus summary.csv."""
    from .config import RunConfig, batch_size_value, check_config, from_env
    from .errors import UsageProblem
    from .pipeline import run_batch

    explicit = {k for k, v in ctx.params.items() if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    executor_options = {name: value for name, value in (("address", ray_address), ("workers", workers),
                        ("gpus_per_worker", gpus_per_worker), ("cpus_per_worker", cpus_per_worker)) if value is not None}
    if executor != "ray" and executor_options:
        fail("--ray-address, --workers, --gpus-per-worker and --cpus-per-worker need --executor ray")
    try:
        batch_size = batch_size_value(batch_size)
    except UsageProblem as exc:
        fail(str(exc))
    backend, backend_options = "hf", {"device": device, "dtype": dtype, "quant": quant}
    endpoint_flags = {"concurrency", "connect_timeout", "read_timeout", "max_tries", "retry_budget", "image_max_side"}
    if endpoint is not None:
        clash = sorted(explicit & {"quant", "dtype", "device", "batch_size"})
        if clash:
            fail(f"--{clash[0].replace('_', '-')} does not apply to --endpoint (the server decides; use --concurrency)")
        backend = "endpoint"
        backend_options = {"url": endpoint, "concurrency": concurrency, "connect_timeout": connect_timeout,
                           "read_timeout": read_timeout, "max_tries": max_tries, "retry_budget": retry_budget,
                           "image_max_side": image_max_side, "ignore_eos": ignore_eos}
        model = model if "model" in explicit else ""  # empty: the server's only model
        batch_size = concurrency  # one batch = the requests in flight together
        explicit |= {"model", "batch_size"}  # MEDVLM_MODEL names a local model, not a served one
    elif explicit & endpoint_flags:
        fail(f"--{sorted(explicit & endpoint_flags)[0].replace('_', '-')} needs --endpoint")
    try:
        config = from_env(
            RunConfig(
                studies=studies, out=out_dir, modality=modality, model=model, backend=backend,
                backend_options=backend_options,
                max_new_tokens=max_new_tokens, batch_size=batch_size, max_images=max_images, ignore_eos=ignore_eos,
                include_phi=include_phi, force_modality=force_modality, write_pdf=pdf, prompt_file=prompt_file,
                vocab_file=vocab_file, rules_file=rules_file, executor=executor, executor_options=executor_options,
                follow_links=follow_links,
            ),
            explicit,
        )
        check_config(config)  # run_batch checks again; here so that nothing (not even a bar) shows first
    except UsageProblem as exc:
        fail(first_line(exc))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("medvlm", style="bold", markup=False), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=False,
    )
    task = progress.add_task("studies", total=None)
    shown = []

    def on_total(total: int) -> None:
        progress.update(task, total=total)
        progress.start()  # only once the run is known to be valid, so usage errors print alone
        shown.append(True)

    def stop() -> None:
        if shown:  # stopping a bar that never started would print an empty line
            progress.stop()
            shown.clear()

    def on_progress(done: int, total: int, row: dict) -> None:
        progress.update(task, completed=done)
        if row["status"] != "ok":
            printer.study_problem(row["status"], row["source"], row["reason"])

    def on_discover(entries: int) -> None:  # a big tree: say that discovery is working
        printer.line(f"discovering studies: {entries:,} entries listed", err=True)

    try:
        result = run_batch(config, on_progress=on_progress, on_total=on_total, on_discover=on_discover)
    except UsageProblem as exc:
        stop()
        fail(first_line(exc))
    except KeyboardInterrupt:
        stop()
        interrupted(INTERRUPTED)
    finally:
        stop()
    ok, errors, skipped = result.count("ok"), result.count("error"), result.count("skipped")
    if not result.rows:
        printer.warning(f"no studies found in {studies} (sub-folders, DICOM, PNG or JPEG files); nothing to do")
    printer.line(f"{ok} ok, {errors} failed, {skipped} skipped -> {result.out / 'summary.csv'}")
    raise typer.Exit(1 if errors else 0)


@command()
def models(
    check: Optional[str] = typer.Option(None, "--check", metavar="PRESET|PATH", help="Size a preset or model folder from its config alone."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Machine-readable output."),
) -> None:
    """List model presets, whether each is available on this machine, and where; --check sizes one without weights."""
    import json

    from .errors import UsageProblem

    if check is not None:
        from .models.check import check as check_model, check_lines

        try:
            result = check_model(check)
        except UsageProblem as exc:
            fail(first_line(exc))
        if as_json:
            print(json.dumps(result, indent=2))
        else:
            print("\n".join(check_lines(result)))
        return
    from .models import availability

    rows = availability()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not sys.stdout.isatty():  # piped: one full line per preset, nothing cut to the terminal width
        for row in rows:
            print("\t".join([row["name"], "yes" if row["available"] else "no", row["local_dir"] or "-", row["source"]]))
        return
    from rich.table import Table

    table = Table("preset", "available", "local directory", "source / description")
    for row in rows:
        table.add_row(
            row["name"], "yes" if row["available"] else "no", row["local_dir"] or "-", f"{row['source']}\n{row['description']}"
        )
    printer.table(table)


@command()
def extract(
    input_csv: Path = typer.Argument(..., metavar="IN.csv", help="CSV with one report text per row."),
    id_column: str = typer.Option(..., "--id-column", metavar="COLUMN", help="Column holding the row id."),
    text_column: str = typer.Option(..., "--text-column", metavar="COLUMN[,COLUMN...]", help="Text column(s), comma-separated (joined)."),
    modality: str = typer.Option("chest_xray", "--modality", "-m", metavar="MODALITY", help="chest_xray, ct or mri."),
    out_csv: Path = typer.Option(..., "--out", metavar="OUT.csv", help="Output CSV: one row per (id, code); never the input file."),
    vocab_file: Optional[Path] = typer.Option(None, "--vocab", metavar="FILE", help="Vocabulary YAML overriding the modality's."),
    encoding: str = typer.Option("utf-8-sig", "--encoding", metavar="ENCODING", help="Text encoding of IN.csv (utf-8 with or without BOM; e.g. latin-1, cp1252)."),
) -> None:
    """Extract findings (present/absent/uncertain with evidence) from report text in a CSV."""
    from .findings.extract_csv import extract_csv

    try:
        rows = extract_csv(input_csv, id_column, text_column, modality, out_csv, vocab=vocab_file, encoding=encoding)
    except ValueError as exc:  # ExtractProblem (a UsageProblem), or a vocabulary file's file:line problem
        fail(first_line(exc))
    except OSError as exc:
        fail(f"cannot read {exc.filename or input_csv}: {exc.strerror or first_line(exc)}")
    except KeyboardInterrupt:
        interrupted(f"interrupted: {out_csv} was not written")
    printer.line(f"{rows} finding rows -> {out_csv}")


@command()
def regrade(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Output folder of an earlier batch."),
    rules_file: Optional[Path] = typer.Option(None, "--rules", metavar="FILE", help="Risk rules YAML (default: the modality's)."),
    vocab_file: Optional[Path] = typer.Option(None, "--vocab", metavar="FILE", help="Vocabulary YAML (default: the modality's)."),
    pdf: bool = typer.Option(True, "--pdf/--no-pdf", help="Also rewrite report.pdf."),
    adopt_edits: bool = typer.Option(False, "--adopt-edits/--no-adopt-edits", help="Also regrade reports edited outside medvlm, recording the adoption in the ledger."),
) -> None:
    """Re-extract findings and re-grade risk from the stored model text, without loading a model.

    A report whose hash differs from the ledger's is not regraded (it is named) unless --adopt-edits."""
    from .errors import UsageProblem
    from .regrade import regrade_run

    if not run_dir.is_dir():
        fail(f"run folder not found: {run_dir}")
    for option, path in (("--rules", rules_file), ("--vocab", vocab_file)):
        if path is not None and not path.is_file():
            fail(f"{option} file not found: {path}")
    try:
        result = regrade_run(run_dir, vocab_file=vocab_file, rules_file=rules_file, pdf=pdf, adopt_edits=adopt_edits)
    except (ValueError, UsageProblem) as exc:  # invalid rules/vocabulary (file:line), or the run is busy/damaged
        fail(first_line(exc))
    except KeyboardInterrupt:
        interrupted("interrupted: reports regraded so far are recorded; rerun the same command to finish")
    for problem in result.errors:
        printer.styled("error", "yellow", problem)
    printer.line(f"{result.rewritten} reports regraded, {len(result.changed)} changed risk level"
                 + (f", {len(result.adopted)} edited reports adopted (recorded in the ledger)" if result.adopted else ""))
    raise typer.Exit(1 if result.errors else 0)


@command()
def verify(run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Output folder of a batch.")) -> None:
    """Check the ledger chain, every report and file hash, and reports without a ledger record."""
    from .audit.verify import verify_run
    from .errors import UsageProblem

    try:
        result = verify_run(run_dir)
    except UsageProblem as exc:  # not a run folder, or a batch is running in it
        fail(first_line(exc))
    for problem in result.problems:
        printer.line(f"PROBLEM {problem}")
    status = "OK" if result.ok else f"FAILED ({len(result.problems)} problems)"
    printer.line(f"{status}: {result.summary_line()}")
    raise typer.Exit(0 if result.ok else 1)


@command()
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Output folder of a batch."),
    fmt: str = typer.Option("csv", "--format", "-f", metavar="FORMAT", help="csv, parquet or jsonl (CSV cells are spreadsheet-safe: docs/export.md)."),
    out_dir: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Folder for studies.<fmt>, findings.<fmt> and reviews.<fmt>."),
    include_phi: bool = typer.Option(False, "--include-phi/--no-include-phi", help="Add source paths and phi_* columns when reports have them."),
) -> None:
    """Write a studies table and a findings table (columns: docs/export.md); de-identified by default."""
    from .audit.export import ExportProblem, export_run

    try:
        written = export_run(run_dir, out_dir, fmt, include_phi=include_phi)
    except ExportProblem as exc:
        fail(first_line(exc))
    except OSError as exc:
        fail(f"cannot write --out {out_dir}: {exc.strerror or first_line(exc)}")
    for name, (path, rows) in written.items():
        printer.line(f"{name}: {rows} rows -> {path}")


@command()
def evaluate(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Output folder of a batch."),
    truth: Path = typer.Option(..., "--truth", metavar="TABLE", help="Label table: long (study,findings), wide (1/0/-1/blank) or NIH."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="Folder for evaluation.json/.html/.png (default: the run)."),
    uncertain_as: str = typer.Option("negative", "--uncertain-as", metavar="POLICY", help="positive, negative or ignore (labels -1 and uncertain findings)."),
    mapping: Optional[Path] = typer.Option(None, "--map", metavar="FILE", help="YAML/JSON/CSV mapping of the table's label names to medvlm codes."),
    id_column: Optional[str] = typer.Option(None, "--id-column", metavar="COLUMN", help="Column naming the study (default: study, Path, Image Index...)."),
) -> None:
    """Compare a run's findings with a label table: per-finding counts, sensitivity, specificity, PPV, F1."""
    from rich.table import Table

    from .errors import UsageProblem
    from .evaluate import console_rows, evaluate_run, summary_lines

    for path, what in ((truth, "truth table"), (mapping, "mapping file")):
        if path is not None and not path.is_file():
            fail(f"{what} not found: {path}")
    try:
        result = evaluate_run(run_dir, truth, out=out_dir, uncertain_as=uncertain_as, mapping=mapping, id_column=id_column)
    except UsageProblem as exc:
        fail(first_line(exc))
    except OSError as exc:
        fail(f"cannot write the evaluation: {exc.strerror or first_line(exc)}: {exc.filename or out_dir}")
    from rich import box

    table = Table("finding", "pos", "TP", "FP", "FN", "TN", "sens", "spec", "PPV", "F1 [95% CI]", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for row in console_rows(result.evaluation):
        table.add_row(*row)
    printer.table(table, min_width=112)
    for line in summary_lines(result.evaluation):
        printer.line(line)
    printer.line(f"-> {result.files['evaluation.html']}" + (" (linked from the run's index.html)" if result.linked_from_index else ""))


@command()
def review(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Output folder of a batch."),
    reviewer: Optional[str] = typer.Option(None, "--reviewer", metavar="NAME", help="Your name in the ledger (default: asked in the browser)."),
    port: int = typer.Option(0, "--port", metavar="PORT", help="Port on 127.0.0.1 (default: a free one)."),
    blind: bool = typer.Option(False, "--blind/--no-blind", help="Hide the model's findings and risk until your own first read is saved."),
    browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the review page in a browser (--no-browser: only print the address)."),
    import_csv: Optional[Path] = typer.Option(None, "--import", metavar="FILE.csv", help="Import verdicts from a CSV instead of serving."),
) -> None:
    """Review the run's reports in a local web app (127.0.0.1, token in the printed address), or --import a CSV."""
    from .errors import UsageProblem

    if import_csv is not None:
        from .review import ImportProblem, import_reviews

        if reviewer or blind or port:
            fail("--import takes reviewers from the file's reviewer column; leave out --reviewer, --blind and --port")
        try:
            result = import_reviews(run_dir, import_csv)
        except ImportProblem as exc:
            for line in exc.lines:
                printer.line(line, err=True)
            fail(first_line(exc))
        except UsageProblem as exc:
            fail(first_line(exc))
        printer.line(f"imported {len(result.records)} reviews ({result.studies} studies; reviewers "
                  f"{', '.join(result.reviewers)}) from {result.rows} rows of {import_csv}"
                  + (f"; {result.replaced} replace earlier reviews (kept in the ledger)" if result.replaced else "")
                  + (f"; columns ignored: {', '.join(result.ignored_columns)}" if result.ignored_columns else ""))
        return
    from .review import serve

    try:
        summary = serve(run_dir, reviewer=reviewer, port=port, blind=blind, open_browser=browser,
                        on_url=lambda line: print(line, flush=True))
    except UsageProblem as exc:
        fail(first_line(exc))
    waiting = f"; {summary.queued_left} waiting for the run to be free (written by the next `medvlm review`)" if summary.queued_left else ""
    printer.line(f"review stopped: {summary.saved} reviews saved{waiting}; `medvlm agreement {run_dir}` for the figures", err=True)


@command()
def agreement(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Output folder of a batch with reviews."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the figures as JSON."),
) -> None:
    """Model vs reviewer (PPV, missed findings, risk kappa) and reviewer vs reviewer kappa, with counts."""
    import json

    from .errors import UsageProblem
    from .review import agreement_lines, write_agreement

    try:
        result, written = write_agreement(run_dir)
    except UsageProblem as exc:
        fail(first_line(exc))
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    for line in agreement_lines(result):
        printer.line(line)
    printer.line(f"-> {written} (and a section in index.html)" if written else
                 "(not written: another medvlm command holds the run; figures above are current)")


@command()
def bench(
    studies: Path = typer.Argument(..., metavar="STUDIES", help="Folder of studies to benchmark on."),
    model: str = typer.Option("bench", "--model", metavar="NAME|PATH", help="Preset (bench: ~0.6B random-weight Gemma3), directory or hub id."),
    out_dir: Path = typer.Option(Path("runs/bench"), "--out", "-o", metavar="DIR", help="Output folder (bench.json, bench.png, reports)."),
    modality: str = typer.Option("chest_xray", "--modality", "-m", metavar="MODALITY", help="chest_xray, ct or mri."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", metavar="N", min=LIMITS["max_new_tokens"][0], max=LIMITS["max_new_tokens"][1], help="Exactly this many per study."),
    batch_size: str = typer.Option("auto", "--batch-size", metavar="N|auto", help="auto (as medvlm batch) or 1-256."),
    quant: str = typer.Option("auto", "--quant", metavar="MODE", help="none, int8, int4 or auto."),
    dtype: str = typer.Option("auto", "--dtype", metavar="DTYPE", help="auto, float32, bfloat16 or float16."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also run the seed-style loop (fp32, one study at a time)."),
    pdf: bool = typer.Option(True, "--pdf/--no-pdf", help="Also write report.pdf."),
) -> None:
    """Time every stage of a batch (tokens/s, studies/min, peak memory) and compare with a seed-style loop."""
    from .bench import run_bench
    from .config import RunConfig, batch_size_value
    from .errors import UsageProblem

    if not studies.is_dir():
        fail(f"studies folder not found: {studies}")
    try:
        batch_size = batch_size_value(batch_size)
    except UsageProblem as exc:
        fail(str(exc))
    config = RunConfig(
        studies=studies, out=out_dir, modality=modality, model=model,
        backend_options={"device": device, "dtype": dtype, "quant": quant},
        max_new_tokens=max_new_tokens, batch_size=batch_size, ignore_eos=True, write_pdf=pdf,
    )
    try:
        doc = run_bench(config, baseline=baseline)
    except UsageProblem as exc:
        fail(str(exc))
    rows = doc["table"]
    from rich.table import Table

    table = Table(*rows[0])
    for row in rows[1:]:
        table.add_row(*row)
    printer.table(table)
    for name, value in doc["targets"].items():
        printer.line(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")
    if doc.get("bounds"):
        from .bench_bounds import bound_lines

        printer.line("this machine at the model's shapes (same run):")
        for line in bound_lines(doc["bounds"]["machine"], None):
            printer.line(f"  {line}")
        for label, share in doc["bounds"]["runs"].items():
            for line in bound_lines(doc["bounds"]["machine"], share)[1 + len(doc["bounds"]["machine"]["matmul"]):]:
                printer.line(f"  {label}: {line}")
    subsetter = doc.get("pdf_font_subsetter")
    if subsetter:
        from .report.pdf import FONTTOOLS_HINT

        printer.line("PDF font subsetting: HarfBuzz" if subsetter == "harfbuzz"
                     else f"PDF font subsetting: {subsetter} ({FONTTOOLS_HINT})")
    load = doc.get("load_average") or {}
    if load:
        printer.line(f"load average (1/5/15 min) at start {load['start']}, at end {load['end']}")
    printer.line(f"-> {out_dir / 'bench.json'}, {out_dir / 'bench.png'}")


@command()
def serve(
    model: str = typer.Option(..., "--model", metavar="NAME|PATH", help="Preset name, local model directory or hub id (demo, bench, medgemma-4b, ...)."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help="Address to bind; anything but loopback needs --api-key."),
    port: int = typer.Option(8000, "--port", metavar="PORT", min=0, max=65535, help="TCP port (0: any free port, printed when ready)."),
    quant: str = typer.Option("auto", "--quant", metavar="MODE", help="none, int8, int4 or auto."),
    dtype: str = typer.Option("auto", "--dtype", metavar="DTYPE", help="auto, float32, bfloat16 or float16."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(4, "--batch-size", metavar="N", min=1, max=256, help="Most requests batched into one generate() call."),
    max_wait_ms: float = typer.Option(50.0, "--max-wait-ms", metavar="MS", min=0, max=10000, help="How long a request waits for others to batch with."),
    api_key: Optional[str] = typer.Option(None, "--api-key", metavar="KEY", help="Clients must send 'Authorization: Bearer KEY' (default: MEDVLM_API_KEY)."),
    max_tokens: int = typer.Option(2048, "--max-tokens-limit", metavar="N", min=1, max=65536, help="Largest max_tokens a request may ask for."),
    max_images: int = typer.Option(8, "--max-images", metavar="N", min=1, max=64, help="Images per request."),
    max_image_pixels: int = typer.Option(4096 * 4096, "--max-image-pixels", metavar="PIXELS", min=1, help="Pixels per image."),
    max_body_mb: float = typer.Option(32.0, "--max-body-mb", metavar="MB", min=0.001, help="Request body size limit."),
) -> None:
    """Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health) until Ctrl-C."""
    import os

    from .errors import UsageProblem
    from .serve import ServeSettings, serve as run_server
    from .serve.requests import Limits

    key = api_key if api_key is not None else (os.environ.get("MEDVLM_API_KEY", "").strip() or None)
    settings = ServeSettings(
        model=model, host=host, port=port, backend_options={"device": device, "dtype": dtype, "quant": quant},
        batch_size=batch_size, max_wait_ms=max_wait_ms, api_key=key,
        limits=Limits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_images=max_images,
                      max_image_pixels=max_image_pixels, max_tokens=max_tokens, default_max_tokens=min(512, max_tokens)),
    )
    try:
        run_server(
            settings,
            on_ready=lambda url: print(f"medvlm serve: {model} ready at {url} (batch size {batch_size}; "
                                       f"{'API key required' if key else 'no API key'}; research use only)", flush=True),
            on_stopped=lambda line: print(f"medvlm serve: {line}", flush=True),
        )
    except UsageProblem as exc:
        fail(first_line(exc))


def _click_module():
    """The click that typer runs on (recent typer versions bundle their own copy)."""
    try:
        from typer import _click as click_module  # type: ignore[attr-defined]
    except ImportError:
        import click as click_module
    return click_module


def main() -> None:
    """Console entry point: usage errors are one line (exit 2), Ctrl-C is one line (exit 130)."""
    install_console(printer)
    click = _click_module()
    try:
        code = app(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # `medvlm` alone: the help, as typer prints it
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.UsageError as exc:  # bad option, missing argument, out-of-range number
        command = exc.ctx.command_path if exc.ctx is not None else "medvlm"
        printer.error(f"{' '.join(exc.format_message().split()).rstrip('.')} (see `{command} --help`)")
        sys.exit(2)
    except click.exceptions.ClickException as exc:
        printer.error(" ".join(exc.format_message().split()))
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        printer.line("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        printer.line("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
