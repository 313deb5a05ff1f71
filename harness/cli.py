"""The `harness` command line. One error boundary (main): a HarnessError becomes one line on stderr and
its exit code (2 for usage/input errors); --debug or HARNESS_DEBUG=1 shows the traceback instead."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from harness.errors import HarnessError, InputError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Cross-backend deployment harness: measure and explain what a model loses in deployment.")
zoo_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The model zoo: list and train.")
app.add_typer(zoo_app, name="zoo")

ModelArg = Annotated[Optional[str], typer.Argument(
    help="Zoo name, torchvision:NAME (+ --checkpoint), package.module:factory, or a path to an .onnx file. "
         "Default: the zoo's default classifier.", show_default=False)]
CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", help="state_dict for the model's weights.")]
ProfileOpt = Annotated[Optional[Path], typer.Option(
    "--profile", help="TOML with the model's training profile (decoder, resize, input_size, mean, std, ...).")]
DatasetOpt = Annotated[Optional[Path], typer.Option(
    "--dataset", help="Class folder, COCO json (or folder with instances.json), or a folder of unlabelled "
                      "images. Default: the embedded benchmark.")]
JsonOpt = Annotated[Optional[str], typer.Option("--json", help="Write the JSON report here ('-' for stdout).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="Threads per backend.")]


def _console(json_path: str | None) -> Console:
    """The table goes to stderr when the JSON goes to stdout. Logs and CI are wider than 80 columns."""
    stderr = json_path == "-"
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or os.environ.get("COLUMNS") else 160
    return Console(stderr=stderr, width=width)


def _resolve(model, checkpoint, profile):
    from harness.model import resolve_model

    return resolve_model(model, checkpoint=checkpoint, profile_path=profile)


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
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
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

    from harness.calibration import calibration_set
    from harness.compare import SCHEMA, compare as run_compare, parse_targets
    from harness.data import embedded_benchmark, load_dataset
    from harness.data.benchmark import SEED as BENCHMARK_SEED
    from harness.export import export
    from harness.provenance import provenance
    from harness.report import write_json
    from harness.report.table import compare_table, status_notes

    console = _console(json_path)
    spec = _resolve(model, checkpoint, profile)
    if candidate_outputs is not None and not candidate_outputs.is_file():
        raise InputError(f"{candidate_outputs}: recorded outputs file not found")
    targets = [] if candidate_outputs is not None and not backends else parse_targets(backends, precision)
    data = (load_dataset(dataset) if dataset else embedded_benchmark(spec.task)).limit(limit)
    exported = export(spec)
    if artifact is not None:
        if not artifact.exists():
            raise InputError(f"{artifact}: deployed artefact not found")
        if len({(t.backend.name, t.device) for t in targets}) != 1 or not backends:
            raise UsageError("--artifact runs one deployed file: name exactly one backend with --backends")
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
                  "onnx": str(exported.onnx_path), "exporter": exported.exporter, "opset": exported.opset},
        "dataset": {"name": data.name, "path": str(data.root), "task": core["task"], "samples": core["processed"],
                    "failed_samples": len(core["failed"]), "failed": core["failed"]},
        "reference": core["reference"],
        "results": core["results"],
        "calibration": core["calibration"],
        "artifact": str(artifact) if artifact else None,
    }
    console.print(compare_table(report))
    for line in status_notes(report):
        console.print(line, highlight=False)
    for failure in core["failed"]:
        console.print(f"[yellow]skipped sample[/] {failure['path']}: {failure['reason']}")
    if json_path:
        write_json(report, json_path)
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
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write the paper-layout table here.")] = None,
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="Training images for INT8.")] = None,
    variant: Annotated[Optional[list[str]], typer.Option(
        "--variant", help="Your own variant: AXIS=package.module:function (decoder, resize, color or nms); "
                          "repeatable.")] = None,
) -> None:
    """SysNoise sweep: vary one part of the deployment system at a time against the training profile."""
    from harness.backends import get_backend
    from harness.calibration import calibration_set
    from harness.data import embedded_benchmark, load_dataset
    from harness.export import export
    from harness.noise import AXES, add_user_variant, get_axes
    from harness.report.sysnoise import summary_markdown, variants_table
    from harness.noise.sweep import ModelConfig, StagedPipeline, combine as combine_axes, run_axis
    from harness.provenance import provenance
    from harness.report import write_json

    spec = _resolve(model, checkpoint, profile)
    console = _console(json_path)
    graph_backend = get_backend(backend).name
    for text in variant or []:
        add_user_variant(text)
    if list_axes:
        for axis in AXES.values():
            names = ", ".join(v.name for v in axis.variants(spec, graph_backend))
            console.print(f"[bold]{axis.name}[/] ({axis.stage}): {axis.description}\n  {names}", highlight=False)
        return
    chosen = get_axes(axes)
    data = (load_dataset(dataset) if dataset else embedded_benchmark(spec.task)).limit(limit)
    task = spec.task
    if data.task != task:
        raise UsageError(f"{data.root}: sysnoise needs a labelled {task} dataset, this one is {data.task}")
    data = data.aligned_to(spec.labels)
    exported = export(spec)
    needs_int8 = any(a.name in ("precision",) for a in chosen)
    pipeline = StagedPipeline(exported, data, batch_size, threads,
                              calibration_set(spec, calibration) if needs_int8 else None)
    reference_config = ModelConfig("torch" if spec.has_torch else "onnxruntime", "cpu", "fp32")
    primary = "map" if task == "detect" else "top1"
    classes = data.classes or spec.labels
    reference_eval = pipeline.evaluate(spec.profile, reference_config)
    from harness.compare import task_metric

    reference_metric = task_metric(task, [pipeline.by_id[i] for i in reference_eval.ids], reference_eval.predictions,
                                   reference_eval.predictions, len(classes))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bars:
        for axis in chosen:
            bar = bars.add_task(f"{axis.name} ({axis.stage})", total=len(axis.variants(spec, graph_backend)))
            results.append(run_axis(pipeline, axis, spec.profile, reference_config, task, classes, primary,
                                    graph_backend, progress=lambda name, b=bar: bars.advance(b)))
    curve = combine_axes(pipeline, results, spec.profile, reference_config, task, classes, primary,
                         graph_backend) if combine else []
    report = {
        "schema": "harness.sysnoise/1",
        "provenance": provenance(threads, {"bootstrap": 0}, exported, data.fingerprint(), []),
        "model": {"name": spec.name, "task": task, "onnx_sha256": exported.sha256},
        "dataset": {"name": data.name, "samples": len(reference_eval.ids), "failed_samples": len(pipeline.failures),
                    "failed": [{"sample": k, "reason": v} for k, v in pipeline.failures.items()]},
        "reference": {"backend": reference_config.backend, "device": "cpu", "precision": "fp32",
                      "profile": spec.profile.to_json(), "metric": reference_metric},
        "primary_metric": primary,
        "axes": results,
        "combined": curve,
        "combined_note": "each axis at the variant that was worst on its own axis, chosen on this evaluated data "
                         "(as the paper does), added in the paper's order" if combine else None,
        "counters": pipeline.counters,
    }
    console.print(variants_table(report))
    console.print(summary_markdown(report), highlight=False)
    if markdown:
        markdown.write_text(summary_markdown(report) + "\n")
    if json_path:
        write_json(report, json_path)


@app.command("export-inputs")
def export_inputs(
    folder: Annotated[Path, typer.Argument(help="Folder to write inputs.npz, model.onnx and manifest.json into.")],
    model: ModelArg = None,
    dataset: DatasetOpt = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Use the first N samples.")] = None,
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Write the exact pre-processed inputs (with sample ids) for a target that cannot host the harness."""
    from harness.data import embedded_benchmark, load_dataset
    from harness.export import export
    from harness.recorded import write_inputs
    from harness.run import iter_batches

    spec = _resolve(model, checkpoint, profile)
    data = (load_dataset(dataset) if dataset else embedded_benchmark(spec.task)).limit(limit)
    exported = export(spec)
    failures = []
    manifest = write_inputs(folder, exported, data, iter_batches(data, spec.profile, 64, failures), failures)
    Console(stderr=True).print(f"wrote {manifest['samples']} inputs ({len(failures)} failed) to {folder}; "
                               f"{manifest['how']}", highlight=False)


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
    _console(json_path).print(backends_table(rows))
    if json_path:
        write_json({"schema": "harness.backends/1", "backends": rows}, json_path)


@app.command("export")
def export_cmd(model: ModelArg = None, checkpoint: CheckpointOpt = None, profile: ProfileOpt = None,
               json_path: JsonOpt = None) -> None:
    """Export the model to ONNX once (cached by content hash) and print where it is."""
    from harness.export import export
    from harness.report import write_json

    exported = export(_resolve(model, checkpoint, profile))
    info = {"schema": "harness.export/1", "model": exported.spec.name, "onnx": str(exported.onnx_path),
            "onnx_sha256": exported.sha256, "exporter": exported.exporter, "opset": exported.opset,
            "cache_hit": exported.cache_hit, "mapped_tensors": len(exported.name_map.get("tensors", {}))}
    console = _console(json_path)
    state = "re-used from cache" if exported.cache_hit else "exported"
    console.print(f"{info['model']}: {state} {info['onnx']} ({info['exporter']}, opset {info['opset']}, "
                  f"{info['mapped_tensors']} tensors mapped to torch modules)")
    if json_path:
        write_json(info, json_path)


@zoo_app.command("list")
def zoo_list(json_path: JsonOpt = None) -> None:
    """The zoo's models, their task, input and stated accuracy on the embedded benchmark."""
    from rich.table import Table

    from harness.models import DEFAULT_CLASSIFIER, DEFAULT_DETECTOR, ZOO
    from harness.report import write_json

    rows = []
    for name, make in ZOO.items():
        spec = make()
        rows.append({"name": name, "task": spec.task, "input_size": spec.profile.input_size,
                     "default": name in (DEFAULT_CLASSIFIER, DEFAULT_DETECTOR), "summary": spec.summary,
                     "stated": spec.stated})
    table = Table(title="zoo", title_justify="left")
    for column in ("name", "task", "input", "default", "stated metric", "summary"):
        table.add_column(column)
    for row in rows:
        stated = ", ".join(f"{k} {v:.3f}" for k, v in row["stated"].items())
        table.add_row(row["name"], row["task"], str(row["input_size"]), "yes" if row["default"] else "",
                      stated, row["summary"])
    _console(json_path).print(table)
    if json_path:
        write_json({"schema": "harness.zoo/1", "models": rows}, json_path)


@zoo_app.command("train")
def zoo_train(name: Annotated[str, typer.Argument(help="Zoo model to train by its recipe.")],
              out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the weights. "
                                                          "Default: the shipped weights file.")] = None) -> None:
    """Reproduce a zoo model's weights by its deterministic recipe (minutes on 2 CPU cores)."""
    from harness.model import resolve_model
    from harness.models.train import reproduce

    resolve_model(name)  # unknown names fail here, with the list of known ones
    reproduce(name, out, log=lambda line: Console(stderr=True).print(line))


def main() -> None:
    debug = os.environ.get("HARNESS_DEBUG", "") not in ("", "0")
    if "--debug" in sys.argv[1:]:
        sys.argv.remove("--debug")
        debug = True
    try:
        app()
    except HarnessError as err:
        if debug:
            raise
        message = " ".join(str(err).split())
        print(f"harness: error: {message}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
