"""A run: a dataset pushed through pre-processing -> model on a backend -> post-processing.

Several sessions can share one pass over the data (`run_sessions`): each batch is pre-processed once
and the very same tensor is fed to every session, which is what "matched pre-processing" means and why
a comparison never re-decodes an image per backend. Failures stay local: a sample that cannot be read
is counted and skipped, a session that raises is marked failed with its error, and the others go on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from harness.data import Dataset, Sample, printable
from harness.errors import InputError, SampleError
from harness.preprocess import Geometry, normalize
from harness.profile import Profile
from harness.stages import Preprocessor, read_failure
from harness.tasks import get_task


@dataclass
class Batch:
    samples: list[Sample]
    tensor: np.ndarray                 # float32[N, 3, S, S]
    geometries: list[Geometry]


@dataclass
class FailedSample:
    sample: str
    path: str
    reason: str

    def to_json(self) -> dict:
        return {"sample": self.sample, "path": self.path, "reason": self.reason}


def require_readable(dataset: Dataset, profile: Profile) -> None:
    """One line and exit 2 when not one sample can be read and decoded by the reference's decoder, before
    any work: a run over nothing would report an empty or NaN metric (or "no divergence") as a result.
    Costs one decode when the first sample is fine."""
    from harness.preprocess import decode

    if not dataset.samples:
        raise InputError(f"{dataset.root}: the dataset holds no samples")
    first = None
    for sample in dataset.samples:
        try:
            decode(dataset.read(sample), profile.decoder)
            return
        except (OSError, SampleError) as err:
            first = first or f"{sample.id}: {read_failure(err)}"
    raise InputError(f"{dataset.root}: none of its {len(dataset.samples)} samples can be read with the "
                     f"{profile.decoder} decoder (first: {first})")


def iter_batches(dataset: Dataset, profile: Profile, batch_size: int,
                 failures: list[FailedSample]) -> Iterator[Batch]:
    """Pre-processed batches of `batch_size` readable samples, through the pre-processing stages every run
    uses (harness.stages); unreadable samples go to `failures` and are left out."""
    stages = Preprocessor(dataset)
    pending: list[tuple[Sample, np.ndarray, Geometry]] = []
    for sample in dataset.samples:
        found = stages.pixels(sample, profile)
        stages.drop()  # one sample at a time: nothing here is used twice
        if found is None:
            failures.append(FailedSample(sample.id, printable(sample.path), read_failure(stages.failures[sample.id][1])))
            continue
        pending.append((sample, *found))
        if len(pending) == batch_size:
            yield _collate(pending, profile)
            pending = []
    if pending:
        yield _collate(pending, profile)


def _collate(items, profile: Profile) -> Batch:
    tensor = normalize(np.stack([item[1] for item in items]), profile)
    return Batch([i[0] for i in items], tensor, [i[2] for i in items])


@dataclass
class SessionRun:
    """One session's share of a pass: its predictions and raw outputs per sample, its timings, its fate."""

    label: str
    session: object | None
    load_s: float = 0.0
    status: str = "ok"                 # ok | failed | unavailable
    reason: str = ""
    batch_ms: list[float] = field(default_factory=list)
    predictions: list = field(default_factory=list)
    observers: list[Callable] = field(default_factory=list)

    def fail(self, err: BaseException) -> None:
        self.status, self.reason = "failed", f"{type(err).__name__}: {err}".strip()
        self.session = None


def run_sessions(batches: Iterable[Batch], profile: Profile, task: str, head: dict, runs: list[SessionRun],
                 reference: SessionRun | None = None, progress: Callable | None = None,
                 warmup: bool = True) -> list[Sample]:
    """Feeds every batch to each live session; returns the samples processed, in order.

    `observers` of a run see (batch, reference outputs, its outputs) for each batch, then the batch is
    dropped: statistics stream, memory does not grow with the data beyond per-sample predictions.
    """
    processed: list[Sample] = []
    first = True
    for batch in batches:
        reference_outputs = None
        for run in ([reference] if reference else []) + runs:
            if run.session is None:
                continue
            session = run.session
            feeds = {session.input_names[0]: batch.tensor}
            infer = (lambda: session.run_ids([s.id for s in batch.samples])) if session.uses_sample_ids \
                else (lambda: session.run(feeds))
            try:
                if first and warmup:
                    infer()  # warm-up: lazy initialisation is not inference time
                started = time.perf_counter()
                outputs = infer()
                run.batch_ms.append((time.perf_counter() - started) * 1000)
                predictions = get_task(task).predictions(outputs, batch.geometries, profile, head)
                if run is reference:
                    reference_outputs = outputs
                for observe in run.observers:
                    observe(batch, reference_outputs, outputs)
            except Exception as err:  # noqa: BLE001 - a crashing backend becomes a failed row, not a dead sweep
                run.fail(err)
                continue
            run.predictions.extend(predictions)
        first = False
        processed.extend(batch.samples)
        if progress:
            progress(len(batch.samples))
    return processed


def timing_summary(run: SessionRun) -> dict:
    times = np.asarray(run.batch_ms, np.float64)
    return {"load_s": round(run.load_s, 4),
            "batch_ms": round(float(np.median(times)), 3) if len(times) else None,
            "batch_ms_p90": round(float(np.percentile(times, 90)), 3) if len(times) else None,
            "batches": int(len(times))}
