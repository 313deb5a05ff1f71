"""Layer-wise drift: every tensor of the exported graph on a candidate backend against the tensor reference
(ONNX Runtime FP32, graph optimisations off), the first tensor that diverges, and for every op the error
it introduces (run alone on the candidate with the reference's inputs) apart from the error it inherits.

Statistics stream: each batch's reference and candidate tensors are reduced to running sums and dropped,
so memory does not grow with the number of samples. The isolated ops are all cut from the graph the
candidate really compiles and put side by side in one model (harness.onnx_graph.subgraph_model), so a
backend compiles them once, not once per op.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.compare.outputs import OutputStats, Thresholds

REFERENCE_NOTE = "ONNX Runtime FP32 with graph optimisations disabled, on the exported graph"
DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes: fixed, not a share of the machine, so every machine splits alike
# the tapped tensors held at once: a run's reference taps, its candidate taps or ops-alone outputs (one set is
# dropped before the other is made), and the repro's probe of the first run
TAPPED_COPIES = 3


@dataclass
class TensorRow:
    tensor: str
    op: str
    op_type: str
    module: str | None
    index: int
    total: OutputStats | None = None              # candidate (full run) vs reference
    introduced: OutputStats | None = None         # the op alone on the candidate, reference inputs
    unit_inputs: tuple[str, ...] = ()
    unobservable: str | None = None
    unit_reason: str | None = None


@dataclass
class DriftRun:
    """What one pass over the data leaves: a row per tensor, the tap check, the first batch kept for repro."""

    rows: list[TensorRow]
    tap_method: str | None                             # None: a shard that met no readable sample
    taps_perturb: dict
    perturb_fallback: dict | None
    probe_feeds: dict = field(default_factory=dict)    # reference values of the first batch (capped)
    samples: int = 0
    unit_samples: int = 0
    deployed: dict = field(default_factory=dict)       # reference tensor -> the candidate graph's name for it
    torch_check: OutputStats | None = None             # torch vs the tensor reference at the model outputs
    tapped_run: dict = field(default_factory=dict)     # samples per tapped run, and the budget that set it

    @staticmethod
    def merged(runs: list[DriftRun]) -> DriftRun:
        """The runs of data-parallel shards (harness.shards), in shard order, as the one pass they split:
        the statistics merge exactly (sums, counts, maxima), the tap check and the probe are the first
        batch's, which every shard checked taps on."""
        from harness.errors import RunFailed

        planned = [run for run in runs if run.tap_method is not None]
        if len({(run.tap_method, run.taps_perturb["ok"]) for run in planned}) != 1:
            raise RunFailed("the shards' workers disagree on the tap check of the first batch ("
                            + ", ".join(f"{run.tap_method}: {run.taps_perturb}" for run in planned)
                            + "): the candidate does not compute the same in every process")
        first = next(run for run in planned if run.probe_feeds)
        whole = DriftRun(runs[0].rows, first.tap_method, first.taps_perturb, first.perturb_fallback,
                         first.probe_feeds, deployed=first.deployed, torch_check=runs[0].torch_check,
                         tapped_run=first.tapped_run)
        for run in runs:
            whole.samples += run.samples
            whole.unit_samples += run.unit_samples
            if run is runs[0]:
                continue
            for row, other in zip(whole.rows, run.rows):
                row.total = _merged(row.total, other.total)
                row.introduced = _merged(row.introduced, other.introduced)
            whole.torch_check = _merged(whole.torch_check, run.torch_check)
        return whole


def _merged(stats: OutputStats | None, other: OutputStats | None) -> OutputStats | None:
    if stats is None or other is None:
        return stats or other
    stats.merge(other)
    return stats


def _units_session(backend, candidate, exported, rows: list[TensorRow], reference_names: set[str], aliases,
                   threads):
    """The candidate's isolated ops, one model, loaded on the candidate backend at its load precision. Each
    op's unit reads the reference tensors it needs and ends at the tensor's deployed value (its DQ output
    in a QDQ graph), so an op's own quantization is inside its unit."""
    import onnx

    from harness.cache import cached_folder, key_of, tool_versions
    from harness.export import file_sha256, graph_model
    from harness.onnx_graph import cut, float_tensors, load, subgraph_model

    proto = load(candidate.graph)
    deployed = {t.name for t in float_tensors(proto)}
    graph_inputs = {i.name for i in proto.graph.input}
    stops = reference_names | graph_inputs
    units = []
    for row in rows:
        if row.tensor not in deployed:
            row.unit_reason = "not a tensor of the deployed graph (fused or renamed by its conversion): cannot be run alone"
            continue
        _, reads = cut(proto, [aliases.get(row.tensor, row.tensor)], stops - {row.tensor})
        row.unit_inputs = tuple(reads)
        units.append(row)

    def build(staging: Path) -> None:
        model, _, _ = subgraph_model(proto, [(aliases.get(row.tensor, row.tensor), stops - {row.tensor})
                                             for row in units], set())
        onnx.save(model, str(staging / "model.onnx"))

    folder, _ = cached_folder("drift-units", key_of(file_sha256(candidate.graph), "drift-units",
                                                    {"stops": sorted(stops), "aliases": aliases},
                                                    tool_versions("onnx")), build)
    path = folder / "model.onnx"
    session = backend.load(graph_model(path, exported.spec), candidate.device, candidate.load_precision, threads,
                           artifact=path, spinning=False, arena=False)  # its outputs are a tapped run's size
    return session, units


def run_drift(exported, backend, candidate, batches, thresholds: Thresholds, tap_method: str | None = None,
              unit_samples: int | None = None, threads: int | None = None, probe_samples: int = 16,
              progress=None, torch_session=None, on_work=None, first_batch=None,
              memory_budget: int | None = None) -> DriftRun:
    """One pass: reference taps, candidate taps, isolated ops, reduced to statistics per tensor. on_work:
    called with the candidate's label before its work, REFERENCE_WORK before the reference's (an executor
    blames a crash or a hang on it). The isolated ops run on the samples at dataset positions below
    `unit_samples`. first_batch: the data's first batch when `batches` (a data-parallel shard's) does not
    start with it: the taps are checked on it, as one pass checks them, and it adds nothing else.
    memory_budget: bytes the taps of one run may take, batches run in parts that fit (None: whole batches)."""
    from harness.backends import get_backend
    from harness.compare.cells import REFERENCE_WORK
    from harness.onnx_graph import dequantized_aliases, float_tensors, load

    working = on_work or (lambda owner: None)
    label = f"{candidate.backend}:{candidate.device}:{candidate.precision}"
    working(REFERENCE_WORK)
    # no busy-waiting ORT threads: the statistics run on the same cores between inferences
    reference = get_backend("onnxruntime").load(exported, "cpu", "fp32", threads, optimize=False, spinning=False)
    graph_tensors = float_tensors(load(exported.onnx_path))
    names = [t.name for t in graph_tensors]
    rows = [TensorRow(t.name, t.node, t.op_type, exported.module_of(t.name), t.index) for t in graph_tensors]
    by_name = {row.tensor: row for row in rows}
    aliases = dequantized_aliases(load(candidate.graph)) if candidate.graph is not None else {}
    deployed = {name: aliases.get(name, name) for name in names}   # reference name -> the candidate's tensor
    working(label)
    units_session, units = None, []
    if candidate.graph is not None:
        units_session, units = _units_session(backend, candidate, exported, rows, set(names), aliases, threads)
    else:
        for row in rows:
            row.unit_reason = f"{candidate.backend} runs no ONNX graph: ops cannot be run alone on it"
    taps = _TapCheck(candidate, names, deployed, tap_method, thresholds)
    input_names = exported.input_names
    working(REFERENCE_WORK)
    batches, tapped_run = _within_budget(batches, first_batch, reference, names, input_names, memory_budget)
    if first_batch is not None:
        first = first_batch.sliced(0, tapped_run["samples"] or len(first_batch.positions)).named(input_names)
        ref = reference.run(first, taps=names)
        working(label)
        taps.check(first, ref)
    seen, unit_seen, probe = 0, 0, {}
    torch_stats = OutputStats() if torch_session is not None else None
    for batch in batches:
        feeds = batch.named(input_names)
        working(REFERENCE_WORK)
        ref = reference.run(feeds, taps=names)
        working(label)
        cand = None
        if taps.perturb is None:  # the data's first batch: does tapping change what the candidate computes?
            cand = taps.check(feeds, ref)  # its tapped run is the check's own
            # copies: views would keep this whole run's tensors alive to the end
            probe = {name: np.array(value[:probe_samples]) for name, value in [*feeds.items(),
                                                                                 *((n, ref[n]) for n in names)]}
        if cand is None:
            cand = candidate.run(feeds, taps=[deployed[n] for n in taps.observable], tap_method=taps.method)
        for name in taps.observable:
            row = by_name[name]
            row.total = row.total or OutputStats()
            row.total.update({name: ref[name]}, {name: cand[deployed[name]]})
        cand = None  # dropped before the ops run alone: a run holds the reference's taps and one other set
        take = len(batch.positions) if unit_samples is None else sum(p < unit_samples for p in batch.positions)
        if units_session is not None and take:
            _run_units(units_session, units, {**feeds, **ref}, take, len(batch.positions), deployed)
            unit_seen += take
        if torch_stats is not None:
            working(REFERENCE_WORK)
            torch_stats.update({n: ref[n] for n in torch_session.output_names},
                               torch_session.run(feeds))
        ref = None  # before the next run, not after it
        seen += len(batch.positions)
        if progress:
            progress(len(batch.positions))
    for name, reason in taps.why.items():
        by_name[name].unobservable = reason
    return DriftRun(rows, taps.method if taps.perturb else None, taps.perturb or {"max_abs": None, "ok": None},
                    taps.fallback, probe, seen, unit_seen, deployed, torch_stats, tapped_run)


def _run_units(units_session, units: list[TensorRow], reference: dict, take: int, batch: int,
               deployed: dict) -> None:
    """The ops alone on the first `take` of the batch's `batch` samples, fed the reference's values; each op's
    introduced error."""
    # every unit input is float32, cast in the unit to the deployed type (onnx_graph.subgraph_model): token ids
    # too, exactly below 2**24
    feeds = {name: np.ascontiguousarray(np.asarray(_first(reference[name.removeprefix("ref/")], take, batch),
                                                   np.float32))
             for name in units_session.input_names}
    outputs = units_session.run(feeds)
    for k, row in enumerate(units):
        row.introduced = row.introduced or OutputStats()
        row.introduced.update({row.tensor: _first(np.asarray(reference[row.tensor]), take, batch)},
                              {row.tensor: outputs[f"u{k}/{deployed[row.tensor]}"]})


def _first(value, take: int, batch: int):
    """The first `take` samples' part of a tensor of a `batch`-sample run. A transformer's attention works on
    [batch x heads, ...] tensors (batch-major: the leading axis is a multiple of the batch), so the part is
    take x heads rows; a tensor without a batch axis (a shared mask, a position table) is fed whole."""
    rows = len(value) if np.ndim(value) else 0
    if take == batch or not rows or rows % batch:
        return value
    return value[:take * (rows // batch)]


def _within_budget(batches, first_batch, reference, names, input_names, budget: int | None):
    """(the batches, split into runs of at most as many samples as the budget holds; {"samples", "bytes per
    sample", "budget"}). A sample's tapped bytes are measured on one sample of the data's first batch, so
    every data-parallel shard splits alike (and checks taps on the same samples)."""
    import itertools

    batches = iter(batches)
    head = first_batch
    if head is None:
        head = next(batches, None)
        batches = itertools.chain([head] if head is not None else [], batches)
    if budget is None or head is None:
        return batches, {"samples": None, "bytes_per_sample": None, "budget_bytes": budget}
    one = reference.run(head.sliced(0, 1).named(input_names), taps=names)
    per_sample = TAPPED_COPIES * sum(np.asarray(value).nbytes for value in one.values())
    size = max(1, budget // per_sample)

    def split():
        for batch in batches:
            for start in range(0, len(batch.positions), size):
                stop = start + size
                yield batch.sliced(start, stop)
    return split(), {"samples": int(size), "bytes_per_sample": int(per_sample), "budget_bytes": int(budget)}


class _TapCheck:
    """The tap method, and what it shows, chosen on the data's first batch: the method asked for, else the
    backend's first, falling back to kernel-boundary taps when tapping changes the candidate's outputs."""

    def __init__(self, candidate, names, deployed, asked: str | None, thresholds: Thresholds):
        self.candidate, self.names, self.deployed, self.asked, self.thresholds = \
            candidate, names, deployed, asked, thresholds
        self.method = candidate._tap_method(asked)
        self.observable, self.why = _tappable(candidate, names, deployed, self.method)
        self.perturb, self.fallback = None, None

    def check(self, feeds: dict, reference: dict) -> dict:
        """Checks the taps on this batch; returns the candidate's tapped outputs of it."""
        candidate = self.candidate
        self.perturb, tapped = _perturbation(candidate, feeds, [self.deployed[n] for n in self.observable],
                                             self.method, reference, self.thresholds)
        if (not self.perturb["ok"] and self.asked is None and self.method != "kernel-boundary"
                and "kernel-boundary" in candidate.tap_methods):  # an explicitly chosen method is kept
            self.fallback = {"method": self.method, **self.perturb}
            self.method = "kernel-boundary"
            self.observable, self.why = _tappable(candidate, self.names, self.deployed, self.method)
            self.perturb, tapped = _perturbation(candidate, feeds, [self.deployed[n] for n in self.observable],
                                                 self.method, reference, self.thresholds)
        if not self.perturb["ok"] and self.asked is None and len(self.observable) > 1:
            tapped = self._without_perturbing_taps(feeds, reference, tapped)
        return tapped

    def _without_perturbing_taps(self, feeds: dict, reference: dict, tapped: dict) -> dict:
        """Leaves unobserved the taps that change what the candidate computes (OpenVINO: a Conv's output that
        the next Conv adds in place, once tapped, is rounded before the sum), found by halving the tap set:
        a half whose taps leave the outputs as they were is kept whole. Returns the remaining taps' run."""
        plain = self.candidate.run(feeds)

        def check(names):
            return _perturbation(self.candidate, feeds, [self.deployed[n] for n in names], self.method, reference,
                                 self.thresholds, plain)

        def perturbing(names, known=None) -> dict:
            found = known or check(names)[0]
            if found["ok"]:
                return {}
            if len(names) == 1:
                return {names[0]: found["max_abs"]}
            half = len(names) // 2
            return {**perturbing(names[:half]), **perturbing(names[half:])}

        moved = perturbing(self.observable, self.perturb)
        if not moved or len(moved) == len(self.observable):
            return tapped
        for name, change in moved.items():
            self.why[name] = (f"tapping it changes what {self.candidate.backend} computes (the outputs move by "
                              f"{change:.3g} when it alone is tapped): left unobserved")
        self.observable = [name for name in self.observable if name not in moved]
        self.perturb, tapped = check(self.observable)
        return tapped


def _tappable(candidate, names, deployed, method):
    """Which reference tensors the candidate shows (through their deployed names), and why not the rest."""
    shown, why = candidate.tappable([deployed[n] for n in names], method)
    shown = set(shown)
    return ([n for n in names if deployed[n] in shown],
            {n: why[deployed[n]] for n in names if deployed[n] not in shown})


def _perturbation(candidate, feeds, observable, method, reference, thresholds: Thresholds,
                  plain: dict | None = None) -> tuple[dict, dict]:
    """(the check, the tapped run's outputs, which the caller keeps for this batch). Max abs change of the candidate's final outputs when tapped vs untapped. It is negligible when it is
    at most 1 % of the larger of the candidate's own error there and the error the divergence rule
    tolerates (atol + rtol * max|output|, or max|output| at the SNR floor): then tapping cannot move a
    verdict."""
    plain = plain if plain is not None else candidate.run(feeds)
    tapped = candidate.run(feeds, taps=observable, tap_method=method)
    names = [n for n in candidate.output_names if n in reference]
    change = max(float(np.max(np.abs(np.asarray(plain[n], np.float64) - np.asarray(tapped[n], np.float64))))
                 for n in candidate.output_names)
    error = max(float(np.max(np.abs(np.asarray(plain[n], np.float64) - np.asarray(reference[n], np.float64))))
                for n in names)
    scale = max(float(np.max(np.abs(np.asarray(reference[n], np.float64)))) for n in names)
    if thresholds.atol is not None or thresholds.rtol is not None:
        tolerated = (thresholds.atol or 0.0) + (thresholds.rtol or 0.0) * scale
    else:
        tolerated = scale * 10 ** (-thresholds.snr_floor / 20)
    return ({"max_abs": change, "candidate_error_max_abs": error, "tolerated_max_abs": tolerated,
             "ok": change == 0.0 or change <= 0.01 * max(error, tolerated)}, tapped)


def first_divergence(rows: list[TensorRow], thresholds: Thresholds) -> TensorRow | None:
    return next((row for row in rows if row.total is not None and thresholds.diverged(row.total)), None)
