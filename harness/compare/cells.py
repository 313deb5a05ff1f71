"""`harness compare` and `harness drift` as jobs of harness.executor: their cells are the candidate backend
configurations.

The worker resolves the model, exports it (a cache hit after the first run), and runs the reference and
every candidate in one pass, as in one process; before each piece of a candidate's work (its load, its
batches, its row) it says which candidate the work is for. A candidate that kills its worker (a segfault,
an abort in native code) or runs past `--cell-timeout` becomes one `failed` row naming the signal or the
timeout, and the next worker runs the others without it. The driver, which never imports torch or a
backend package, turns the worker's progress into the progress bar. Drift has one candidate: when it
crashes or hangs, the next worker writes a drift report whose `status` is failed with that reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.model import ModelRequest

REFERENCE_WORK = "reference"


@dataclass(kw_only=True)
class CandidatesJob:
    """What a worker needs to run one model's candidates against its reference (names and paths: the worker
    resolves them again); compare's and drift's jobs add their own options."""

    model: ModelRequest
    precision: str
    dataset: Path | None = None
    limit: int | None = None
    batch_size: int = 32
    threads: int | None = None
    calibration: Path | None = None
    artifact: Path | None = None
    isolated: dict = field(default_factory=dict)   # candidate label -> why its worker died or was killed
    workers: int = 1                               # data-parallel workers (harness.shards)
    shard: int | None = None                       # this job's shard of them
    parts: list | None = None                      # the shards' results, for the job that merges them

    @property
    def cpus(self) -> int:
        return self.threads or 1

    @property
    def gpus(self) -> int:
        """What a Ray task asks for: one GPU when a candidate runs on one (the candidates share it)."""
        from harness.backends import parse_target

        return int(any(parse_target(text)[1] != "cpu" for text in self.devices_named() if text.strip()))

    def devices_named(self) -> list[str]:
        """The backend[:device] texts of the candidates."""
        return []

    def model_and_data(self):
        """(the model's spec, the data), resolved in the worker."""
        from harness.data import evaluation_data, load_dataset

        spec = self.model.resolve()
        return spec, evaluation_data(spec.task, load_dataset(self.dataset) if self.dataset else None, self.limit)

    def receive(self, message: tuple, store) -> None:
        """Nothing to keep: the rows are computed from the whole pass, at its end."""

    def isolate(self, cell: tuple, reason: str, store) -> dict:
        (label,) = cell
        self.isolated[label] = reason
        return {"target": label, "reason": reason}


@dataclass(kw_only=True)
class CompareJob(CandidatesJob):
    backends: str | None
    recorded: Path | None = None                   # --candidate-outputs
    timed_runs: int | None = None                  # --timed-runs

    def devices_named(self) -> list[str]:
        return (self.backends or "").split(",")

    def shards(self, count: int) -> list[CompareJob]:
        """Shard k runs the reference and every candidate on its run of whole batches (they share this job's
        isolated candidates)."""
        return [replace(self, workers=count, shard=k) for k in range(count)]

    def merging(self, shard_results: list, store) -> CompareJob:
        """The job that makes the report from the shards' parts (harness.shards), running nothing again."""
        return replace(self, shard=None, parts=shard_results)

    def work(self, send) -> dict:
        """The worker's side: the whole compare report (the driver only renders it)."""
        from harness.calibration import calibration_set
        from harness.compare import SCHEMA, compare, parse_targets
        from harness.compare.defaults import affordable_defaults
        from harness.data.benchmark import SEED as BENCHMARK_SEED
        from harness.export import export
        from harness.report.blocks import common_blocks

        spec, data = self.model_and_data()
        send(("samples", len(data.samples)))
        targets = [] if self.recorded is not None and not self.backends else parse_targets(self.backends,
                                                                                          self.precision)
        exported = export(spec)
        left_out = []
        if self.backends is None and self.workers == 1:  # shards cannot each decide on their own timing
            targets, left_out = affordable_defaults(targets, exported, data, self.threads, work_messages(send))
        calibration_data = None
        if any(t.precision == "int8" and t.label not in self.isolated for t in targets) and self.artifact is None:
            calibration_data = calibration_set(spec, self.calibration)
        core = compare(exported, data, targets, batch_size=self.batch_size, threads=self.threads,
                       progress=lambda n: send(("progress", n)), calibration=calibration_data,
                       artifact=self.artifact, recorded=self.recorded, on_work=work_messages(send),
                       isolated=self.isolated, shards=self.workers, shard=self.shard, parts=self.parts,
                       timed_runs=self.timed_runs)
        if self.shard is not None:
            return core  # this shard's part of the pass, for the worker that merges them
        return {
            **common_blocks(SCHEMA, exported, data, data.fingerprint(), core["processed"], core["failed"],
                            core["reference"], self.threads,
                            {"benchmark": BENCHMARK_SEED} if self.dataset is None else {},
                            {t.backend.name for t in targets} | {core["reference"]["backend"]},
                            model={"source": spec.source, "onnx": str(exported.onnx_path),
                                   "exporter": exported.exporter, "opset": exported.opset},
                            dataset={"path": str(data.root), "task": core["task"]}),
            "results": core["results"],
            "left_out": left_out,
            "timing_method": core["timing_method"],
            "calibration": core["calibration"],
            "artifact": str(self.artifact) if self.artifact else None,
        }


@dataclass(kw_only=True)
class DriftJob(CandidatesJob):
    backend: str
    thresholds: object = None                      # harness.compare.drift.Thresholds
    taps: str | None = None
    unit_samples: int | None = None
    repro: Path | None = None
    memory_budget: int | None = None               # bytes (harness.compare.drift.DEFAULT_MEMORY_BUDGET when None)

    def devices_named(self) -> list[str]:
        return [self.backend]

    def shards(self, count: int) -> list[DriftJob]:
        """Shard k runs the reference and the candidate on its run of whole batches (harness.shards)."""
        return [replace(self, workers=count, shard=k, repro=None) for k in range(count)]

    def merging(self, shard_results: list, store) -> DriftJob:
        """The job that makes the report (and the repro) from the shards' statistics."""
        return replace(self, shard=None, parts=shard_results)

    def work(self, send) -> dict:
        from harness.backends import parse_target
        from harness.calibration import calibration_set
        from harness.compare.drift_report import drift_report

        spec, data = self.model_and_data()
        send(("samples", len(data.samples)))
        target, device = parse_target(self.backend)
        failed = next(iter(self.isolated.values()), None)
        calibration = calibration_set(spec, self.calibration) \
            if self.precision == "int8" and not self.artifact and failed is None \
            and (self.parts is None or self.repro) else None  # a merge loads the candidate for a repro alone
        return drift_report(spec, target.name, device, self.precision, data, self.batch_size, self.threads,
                            self.thresholds, self.taps, self.unit_samples, calibration, self.repro, self.artifact,
                            progress=lambda n: send(("progress", n)), on_work=work_messages(send), failed=failed,
                            shards=self.workers, shard=self.shard, parts=self.parts, memory_budget=self.memory_budget)


def work_messages(send):
    """The owner of the work at hand (a cell's name, REFERENCE_WORK, or None between) as the executor's
    messages."""
    def on_work(owner: str | None) -> None:
        if owner == REFERENCE_WORK:
            send(("reference",))
        elif owner:
            send(("start", owner))
        else:
            send(("pause",))
    return on_work
