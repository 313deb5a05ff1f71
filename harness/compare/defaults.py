"""The default set of `harness compare`: every installed backend, less those whose speed cannot be known
before they run (Backend.speed_unknown: untuned TVM) and that would keep a user waiting unasked."""
from __future__ import annotations

import time
from typing import Callable

from harness.compare import Target
from harness.data import Dataset
from harness.export import ExportedModel

DEFAULT_BUDGET_S = 120.0  # what a backend nobody named may take of a compare, on its estimate


def affordable_defaults(targets: list[Target], exported: ExportedModel, dataset: Dataset, threads: int | None,
                        on_work: Callable | None = None) -> tuple[list[Target], list[dict]]:
    """The default set (every installed backend) without the backends whose speed cannot be known in advance
    (Backend.speed_unknown: untuned TVM) that would take longer than HARNESS_DEFAULT_BUDGET_S seconds
    (default DEFAULT_BUDGET_S) on these samples: each is loaded (its compile is cached for a later run) and
    times one sample after a warm-up one. Returns (the targets kept, a row per target left out saying why:
    nobody asked to wait for it; naming it in --backends runs it)."""
    import os

    from harness.run import iter_batches

    budget = float(os.environ.get("HARNESS_DEFAULT_BUDGET_S", DEFAULT_BUDGET_S))
    working = on_work or (lambda owner: None)
    samples = len(dataset.samples)
    kept, left_out, estimates, first = [], [], {}, None
    for target in targets:
        backend = target.backend
        if not backend.speed_unknown or not backend.available()[0]:
            kept.append(target)
            continue
        key = (backend.name, target.device, target.precision)
        if key not in estimates:
            first = first if first is not None else next(iter_batches(dataset, exported.spec.profile, 1, [],
                                                                      spec=exported.spec), None)
            if first is None:  # nothing readable: the compare says so in its one line
                return targets, []
            working(target.label)
            estimates[key] = _one_sample_seconds(target, exported, first, threads)
            working(None)
        if estimates[key] is None or estimates[key] * samples <= budget:
            kept.append(target)
        else:
            left_out.append({"backend": backend.name, "device": target.device, "precision": target.precision,
                             "reason": f"left out of the default set: one sample took {estimates[key]:.3g} s here, "
                                       f"so the {samples} samples would take {_duration(estimates[key] * samples)} "
                                       f"(more than HARNESS_DEFAULT_BUDGET_S = {budget:g} s); name it in "
                                       "--backends to run it"})
    return kept, left_out


def _duration(seconds: float) -> str:
    return f"~{seconds:.0f} s" if seconds < 120 else f"~{seconds / 60:.0f} min" if seconds < 7200 \
        else f"~{seconds / 3600:.1f} h"


def _one_sample_seconds(target: Target, exported: ExportedModel, sample, threads: int | None) -> float | None:
    """Seconds one sample takes on the target (after a warm-up sample); None when it cannot load here (its
    row says why, from the real load)."""
    try:
        session = target.backend.load(exported, target.device, target.precision, threads)
    except Exception:  # noqa: BLE001 - the compare's own load of it reports the reason
        return None
    feeds = sample.named(session.input_names)  # a batch of one (harness.run.Batch)
    session.run(feeds)
    started = time.perf_counter()
    session.run(feeds)
    return time.perf_counter() - started
