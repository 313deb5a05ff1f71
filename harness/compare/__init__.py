"""`harness compare`: the reference (training profile on the training system) against candidates.

Every candidate sees the reference's pre-processed tensors and the reference's post-processing; only
the backend / device / precision differ. The report follows DESIGN.md's compare schema.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from harness.backends import Backend, get_backend, parse_target
from harness.compare.outputs import OutputStats, agreement, mean_kl
from harness.data import UNLABELED, Dataset, Sample, printable
from harness.errors import BackendUnavailable, RunFailed, UsageError
from harness.export import ExportedModel
from harness.placement import Placement
from harness.run import FailedSample, SessionRun, iter_batches, require_readable, run_sessions, timing_summary
from harness.tasks import Task, get_task

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


def load_run(target: Target, exported: ExportedModel, threads: int | None, **options) -> SessionRun:
    run = SessionRun(target.label, None)
    ok, reason = target.backend.available()
    if not ok:
        run.status, run.reason = "unavailable", reason
        return run
    started = time.perf_counter()
    try:
        run.session = target.backend.load(exported, target.device, target.precision, threads, **options)
    except BackendUnavailable as err:
        run.status, run.reason = "unavailable", str(err)
        return run
    except Exception as err:  # noqa: BLE001 - the backend's own message becomes the failed row's reason
        run.fail(err)
        return run
    run.load_s = time.perf_counter() - started
    return run


def task_metric(task: str, samples: list[Sample], predictions: list, reference: list | None,
                num_classes: int) -> dict:
    """The task's metric on the processed samples; for unlabelled data, agreement with the reference."""
    if task != UNLABELED:
        return get_task(task).metric(samples, predictions, num_classes)
    agree = agreement(reference, predictions)
    return {"top1_agreement": float(agree.mean()), "flip_rate": float(1 - agree.mean()),
            "kl": mean_kl(np.asarray(reference), np.asarray(predictions))}


def flipped_samples(task: Task, samples: list[Sample], reference: list, candidate: list, agree: np.ndarray,
                    classes: tuple[str, ...]) -> list[dict]:
    rows = []
    for k in np.where(~agree)[0][:MAX_FLIPPED]:
        sample = samples[k]
        rows.append({"sample": sample.id, "path": printable(sample.path),
                     **task.flip_record(sample, reference[k], candidate[k], classes)})
    return rows


def _delta(metric: dict, reference: dict) -> dict:
    return {k: metric[k] - reference[k] for k in metric if k in reference}


def compare(exported: ExportedModel, dataset: Dataset, targets: list[Target], batch_size: int = 32,
            threads: int | None = None, progress: Callable | None = None, calibration=None,
            artifact=None, recorded=None) -> dict:
    """Runs the reference and every target in one pass over the data; returns the report's core blocks.

    calibration: the shared CalibrationSet for INT8 targets; artifact: a deployed file (QDQ .onnx,
    OpenVINO .xml, TensorRT .engine) to run instead of one the harness builds; recorded: an .npz of
    outputs recorded on a target from `harness export-inputs`, compared as one more candidate.
    """
    spec = exported.spec
    task = UNLABELED if dataset.task == UNLABELED else spec.task
    if dataset.task not in (UNLABELED, spec.task):
        raise UsageError(f"{dataset.root}: a {dataset.task} dataset cannot evaluate the {spec.task} model {spec.name}")
    dataset = dataset.aligned_to(spec.labels)
    require_readable(dataset, spec.profile)
    ref_target, ref_options, ref_note = reference_target(exported)
    reference = load_run(ref_target, exported, threads, **ref_options)
    if reference.status != "ok":
        raise RunFailed(f"the reference {ref_target.label} cannot run: {reference.reason}")
    entries = [({"backend": t.backend.name, "device": t.device, "precision": t.precision},
                load_run(t, exported, threads, calibration=calibration, artifact=artifact)) for t in targets]
    if recorded is not None:
        from harness.recorded import RecordedSession

        session = RecordedSession(recorded, [exported.input_name], exported.output_names)
        entries.append(({"backend": "recorded", "device": "target", "precision": "unknown",
                         "source": str(recorded)}, SessionRun("recorded", session)))
    runs = [run for _, run in entries]
    stats = {id(run): OutputStats() for run in runs}
    for run in runs:
        run.observers.append(lambda batch, ref, out, s=stats[id(run)]: s.update(ref, out))
    failures: list[FailedSample] = []
    batches = iter_batches(dataset, spec.profile, batch_size, failures)
    processed = run_sessions(batches, spec.profile, spec.task, spec.head, runs, reference=reference,
                             progress=progress)
    if reference.status != "ok":
        raise RunFailed(f"the reference {ref_target.label} failed: {reference.reason}")
    num_classes = len(dataset.classes) or len(spec.labels)
    classes = dataset.classes or spec.labels
    ref_metric = task_metric(task, processed, reference.predictions, reference.predictions, num_classes)
    results, model_task = [], get_task(spec.task)
    for identity, run in entries:
        row = {**identity, "status": run.status, "reason": run.reason, "precision_effective": None, "metric": None,
               "delta": None, "outputs": None, "flipped": [], "timing": None, "execution": None}
        if run.status == "ok":
            agree = model_task.agreement(reference.predictions, run.predictions)
            metric = task_metric(task, processed, run.predictions, reference.predictions, num_classes)
            outputs = stats[id(run)].to_json()
            outputs.update({"top1_agreement": float(agree.mean()) if len(agree) else None,
                            "flips": int((~agree).sum())})
            divergence = model_task.divergence(reference.predictions, run.predictions)
            if divergence is not None:
                outputs["kl"] = divergence
            timing = None if run.session.uses_sample_ids else timing_summary(run)  # recorded: not timed here
            row.update(precision_effective=run.session.precision_effective, execution=run.session.execution(),
                       metric=metric,
                       delta=_delta(metric, ref_metric), outputs=outputs, timing=timing,
                       flipped=flipped_samples(model_task, processed, reference.predictions, run.predictions, agree,
                                               classes))
        results.append(row)
    return {
        "reference": {**reference_block(ref_target, ref_options, ref_note), "profile": spec.profile.to_json(),
                      "metric": ref_metric, "timing": timing_summary(reference)},
        "results": results,
        "task": task,
        "processed": len(processed),
        "failed": [f.to_json() for f in failures],
        "calibration": calibration.describe() if calibration is not None else None,
    }
