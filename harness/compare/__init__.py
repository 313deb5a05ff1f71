"""`harness compare`: the reference (training profile on the training system) against candidates.

Every candidate sees the reference's pre-processed tensors and the reference's post-processing; only
the backend / device / precision differ. The report follows DESIGN.md's compare schema.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from harness.backends import Backend, get_backend, parse_target
from harness.compare.outputs import OutputStats, predictions_task
from harness.data import UNLABELED, Dataset, Sample, printable
from harness.errors import BackendUnavailable, InputError, RunFailed, UsageError
from harness.export import ExportedModel
from harness.placement import Placement
from harness.run import FailedSample, require_readable, timing_summary
from harness.stages import read_failure
from harness.tasks import Task, get_task

if TYPE_CHECKING:  # the pipeline imports harness.compare.outputs: imported where used, not at load
    from harness.pipeline import ModelConfig, StagedPipeline

SCHEMA = "harness.compare/1"
MAX_FLIPPED = 100


@dataclass(frozen=True)
class Target:
    backend: Backend
    device: str
    precision: str

    @property
    def placement(self) -> Placement:
        return Placement(self.backend.name, self.device, self.precision)

    @property
    def label(self) -> str:
        return self.placement.label


def parse_targets(backends: str | None, precisions: str) -> list[Target]:
    """'ort,openvino:gpu' x 'fp32,int8' -> targets; no backends means every installed one."""
    from harness.backends import PRECISIONS, registry

    wanted = [p.strip().lower() for p in precisions.split(",") if p.strip()]
    if not wanted:
        raise UsageError(f"--precision {precisions!r} names no precision; known: {', '.join(PRECISIONS)}")
    for precision in wanted:
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if backends:
        pairs = [parse_target(text) for text in backends.split(",") if text.strip()]
        if not pairs:
            raise UsageError(f"--backends {backends!r} names no backend")
    else:
        pairs = [(b, "cpu") for b in registry().values() if b.available()[0]]
    if not pairs:
        raise UsageError("no backend to compare: --backends named none and none is installed")
    return [Target(backend, device, precision) for backend, device in pairs for precision in wanted]


def reference_target(exported: ExportedModel) -> tuple[Target, dict, str]:
    """The training system: torch FP32 on CPU; ORT FP32 without graph optimisation for an ONNX-only model.
    The one definition every command uses (compare, sysnoise, validate; drift's tensor reference is ORT
    without optimisation for every model), so one model has one reference everywhere."""
    if exported.spec.has_torch:
        return Target(get_backend("torch"), "cpu", "fp32"), {}, "the training system: PyTorch eager FP32 on CPU"
    return (Target(get_backend("onnxruntime"), "cpu", "fp32"), {"optimize": False},
            "no torch model was given: ONNX Runtime FP32 on CPU with graph optimisations disabled")


def reference_block(target: Target, options: dict, note: str) -> dict:
    """What every report's `reference` block says the reference is (DESIGN.md's keys, plus how it ran)."""
    optimized = options.get("optimize", True) if target.backend.name == "onnxruntime" else None
    return {"backend": target.backend.name, "device": target.device, "precision": target.precision,
            "graph_optimizations": optimized, "note": note}


@dataclass
class Loaded:
    """A candidate's session, loaded before the pass (so an unavailable backend or a failed build is its
    row's status, and its load time is its own)."""

    config: ModelConfig
    status: str = "ok"                 # ok | failed | unavailable
    reason: str = ""
    load_s: float = 0.0
    timed: bool = True                 # a recorded target's outputs are looked up, not timed here


def load_session(pipeline: StagedPipeline, target: Target, config: ModelConfig, **options) -> Loaded:
    """Loads `target` into the pipeline's model stage under `config`."""
    loaded = Loaded(config)
    ok, reason = target.backend.available()
    if not ok:
        loaded.status, loaded.reason = "unavailable", reason
        return loaded
    started = time.perf_counter()
    try:
        pipeline.models.sessions[config] = target.backend.load(pipeline.exported, target.device, target.precision,
                                                               pipeline.threads, **options)
    except BackendUnavailable as err:
        loaded.status, loaded.reason = "unavailable", str(err)
    except Exception as err:  # noqa: BLE001 - the backend's own message becomes the failed row's reason
        loaded.status, loaded.reason = "failed", f"{type(err).__name__}: {err}".strip()
    loaded.load_s = time.perf_counter() - started
    return loaded


def task_metric(task: str, samples: list[Sample], predictions: list, reference: list | None,
                num_classes: int) -> dict:
    """The task's metric on the processed samples; for unlabelled data, agreement with the reference."""
    if task != UNLABELED:
        return get_task(task).metric(samples, predictions, num_classes)
    kind = predictions_task(reference)
    agree = kind.agreement(reference, predictions)
    return {"top1_agreement": float(agree.mean()), "flip_rate": float(1 - agree.mean()),
            "kl": kind.divergence(reference, predictions)}


def flipped_samples(task: Task, samples: list[Sample], reference: list, candidate: list, agree: np.ndarray,
                    classes: tuple[str, ...]) -> list[dict]:
    rows = []
    for k in np.where(~agree)[0][:MAX_FLIPPED]:
        sample = samples[k]
        row = {"sample": sample.id, "path": printable(sample.path),
               **task.flip_record(sample, reference[k], candidate[k], classes)}
        overlay = task.flip_overlay(sample, reference[k], candidate[k])
        if overlay is not None:  # an array: flipped_thumbnails moves it to the report's sidecar
            row["overlay"] = overlay
        rows.append(row)
    return rows


def _delta(metric: dict, reference: dict) -> dict:
    """Each metric's change; none where a side has no value (an unlabelled segmenter's KL: it has no
    class distribution)."""
    return {k: metric[k] - reference[k] for k in metric if k in reference
            and metric[k] is not None and reference[k] is not None}


def compare(exported: ExportedModel, dataset: Dataset, targets: list[Target], batch_size: int = 32,
            threads: int | None = None, progress: Callable | None = None, calibration=None,
            artifact=None, recorded=None, on_work: Callable | None = None, isolated: dict | None = None,
            shards: int = 1, shard: int | None = None, parts: list | None = None,
            timed_runs: int | None = None) -> dict:
    """Runs the reference and every target in one pass over the data (the staged pipeline, with the same
    input tensors for all); returns the report's core blocks.

    calibration: the shared CalibrationSet for INT8 targets; artifact: a deployed file (QDQ .onnx,
    OpenVINO .xml, TensorRT .engine) to run instead of one the harness builds; recorded: an .npz of
    outputs recorded on a target from `harness export-inputs`, compared as one more candidate. on_work:
    called with the label of the target whose work begins ("reference" for the reference's, None between),
    so an executor can blame a crash on it; isolated: target label -> why it killed an earlier worker (its
    row fails with that reason; it is not run again). Data-parallel workers (harness.shards): with `shard`
    (of `shards`), only that shard's part of the pass is made and returned (a PassPart); with `parts`, the
    shards' parts are merged and the report made from them, nothing run again. timed_runs: see TIMING_METHOD
    (0: no warm-up or run alone, PASS_TIMING_METHOD)."""
    from harness.compare.cells import REFERENCE_WORK
    from harness.pipeline import ModelConfig, Request, StagedPipeline

    spec = exported.spec
    task = UNLABELED if dataset.task == UNLABELED else spec.task
    if dataset.task != UNLABELED and not get_task(spec.task).accepts(dataset.task):
        raise UsageError(f"{dataset.root}: a {dataset.task} dataset cannot evaluate the {spec.task} model {spec.name}")
    dataset = dataset.aligned_to(spec.labels)
    working = on_work or (lambda owner: None)
    if parts is None:
        working(REFERENCE_WORK)  # the reference's decoder reads the first sample: bounded by --cell-timeout too
        require_readable(dataset, spec.profile)
        working(None)
    # one batch a chunk: every target's raw outputs of a chunk are held for the output statistics, and one
    # profile gains nothing from a longer chunk, so compare streams batch by batch
    pipeline = StagedPipeline(exported, dataset, batch_size, threads, calibration, bootstrap_rounds=0,
                              chunk_size=batch_size, shards=shards, shard=shard)
    pipeline.models.warmup = timed_runs != 0  # no timing asked: no run beyond the pass's own
    pipeline.on_work = working
    isolated = isolated or {}
    ref_target, ref_options, ref_note = reference_target(exported)
    # a configuration of its own: a target at the same placement is loaded, timed and reported apart
    ref_config = ModelConfig.at(ref_target.placement, options=(("role", "reference"), *sorted(ref_options.items())))
    ref_request = Request(spec.profile, ref_config)
    facts = None  # what the sessions said they executed: asked when rows are made, unless shards said it
    if parts is None:
        reference, entries, labels = _run_pass(pipeline, ref_target, ref_options, ref_request, targets, calibration,
                                               artifact, recorded, isolated, progress, working, timed_runs)
        if shard is not None:
            return _shard_result(pipeline, shard, reference, entries)
    else:
        from harness.shards import merge_parts

        facts = merge_parts(pipeline, [found["part"] for found in parts])
        reference, *loads = parts[0]["loaded"]
        entries, labels = _candidates(pipeline, targets, calibration, artifact, recorded, isolated, working, loads)
    if ref_request.key in pipeline.broken:
        error = pipeline.broken[ref_request.key]
        if isinstance(error, (UsageError, InputError)):  # the model or its data is not what was declared: exit 2
            raise error
        raise RunFailed(f"the reference {ref_target.label} failed: {type(error).__name__}: {error}")
    ref = pipeline.evaluated[ref_request.key]
    processed = [pipeline.by_id[i] for i in ref.ids]
    num_classes = len(dataset.classes) or len(spec.labels)
    ref_metric = task_metric(task, processed, ref.predictions, ref.predictions, num_classes)
    results = []
    for (identity, loaded), target_label in zip(entries, labels):
        working(target_label)
        results.append(_result_row(pipeline, identity, loaded, ref_request, processed, task, ref_metric,
                                   dataset.classes or spec.labels, facts))
    working(None)
    failures = [FailedSample(sample, printable(pipeline.by_id[sample].path), read_failure(err))
                for sample, (_, err) in pipeline.stages.failures.items()]
    return {
        "reference": {**reference_block(ref_target, ref_options, ref_note), "profile": spec.profile.to_json(),
                      "metric": ref_metric, "timing": _timing(pipeline, reference)},
        "results": results,
        "task": task,
        "timing_method": PASS_TIMING_METHOD if timed_runs == 0 else TIMING_METHOD,
        "processed": len(processed),
        "failed": [f.to_json() for f in failures],
        "calibration": calibration.describe() if calibration is not None else None,
    }


def _shard_result(pipeline: StagedPipeline, shard: int, reference: Loaded, entries: list) -> dict:
    """What a shard's worker sends back: its part of the pass, how its sessions loaded, its account."""
    from harness.shards import part_of

    loads = [reference, *(loaded for _, loaded in entries)]
    return {"part": part_of(pipeline, [loaded.config for loaded in loads if loaded.status == "ok"]), "loaded": loads,
            "account": {"shard": shard, "chunks": len(pipeline.chunk_starts())}}


def _run_pass(pipeline: StagedPipeline, ref_target: Target, ref_options: dict, ref_request, targets: list[Target],
              calibration, artifact, recorded, isolated: dict, progress, working: Callable,
              timed_runs: int | None = None):
    """Loads the reference and the candidates, and runs the pass (the pipeline's shard of it, if it has one):
    (the reference's Loaded, the candidates' (identity, Loaded), their labels)."""
    from harness.compare.cells import REFERENCE_WORK
    from harness.pipeline import Request

    working(REFERENCE_WORK)
    reference = load_session(pipeline, ref_target, ref_request.config, **ref_options)
    if reference.status != "ok":
        raise RunFailed(f"the reference {ref_target.label} cannot run: {reference.reason}")
    entries, labels = _candidates(pipeline, targets, calibration, artifact, recorded, isolated, working)
    owners = {ref_request.key: REFERENCE_WORK}
    requests = []
    for (_, loaded), target_label in zip(entries, labels):
        if loaded.status == "ok":
            requests.append(Request(ref_request.profile, loaded.config))
            owners[requests[-1].key] = target_label
    pipeline.prepare([ref_request], owners, output_pairs=[(request, ref_request) for request in requests],
                     progress=progress, first=(ref_request.key,))
    for request in [ref_request, *requests]:  # each alone, after the pass: its own speed (TIMING_METHOD)
        if request.key not in pipeline.broken:  # without a warm-up (timed_runs 0) it keeps the pass's times
            working(owners[request.key])
            times = pipeline.models.batch_ms.get(request.config, [])
            pipeline.models.batch_ms[request.config] = pipeline.models.time_alone(
                request.config, timed_runs or min(TIMED_RUNS, max(3, len(times))))
    working(None)
    return reference, entries, labels


def _candidates(pipeline: StagedPipeline, targets: list[Target], calibration, artifact, recorded, isolated: dict,
                working: Callable, loads: list[Loaded] | None = None) -> tuple[list[tuple[dict, Loaded]], list[str]]:
    """(identity, loaded session) of each candidate, and the label its work is reported as (the cell an
    executor blames for a crash); an isolated target is a failed entry, never loaded again. `loads`: how
    the candidates loaded in a shard's worker (a merge loads nothing)."""
    from harness.pipeline import ModelConfig

    entries = []
    for k, t in enumerate(targets):
        config = ModelConfig.at(t.placement)
        identity = {"backend": t.backend.name, "device": t.device, "precision": t.precision}
        if t.label in isolated:
            entries.append((identity, Loaded(config, "failed", isolated[t.label])))
        elif loads is not None:
            entries.append((identity, loads[k]))
        else:
            working(t.label)
            entries.append((identity, load_session(pipeline, t, config, calibration=calibration, artifact=artifact)))
            working(None)
    labels = [t.label for t in targets]
    if recorded is not None:
        entries.append(_recorded_entry(pipeline, recorded, load=loads is None))
        labels.append("recorded")
    return entries, labels


def _recorded_entry(pipeline: StagedPipeline, recorded, load: bool = True) -> tuple[dict, Loaded]:
    """Outputs recorded on a target (`harness export-inputs`), looked up by sample id: one more candidate."""
    from harness.pipeline import ModelConfig
    from harness.recorded import RecordedSession

    exported = pipeline.exported
    config = ModelConfig("recorded", "target", "unknown", options=(("source", str(recorded)),))
    if load:
        pipeline.models.sessions[config] = RecordedSession(recorded, [exported.input_name], exported.output_names)
    return ({"backend": "recorded", "device": "target", "precision": "unknown", "source": str(recorded)},
            Loaded(config, timed=False))


TIMED_RUNS = 10
TIMING_METHOD = (f"each configuration alone after the accuracy pass (where they take turns batch by batch): its "
                 f"first batch, one warm-up run, then as many timed runs as the pass had batches, at least 3 and "
                 f"at most {TIMED_RUNS}; batch_ms is their median. Sessions run without busy-waiting threads, as "
                 "in the pass; with --workers N, the workers' timing runs overlap and share the cores")


PASS_TIMING_METHOD = ("the accuracy pass's own batch times, where configurations take turns batch by batch "
                      "(--timed-runs 0: no configuration was run alone or warmed up), so each is slowed by the others and "
                      "the first batch holds lazy initialisation")


def _timing(pipeline: StagedPipeline, loaded: Loaded) -> dict | None:
    return timing_summary(loaded.load_s, pipeline.models.batch_ms.get(loaded.config, [])) if loaded.timed else None


def _result_row(pipeline: StagedPipeline, identity: dict, loaded: Loaded, ref_request, processed: list,
                task: str, ref_metric: dict, classes, facts: dict | None = None) -> dict:
    """One target's row of the compare report (DESIGN.md's keys). facts: what each session said it executed
    (model config -> (precision_effective, execution)), from the shards' workers; None: asked here."""
    from harness.pipeline import Request
    from harness.result import ResultRow

    measures = {"outputs": None, "flipped": [], "timing": None}
    request = Request(ref_request.profile, loaded.config)
    if loaded.status == "ok" and request.key in pipeline.broken:
        return ResultRow.failed(identity, pipeline.broken[request.key], **measures).to_json()
    if loaded.status != "ok":
        return ResultRow(identity, loaded.status, loaded.reason, measures=measures).to_json()
    reference = pipeline.evaluated[ref_request.key].predictions
    predictions = pipeline.evaluated[request.key].predictions
    model_task = pipeline.task
    agree = model_task.agreement(reference, predictions)
    metric = task_metric(task, processed, predictions, reference, len(classes))
    outputs = pipeline.output_stats.get((request.key, ref_request.key), OutputStats()).to_json()
    outputs.update({"top1_agreement": float(agree.mean()) if len(agree) else None, "flips": int((~agree).sum())})
    outputs.update(model_task.agreement_metrics(reference, predictions))
    divergence = model_task.divergence(reference, predictions)
    if divergence is not None:
        outputs["kl"] = divergence
    if facts is None:
        session = pipeline.session(loaded.config)
        precision_effective, execution = session.precision_effective, session.execution()
    else:
        precision_effective, execution = facts[loaded.config]
    return ResultRow(identity, "ok", "", metric, _delta(metric, ref_metric),
                     precision_effective=precision_effective, execution=execution,
                     measures={"outputs": outputs, "timing": _timing(pipeline, loaded),
                               "flipped": model_task.readable_flips(flipped_samples(
                                   model_task, processed, reference, predictions, agree, classes),
                                   pipeline.exported.spec)}).to_json()
