"""The `harness` command line. One error boundary (cli_common.run_with_error_contract, called by main): a HarnessError becomes one line on stderr and
its exit code (2 for usage/input errors); --debug or HARNESS_DEBUG=1 shows the traceback instead."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from harness.cli_common import (AllowCodeOpt, CheckpointOpt, DatasetOpt, HtmlOpt, JsonOpt, ModelArg, ProfileOpt,
                                InputShapeOpt, ThreadsOpt, checked_inputs, console_for, print_data_notes, resolve,
                                run_with_error_contract, write_reports)
from harness.cli_zoo import zoo_app
from harness.errors import InputError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Cross-backend deployment harness: measure and explain what a model loses in deployment.")
app.add_typer(zoo_app, name="zoo")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"harness {version('harness')}")
        raise typer.Exit(0)


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the harness version and exit.")] = False,
             ) -> None:
    """Cross-backend deployment harness: measure and explain what a model loses in deployment."""


@app.command()
def compare(
    model: ModelArg = None,
    backends: Annotated[Optional[str], typer.Option(
        "--backends", help="Comma list of backend[:device], e.g. ort,torch or ort:cuda. Default: every installed.")] = None,
    precision: Annotated[str, typer.Option("--precision", help="Comma list: fp32, fp16, bf16, int8.")] = "fp32",
    dataset: DatasetOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    threads: ThreadsOpt = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Use the first N samples.")] = None,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
    allow_code: AllowCodeOpt = False,
    input_shape: InputShapeOpt = None,
    calibration: Annotated[Optional[Path], typer.Option(
        "--calibration", help="Training images for INT8 calibration (zoo models: the generated training split).")] = None,
    candidate_outputs: Annotated[Optional[Path], typer.Option(
        "--candidate-outputs", help="Outputs recorded on a target from `harness export-inputs` (.npz with "
                                    "sample_ids): compared as a candidate row 'recorded'.")] = None,
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", help="A deployed file to run as the candidate (QDQ .onnx, OpenVINO .xml, TensorRT .engine); "
                           "needs exactly one --backends entry.")] = None,
) -> None:
    """Reference (training profile on the training system) vs candidate backends: metric, output and timing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.backends import registry
    from harness.calibration import calibration_set
    from harness.compare import SCHEMA, compare as run_compare, parse_targets
    from harness.data import embedded_benchmark
    from harness.data.benchmark import SEED as BENCHMARK_SEED
    from harness.export import export
    from harness.provenance import provenance
    from harness.report.table import compare_table, status_notes

    console = console_for(json_path)
    user_data = checked_inputs(profile, allow_code, input_shape, dataset)  # before the model: fail fast
    spec = resolve(model, checkpoint, profile, allow_code, input_shape)
    if candidate_outputs is not None and not candidate_outputs.is_file():
        raise InputError(f"{candidate_outputs}: recorded outputs file not found")
    targets = [] if candidate_outputs is not None and not backends else parse_targets(backends, precision)
    data = (user_data if user_data is not None else embedded_benchmark(spec.task)).limit(limit)
    exported = export(spec)
    if artifact is not None:
        if not artifact.exists():
            raise InputError(f"{artifact}: deployed artefact not found")
        if len({(t.backend.name, t.device) for t in targets}) != 1 or not backends:
            raise UsageError("--artifact runs one deployed file: name exactly one backend with --backends")
        if "artifact" not in targets[0].backend.load_options:
            raise UsageError(f"--artifact: {targets[0].backend.name} cannot run a deployed file (it runs the model "
                             "itself); use a backend that loads one: " + ", ".join(
                                 b.name for b in registry().values() if "artifact" in b.load_options))
    calibration_data = None
    if any(t.precision == "int8" for t in targets) and artifact is None:
        calibration_data = calibration_set(spec, calibration)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"compare {spec.name}", total=len(data))
        core = run_compare(exported, data, targets, batch_size=batch_size, threads=threads,
                           progress=lambda n: bar.advance(task, n), calibration=calibration_data,
                           artifact=artifact, recorded=candidate_outputs)
    report = {
        "schema": SCHEMA,
        "provenance": provenance(threads, {"benchmark": BENCHMARK_SEED} if dataset is None else {}, exported,
                                 data.fingerprint(),
                                 sorted({t.backend.name for t in targets} | {core["reference"]["backend"]})),
        "model": {"name": spec.name, "task": spec.task, "onnx_sha256": exported.sha256, "source": spec.source,
                  "weights": spec.weights_source,
                  "onnx": str(exported.onnx_path), "exporter": exported.exporter, "opset": exported.opset},
        "dataset": {"name": data.name, "path": str(data.root), "task": core["task"], "samples": core["processed"],
                    "skipped_files": len(data.skipped), "skipped": data.skipped,
                    "failed_samples": len(core["failed"]), "failed": core["failed"]},
        "reference": core["reference"],
        "results": core["results"],
        "calibration": core["calibration"],
        "artifact": str(artifact) if artifact else None,
    }
    try:  # the reports are written even when rendering the table fails
        console.print(compare_table(report))
        for line in status_notes(report):
            console.print(line, highlight=False)
        print_data_notes(console, report)
    finally:
        write_reports(report, json_path, html)
    if any(row["status"] == "failed" for row in core["results"]):
        raise typer.Exit(1)


@app.command()
def sysnoise(
    model: ModelArg = None,
    axes: Annotated[Optional[str], typer.Option("--axes", help="Comma list of noise axes (default: all).")] = None,
    list_axes: Annotated[bool, typer.Option("--list-axes", help="Print the axes and their variants.")] = False,
    combine: Annotated[bool, typer.Option("--combine", help="Add the axes cumulatively in the paper's order.")] = False,
    backend: Annotated[str, typer.Option("--backend", help="Backend for graph-rewrite axes (ceil_mode, upsample).")]
    = "onnxruntime",
    dataset: DatasetOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    threads: ThreadsOpt = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Use the first N samples.")] = None,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write the paper-layout table here.")] = None,
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
    allow_code: AllowCodeOpt = False,
    input_shape: InputShapeOpt = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="Training images for INT8.")] = None,
    variant: Annotated[Optional[list[str]], typer.Option(
        "--variant", help="Your own variant: AXIS=package.module:function (decoder, resize, color or nms); "
                          "repeatable.")] = None,
    bootstrap_rounds: Annotated[Optional[int], typer.Option(
        "--bootstrap-rounds", min=0, help="Seeded rounds of each mAP bootstrap (default 200, ~20 s an interval "
                                          "on 120 images); 0 skips it (no interval for mAP).")] = None,
    bootstrap_seconds: Annotated[Optional[float], typer.Option(
        "--bootstrap-seconds", min=0, hidden=True, help="Deprecated: rounds are the budget (reproducible); "
                                                        "0 still skips the bootstrap.")] = None,
    bootstrap_scope: Annotated[str, typer.Option(
        "--bootstrap-scope", help="mAP intervals for every detection variant, or per axis only for the largest "
                                  "|Δ| (faster).")] = "all",
    executor: Annotated[str, typer.Option(
        "--executor", help="Where cells run: local (a worker process; a crashing cell costs only itself) or "
                           "ray (a Ray task; $RAY_ADDRESS, else a local cluster).")] = "local",
    cell_timeout: Annotated[Optional[float], typer.Option(
        "--cell-timeout", min=1, help="Seconds one cell (a variant) may run before its worker is killed and "
                                      "the cell reported as timed out.")] = None,
    store: Annotated[Optional[Path], typer.Option(
        "--store", help="SQLite file that keeps every finished variant as it finishes "
                        "(default: $HARNESS_CACHE/cells.sqlite).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Take variants already finished in the store (same model, data, settings) back "
                         "instead of running them again.")] = False,
    chunk_size: Annotated[Optional[int], typer.Option(
        "--chunk-size", min=1, help="Images whose decodes, resizes and input tensors are held at once (default "
                                    "256, rounded up to whole batches); memory grows with it, not with the "
                                    "dataset.")] = None,
) -> None:
    """SysNoise sweep: vary one part of the deployment system at a time against the training profile."""
    from harness.backends import get_backend
    from harness.noise import AXES, add_user_variant
    from harness.report.sysnoise import summary_markdown, variants_table

    checked_inputs(profile, allow_code, input_shape, dataset)  # before the model and its worker: fail fast
    spec = resolve(model, checkpoint, profile, allow_code, input_shape)
    console = console_for(json_path)
    graph_backend = get_backend(backend).name
    for text in variant or []:
        add_user_variant(text)
    if list_axes:
        for axis in AXES.values():
            names = ", ".join(v.name for v in axis.variants(spec, graph_backend))
            console.print(f"[bold]{axis.name}[/] ({axis.stage}): {axis.description}\n  {escape(names)}", highlight=False)
        return
    from harness.noise import get_axes
    from harness.noise.executor import SweepJob, run_sweep
    from harness.store import CellStore

    if bootstrap_scope not in ("all", "largest"):
        raise UsageError(f"--bootstrap-scope {bootstrap_scope!r}: expected all or largest")
    if bootstrap_seconds is not None:  # a time budget gave other intervals on a slower machine
        print("harness: --bootstrap-seconds is deprecated and ignored: the mAP bootstrap runs a fixed number of "
              "seeded rounds (--bootstrap-rounds)" + ("; 0 skips it, as before" if bootstrap_seconds == 0 else ""),
              file=sys.stderr)
        if bootstrap_seconds == 0 and bootstrap_rounds is None:
            bootstrap_rounds = 0
    get_axes(axes)  # a misspelt axis fails here, before a worker starts
    cells = CellStore(store)
    options = {"axes": axes, "dataset": dataset, "limit": limit, "batch_size": batch_size, "threads": threads,
               "calibration": calibration, "graph_backend": graph_backend, "combine": combine,
               "bootstrap_rounds": bootstrap_rounds, "bootstrap_scope": bootstrap_scope, "chunk_size": chunk_size}
    job = SweepJob(model, checkpoint, profile, list(variant or []), options, cells.path, resume,
                   allow_code=allow_code, input_shape=input_shape)
    try:
        report = run_sweep(job, executor, cell_timeout, cells)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (harness.noise.executor)
        print(f"harness: sweep stopped; the variants and data chunks it finished are kept in {cells.path}: "
              "run the same command with --resume to carry on from there", file=sys.stderr)
        raise
    finally:
        cells.close()
    report["store"] = str(cells.path)
    try:
        console.print(variants_table(report))
        console.print(summary_markdown(report), highlight=False, markup=False)
        print_data_notes(console, report)
    finally:
        write_reports(report, json_path, html, {markdown: lambda: summary_markdown(report) + "\n"} if markdown else None)
    if any(v["status"] == "failed" for axis in report["axes"] for v in axis["variants"]):
        raise typer.Exit(1)  # README: a row that failed (a crash, a timeout) makes the exit code 1


@app.command()
def drift(
    model: ModelArg = None,
    backend: Annotated[str, typer.Option("--backend", help="Candidate backend[:device], e.g. openvino or ort:cuda.")]
    = "onnxruntime",
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16, bf16 or int8.")] = "fp32",
    dataset: DatasetOpt = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Use the first N samples.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    threads: ThreadsOpt = None,
    taps: Annotated[Optional[str], typer.Option(
        "--taps", help="Tap method: graph-outputs (every tensor), kernel-boundary (non-perturbing) or "
                       "forward-hooks (torch). Default: the backend's first, with a fall-back to kernel-boundary "
                       "when tapping changes the outputs.")] = None,
    snr_floor: Annotated[float, typer.Option("--snr-floor", help="A tensor diverges below this SNR (dB).")] = 40.0,
    atol: Annotated[Optional[float], typer.Option("--atol", help="Diverges when max abs > atol + rtol*max|ref| "
                                                                 "(replaces the SNR rule).")] = None,
    rtol: Annotated[Optional[float], typer.Option("--rtol")] = None,
    unit_samples: Annotated[Optional[int], typer.Option(
        "--unit-samples", min=1, help="Run the isolated ops on the first N samples only (default: all).")] = None,
    repro: Annotated[Optional[Path], typer.Option("--repro", help="Write the minimal repro folder here.")] = None,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
    allow_code: AllowCodeOpt = False,
    input_shape: InputShapeOpt = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="Training images for INT8.")] = None,
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", help="The deployed file the candidate runs (e.g. a QDQ .onnx made elsewhere).")] = None,
) -> None:
    """Layer-wise drift: every tensor on the candidate vs the tensor reference, the first divergence, the
    error each op introduces vs inherits, and a minimal repro."""
    from harness.backends import parse_target
    from harness.calibration import calibration_set
    from harness.compare.drift import Thresholds, drift_report
    from harness.data import embedded_benchmark
    from harness.report.drift import drift_summary, drift_table, introducers_table

    user_data = checked_inputs(profile, allow_code, input_shape, dataset)  # before the model: fail fast
    spec = resolve(model, checkpoint, profile, allow_code, input_shape)
    console = console_for(json_path)
    target, device = parse_target(backend)
    if artifact is not None and not artifact.is_file():
        raise InputError(f"{artifact}: deployed artefact not found")
    data = (user_data if user_data is not None else embedded_benchmark(spec.task)).limit(limit)
    report = drift_report(spec, target.name, device, precision, data, batch_size, threads,
                          Thresholds(snr_floor, atol, rtol), taps, unit_samples,
                          calibration_set(spec, calibration) if precision == "int8" and not artifact else None, repro,
                          artifact)
    try:
        console.print(drift_table(report))
        console.print(introducers_table(report))
        console.print(drift_summary(report), highlight=False)
        print_data_notes(console, report)
    finally:
        write_reports(report, json_path, html)


@app.command("repro")
def repro_cmd(
    folder: Annotated[Path, typer.Argument(help="A folder written by `harness drift --repro`.")],
    reference: Annotated[bool, typer.Option("--reference", help="Run the reference form on the tensor reference "
                                                                "(ONNX Runtime FP32, no optimisation).")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Re-run a drift repro: exit 1 when the sub-graph still diverges, 0 when it matches."""
    from harness.compare.repro import check_repro

    diverged, stats, meta = check_repro(folder, reference, threads)
    side = "reference (onnxruntime fp32, no optimisation)" if reference else \
        f"{meta['candidate']['backend']}:{meta['candidate']['device']} {meta['candidate']['precision']}"
    print(f"{meta['tensor']} ({meta['op_type']}, {meta['nodes']} nodes) on {side}: SNR {stats.snr_db:.1f} dB, "
          f"max abs {stats.max_abs:.3g} -> {'DIVERGES' if diverged else 'matches'}")
    raise typer.Exit(1 if diverged else 0)


@app.command()
def validate(
    config: Annotated[Optional[Path], typer.Option("--config", help="The gate file (TOML).")] = None,
    init: Annotated[bool, typer.Option("--init", help="Write a commented starter gate.toml in the current folder.")]
    = False,
    model: Annotated[Optional[str], typer.Option("--model", help="With --init: the model the gate names "
                                                                 "(default: the zoo's default classifier).")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here (one test per threshold "
                                                                  "per profile).")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write a Markdown summary here (for a "
                                                                        "pull-request comment).")] = None,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    allow_code: Annotated[bool, typer.Option(
        "--allow-code", help="Trust the gate file: let it name code (model = package.module:factory, "
                             "package.module:function variants). Without it such a gate is refused.")] = False,
) -> None:
    """The pre-deployment gate: exit 0 when every threshold holds, 1 when one fails, 2 on a config error."""
    from harness.validate import gate_table, junit_xml, load_gate, markdown_summary, run_gate, starter_gate

    if init:
        from harness.model import resolve_model
        from harness.models import DEFAULT_CLASSIFIER

        target = Path.cwd() / "gate.toml"
        if target.exists():
            raise UsageError(f"{target}: already exists; remove it or edit it")
        resolve_model(model or DEFAULT_CLASSIFIER)  # an unknown model fails here, with the known ones
        target.write_text(starter_gate(model or DEFAULT_CLASSIFIER))
        print(target)
        return
    if config is None:
        raise UsageError("validate needs --config gate.toml (or --init to write a starter)")
    gate = load_gate(config, allow_code)
    report = run_gate(gate)
    console = console_for(json_path)
    others = {}
    if junit:
        others[junit] = lambda: junit_xml(report)
    if markdown:
        others[markdown] = lambda: markdown_summary(report)
    try:
        console.print(gate_table(report, config))
        print_data_notes(console, report)
    finally:
        write_reports(report, json_path, html, others)
    if not report["passed"]:
        for check in report["checks"]:
            if not check["passed"]:
                console.print("[bold red]gate failed[/]: "
                              + escape(f"{check['profile']} {check['threshold']}: {check['message']}"),
                              highlight=False)
        raise typer.Exit(1)


@app.command("diff")
def diff_cmd(
    old: Annotated[Path, typer.Argument(help="The earlier JSON report.")],
    new: Annotated[Path, typer.Argument(help="The later JSON report of the same kind.")],
    max_regression: Annotated[float, typer.Option(
        "--max-regression", min=0, help="Largest allowed metric drop per row, as a fraction (0.01 = 1 point).")]
    = 0.0,
    json_path: JsonOpt = None,
) -> None:
    """What changed between two runs: per-row metric and error changes; exit 1 on a regression."""
    from harness.report import read_report, write_json
    from harness.report.diff import diff_reports, diff_table

    result = diff_reports(read_report(old), read_report(new), max_regression, names=(old, new))
    console = console_for(json_path)
    console.print(diff_table(result, old, new))
    if result["old_model_sha256"] != result["new_model_sha256"]:
        console.print("the two runs used different ONNX exports (onnx_sha256 differs)", highlight=False)
    console.print(f"{result['regressions']} regression(s) (a metric drop beyond {max_regression * 100:.2f} pts, or a "
                  "gate check that fails)", highlight=False)
    if json_path:
        write_json(result, json_path)
    if result["regressions"]:
        raise typer.Exit(1)


@app.command("report")
def report_cmd(
    result: Annotated[Path, typer.Argument(help="A JSON report written by compare, sysnoise, drift or validate.")],
    html: HtmlOpt = None,
) -> None:
    """Render a JSON report (and its sidecar files) as a self-contained HTML page."""
    from harness.report import read_report
    from harness.report.html import write_html

    report = read_report(result)
    out = html or result.with_suffix(".html")
    write_html(report, out, json_path=result)
    print(out)


@app.command("export-inputs")
def export_inputs(
    folder: Annotated[Path, typer.Argument(help="Folder to write inputs.npz, model.onnx and manifest.json into.")],
    model: ModelArg = None,
    dataset: DatasetOpt = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Use the first N samples.")] = None,
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
    allow_code: AllowCodeOpt = False,
    input_shape: InputShapeOpt = None,
) -> None:
    """Write the exact pre-processed inputs (with sample ids) for a target that cannot host the harness."""
    from harness.data import embedded_benchmark
    from harness.export import export
    from harness.recorded import write_inputs
    from harness.run import iter_batches, require_readable

    user_data = checked_inputs(profile, allow_code, input_shape, dataset)  # before the model: fail fast
    spec = resolve(model, checkpoint, profile, allow_code, input_shape)
    data = (user_data if user_data is not None else embedded_benchmark(spec.task)).limit(limit)
    require_readable(data, spec.profile)
    exported = export(spec)
    failures = []
    manifest = write_inputs(folder, exported, data, iter_batches(data, spec.profile, 64, failures), failures)
    Console(stderr=True).print(f"wrote {manifest['samples']} inputs ({len(failures)} failed) to {folder}; "
                               f"{manifest['how']}", highlight=False, markup=False)


@app.command("backends")
def backends_cmd(json_path: JsonOpt = None, markdown: Annotated[bool, typer.Option(
        "--markdown", help="Print the declared backends x devices x precisions table (the README's).")] = False,
        ) -> None:
    """Every known backend: version, devices, precisions, or why it is unavailable."""
    from harness.backends import registry
    from harness.report import write_json
    from harness.report.markdown import backends_markdown
    from harness.report.table import backends_table

    if markdown:
        print(backends_markdown(registry().values()))
        return
    rows = [backend.describe() for backend in registry().values()]
    console_for(json_path).print(backends_table(rows))
    if json_path:
        write_json({"schema": "harness.backends/1", "backends": rows}, json_path)


@app.command("export")
def export_cmd(model: ModelArg = None, checkpoint: CheckpointOpt = None, profile: ProfileOpt = None,
               json_path: JsonOpt = None, allow_code: AllowCodeOpt = False,
               input_shape: InputShapeOpt = None) -> None:
    """Export the model to ONNX once (cached by content hash) and print where it is."""
    from harness.export import export
    from harness.report import write_json

    exported = export(resolve(model, checkpoint, profile, allow_code, input_shape))
    info = {"schema": "harness.export/1", "model": exported.spec.name, "onnx": str(exported.onnx_path),
            "onnx_sha256": exported.sha256, "exporter": exported.exporter, "opset": exported.opset,
            "cache_hit": exported.cache_hit, "mapped_tensors": len(exported.name_map.get("tensors", {}))}
    console = console_for(json_path)
    state = "re-used from cache" if exported.cache_hit else "exported"
    console.print(f"{info['model']}: {state} {info['onnx']} ({info['exporter']}, opset {info['opset']}, "
                  f"{info['mapped_tensors']} tensors mapped to torch modules)", markup=False, highlight=False)
    if json_path:
        write_json(info, json_path)


def main() -> None:
    run_with_error_contract(app)


if __name__ == "__main__":
    main()
