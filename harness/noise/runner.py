"""Runs one SysNoise sweep of one model and returns its JSON report (`harness.sysnoise/1`): the CLI's (on a
worker, harness.executor) and the README table's single source."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError
from harness.pipeline import DEFAULT_CHUNK
from harness.noise.stats import MAP_ROUNDS

BOOTSTRAP_SCOPES = ("all", "largest")


@dataclass(frozen=True)
class SweepSettings:
    """What one sweep measures and how: the `harness sysnoise` options, the one object that crosses into
    the worker (harness.noise.cells.SweepJob)."""

    axes: str | None = None                 # comma list; None: every axis
    dataset: Path | None = None             # None: the embedded benchmark of the model's task
    limit: int | None = None
    batch_size: int = 64
    threads: int | None = None
    calibration: Path | None = None         # INT8 calibration images (None: the model's shipped set)
    graph_backend: str = "onnxruntime"      # runs the graph-rewrite axes (ceil_mode, upsample)
    combine: bool = False                   # the cumulative curve in the paper's order
    bootstrap_rounds: int = MAP_ROUNDS      # seeded rounds of each mAP bootstrap (0: none)
    bootstrap_scope: str = "all"            # all | largest (per axis only the largest |Δ| gets an interval)
    chunk_size: int = DEFAULT_CHUNK         # images whose intermediates are held at once
    workers: int = 1                        # data-parallel workers, each a shard of whole chunks (executor)

    def __post_init__(self):
        if self.bootstrap_scope not in BOOTSTRAP_SCOPES:
            raise UsageError(f"--bootstrap-scope {self.bootstrap_scope!r}: expected {' or '.join(BOOTSTRAP_SCOPES)}")


def sysnoise_report(spec, settings: SweepSettings = SweepSettings(), progress=True, store=None,
                    resume: bool = False, shard: int | None = None) -> dict:
    """The sweep's report; with `shard` (of settings.workers), only that shard's part of the pass, its
    pieces kept in the store for the worker that merges them (returns the shard's account). progress: bars
    on stderr (True), none (False), or a shard's worker's `send`, given ("samples", the data's images) and
    ("progress", images done) for the driver's bar."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.calibration import calibration_set
    from harness.data import evaluation_data, load_dataset
    from harness.export import export
    from harness.noise import get_axes
    from harness.pipeline import StagedPipeline
    from harness.noise.stats import significance_block
    from harness.tasks import get_task
    from harness.noise.sweep import combine as combine_axes, reference_metric, reference_of, run_axes
    from harness.report.blocks import common_blocks, failure_records
    from harness.run import require_readable

    chosen = get_axes(settings.axes)
    dataset = settings.dataset
    data = evaluation_data(spec.task, load_dataset(dataset) if dataset else None, settings.limit)
    task = spec.task
    if not get_task(task).accepts(data.task):
        raise UsageError(f"{data.root}: sysnoise needs a labelled {task} dataset, this one is {data.task}")
    data = data.aligned_to(spec.labels)
    if store is not None:  # the reference's own decoding is bounded by --cell-timeout too
        store.reference_work()
    require_readable(data, spec.profile)
    if store is not None:
        store.paused()
    exported = export(spec)
    needs_int8 = any(a.name == "precision" for a in chosen)
    pipeline = StagedPipeline(exported, data, settings.batch_size, settings.threads,
                              calibration_set(spec, settings.calibration) if needs_int8 else None,
                              bootstrap_rounds=settings.bootstrap_rounds, bootstrap_scope=settings.bootstrap_scope,
                              chunk_size=settings.chunk_size, shards=settings.workers, shard=shard)
    graph_backend = settings.graph_backend
    reference, reference_config = reference_of(exported)
    primary = get_task(task).primary_metric
    classes = data.classes or spec.labels
    if shard is not None:
        return _shard_pass(pipeline, chosen, spec.profile, reference_config, task, primary, graph_backend, store,
                           resume, progress if callable(progress) else (lambda message: None))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True, disable=progress is not True) as bars:
        pass_bar = bars.add_task("decode, resize, infer, post-process (images)", total=len(data.samples))

        def axis_bar(axis, cells):
            bar = bars.add_task(f"{axis.name} ({axis.stage})", total=len(cells))
            return lambda name: bars.advance(bar)
        results = run_axes(pipeline, chosen, spec.profile, reference_config, task, classes, primary, graph_backend,
                           store, resume, on_pass=lambda n: bars.advance(pass_bar, n), on_axis=axis_bar)
    reference_eval = pipeline.evaluate(spec.profile, reference_config)
    metric = reference_metric(pipeline, spec.profile, reference_config, task, classes)
    curve = combine_axes(pipeline, results, spec.profile, reference_config, task, classes, primary,
                         graph_backend) if settings.combine else []
    return {
        **common_blocks("harness.sysnoise/1", exported, data, pipeline.fingerprint, len(reference_eval.ids),
                        failure_records(pipeline.failures),
                        {**reference, "profile": spec.profile.to_json(), "metric": metric}, settings.threads,
                        {"bootstrap": 0}, []),
        "primary_metric": primary,
        "axes": [_said_why(block, spec) for block in results],
        "combined": curve,
        "combined_note": "each axis at the variant that was worst on its own axis, chosen on this evaluated data "
                         "(as the paper does), added in the paper's order" if settings.combine else None,
        "bootstrap_rounds": pipeline.bootstrap_rounds,
        "bootstrap_seconds": None,  # no longer a budget (rounds are: reproducible); kept for older readers
        "significance": significance_block(get_task(task), pipeline.bootstrap_rounds),
        "bootstrap_scope": settings.bootstrap_scope,
        "store": str(store.path) if store is not None else None,
        "counters": pipeline.counters,
        "chunk_size": pipeline.chunk_size,  # images whose intermediates were held at once
    }


def _said_why(block: dict, spec) -> dict:
    """An axis that offers this model no variant says why (`unavailable`: an R-CNN's graph post-processes its
    detections itself, a GPU axis without a GPU)."""
    from harness.noise import unavailable

    why = None if block["variants"] else unavailable(block["axis"], spec)
    return {**block, "unavailable": why} if why else block


def _shard_pass(pipeline, chosen, profile, reference_config, task, primary, graph_backend, store, resume,
                send) -> dict:
    """A shard's worker's part of the sweep: every cell's pieces of its chunks, kept in the store; returns
    its account and the context of the pieces it stored."""
    from harness.noise.sweep import prepare_axes

    send(("samples", len(pipeline.dataset.samples)))
    plans = prepare_axes(pipeline, chosen, profile, reference_config, task, primary, graph_backend, store, resume,
                         on_pass=lambda images: send(("progress", images)))
    contexts = {cell.context for cells in plans for cell in cells}
    return {"account": {"shard": pipeline.shard, "chunks": len(pipeline.chunk_starts()), "counters": pipeline.counters},
            "context": contexts.pop() if len(contexts) == 1 else None}  # the sweep's pieces in the store
