"""`harness export`, `export-inputs`, `backends` and `matrix`: what a model and the installed runtimes are, and
which library models each runtime takes."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from harness.cli.app import app
from harness.errors import UsageError
from harness.cli.common import (AllowCodeOpt, CellTimeoutOpt, CheckpointOpt, DatasetOpt, InputOpt, InputShapeOpt, PostprocessOpt, JsonOpt, LimitOpt, ModelArg,
                                LabelsOpt, TokenizerOpt, ProfileOpt, TaskOpt, checked_inputs, console_for)
from harness.model import ModelRequest


@app.command("export-inputs")
def export_inputs(
    folder: Annotated[Path, typer.Argument(help="Folder to write inputs.npz, model.onnx and manifest.json into.")],
    model: ModelArg = None,
    dataset: DatasetOpt = None,
    limit: LimitOpt = None,
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
    allow_code: AllowCodeOpt = False,
    input_shape: InputShapeOpt = None,
    inputs: InputOpt = None,
    postprocess: PostprocessOpt = None,
    task: TaskOpt = None,
    labels: LabelsOpt = None,
    tokenizer: TokenizerOpt = None,
) -> None:
    """Write the exact pre-processed inputs (with sample ids) for a target that cannot host the harness."""
    from harness.data import evaluation_data
    from harness.export import export
    from harness.recorded import write_inputs
    from harness.run import iter_batches, require_readable

    request = ModelRequest(model, checkpoint, profile, allow_code, input_shape, task, labels, tuple(inputs or ()),
                           postprocess, tokenizer)
    user_data = checked_inputs(request, dataset)  # before the model: fail fast
    spec = request.resolve()
    if spec.text_inputs:
        raise UsageError(f"export-inputs: {spec.name} is a text model, whose inputs are padded batch by batch to "
                         "different lengths; exporting them for a target is not supported yet")
    data = evaluation_data(spec.task, user_data, limit)
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
               input_shape: InputShapeOpt = None, task: TaskOpt = None, inputs: InputOpt = None) -> None:
    """Export the model to ONNX once (cached by content hash) and print where it is."""
    from harness.export import export
    from harness.report import write_json

    request = ModelRequest(model, checkpoint, profile, allow_code, input_shape, task, inputs=tuple(inputs or ()))
    exported = export(request.resolve())
    info = {"schema": "harness.export/1", "model": exported.spec.name, "onnx": str(exported.onnx_path),
            "onnx_sha256": exported.sha256, "exporter": exported.exporter, "opset": exported.opset,
            "cache_hit": exported.cache_hit, "mapped_tensors": len(exported.name_map.get("tensors", {}))}
    console = console_for(json_path)
    state = "re-used from cache" if exported.cache_hit else "exported"
    console.print(f"{info['model']}: {state} {info['onnx']} ({info['exporter']}, opset {info['opset']}, "
                  f"{info['mapped_tensors']} tensors mapped to torch modules)", markup=False, highlight=False)
    if json_path:
        write_json(info, json_path)


@app.command("matrix")
def matrix_cmd(
    rows: Annotated[Optional[str], typer.Option(
        "--rows", help="all (default), ci (the rows `make test` re-runs), or a comma list of the matrix's models.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Evaluated images per cell.")] = 8,
    cell_timeout: CellTimeoutOpt = 1800,
    work: Annotated[Optional[Path], typer.Option(
        "--work", help="Folder for the images, checkpoints and compare reports (default: a temporary one).")] = None,
    json_path: JsonOpt = None,
    readme: Annotated[Optional[Path], typer.Option(
        "--readme", help="Rewrite the table between this file's matrix markers.")] = None,
    from_json: Annotated[Optional[Path], typer.Option(
        "--from-json", help="Render the table of an earlier run's --json report instead of running anything.")] = None,
    keep_rows_from: Annotated[Optional[Path], typer.Option(
        "--keep-rows-from", help="An earlier run's --json report: its rows this run does not redo are kept "
                                 "(re-run some rows, keep the rest).")] = None,
) -> None:
    """The acceptance matrix: library models x onnxruntime, openvino, tvm x fp32, fp16, int8, each cell ok with
    its output error and agreement or the reason it cannot run (the README's table; `make matrix`)."""
    import tempfile

    from rich.console import Console

    from harness.matrix import (MATRIX_MARKERS, MatrixSettings, keep_rows, matrix_markdown, read_matrix,
                                run_matrix, select_models)
    from harness.report import write_json
    from harness.report.markdown import rewrite_between_markers

    earlier = read_matrix(keep_rows_from) if keep_rows_from is not None else None

    def partial_saver(partial: dict) -> None:
        if json_path not in (None, "-"):
            write_json(keep_rows(partial, earlier) if earlier else partial, json_path)

    if from_json is not None:
        report = read_matrix(from_json)
    else:
        settings = MatrixSettings(limit=limit, cell_timeout=cell_timeout)
        with tempfile.TemporaryDirectory(prefix="harness-matrix-") as scratch:
            report = run_matrix(select_models(rows), settings, work or Path(scratch),
                                progress=Console(stderr=True).print, save=partial_saver)
    if earlier:
        report = keep_rows(report, earlier)
    if json_path:
        write_json(report, json_path)
    body = matrix_markdown(report)
    if readme is None:
        if json_path != "-":
            print(body)
        return
    rewrite_between_markers(readme, body, MATRIX_MARKERS, "matrix")
