"""Layer-wise drift: every tensor of the exported graph on a candidate backend against the tensor reference
(ONNX Runtime FP32, graph optimisations off), the first tensor that diverges, and for every op the error
it introduces (run alone on the candidate with the reference's inputs) apart from the error it inherits.

Statistics stream: each batch's reference and candidate tensors are reduced to running sums and dropped,
so memory does not grow with the number of samples. The isolated ops are all cut from the graph the
candidate really compiles and put side by side in one model (harness.onnx_graph.subgraph_model), so a
backend compiles them once, not once per op.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.compare.outputs import OutputStats, Thresholds

REFERENCE_NOTE = "ONNX Runtime FP32 with graph optimisations disabled, on the exported graph"


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
    tap_method: str
    taps_perturb: dict
    perturb_fallback: dict | None
    probe_feeds: dict = field(default_factory=dict)    # reference values of the first batch (capped)
    samples: int = 0
    unit_samples: int = 0
    deployed: dict = field(default_factory=dict)       # reference tensor -> the candidate graph's name for it
    torch_check: dict | None = None                    # torch vs the tensor reference at the model outputs


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
                           artifact=path, spinning=False)
    return session, units


def run_drift(exported, backend, candidate, batches, thresholds: Thresholds, tap_method: str | None = None,
              unit_samples: int | None = None, threads: int | None = None, probe_samples: int = 16,
              progress=None, torch_session=None, on_work=None) -> DriftRun:
    """One pass: reference taps, candidate taps, isolated ops, reduced to statistics per tensor. on_work:
    called with the candidate's label before its work, REFERENCE_WORK before the reference's (an executor
    blames a crash or a hang on it)."""
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
    method = candidate._tap_method(tap_method)
    aliases = dequantized_aliases(load(candidate.graph)) if candidate.graph is not None else {}
    deployed = {name: aliases.get(name, name) for name in names}   # reference name -> the candidate's tensor
    working(label)
    observable, why = _tappable(candidate, names, deployed, method)
    units_session, units = None, []
    if candidate.graph is not None:
        units_session, units = _units_session(backend, candidate, exported, rows, set(names), aliases, threads)
    else:
        for row in rows:
            row.unit_reason = f"{candidate.backend} runs no ONNX graph: ops cannot be run alone on it"
    perturb, fallback, seen, unit_seen, probe = None, None, 0, 0, {}
    torch_stats = OutputStats() if torch_session is not None else None
    input_name = exported.input_name
    for batch in batches:
        feeds = {input_name: batch.tensor}
        working(REFERENCE_WORK)
        ref = reference.run(feeds, taps=names)
        working(label)
        cand = None
        if perturb is None:  # does tapping change what the candidate computes? checked on the first batch
            perturb, cand = _perturbation(candidate, feeds, [deployed[n] for n in observable], method, ref,
                                          thresholds)
            if (not perturb["ok"] and tap_method is None and method != "kernel-boundary"
                    and "kernel-boundary" in candidate.tap_methods):  # an explicitly chosen method is kept
                fallback = {"method": method, **perturb}
                method = "kernel-boundary"
                observable, why = _tappable(candidate, names, deployed, method)
                perturb, cand = _perturbation(candidate, feeds, [deployed[n] for n in observable], method, ref,
                                              thresholds)
            probe = {input_name: batch.tensor[:probe_samples],
                     **{name: np.asarray(ref[name])[:probe_samples] for name in names}}
        if cand is None:  # the first batch's tapped run is the perturbation check's own
            cand = candidate.run(feeds, taps=[deployed[n] for n in observable], tap_method=method)
        for name in observable:
            row = by_name[name]
            row.total = row.total or OutputStats()
            row.total.update({name: ref[name]}, {name: cand[deployed[name]]})
        if units_session is not None and (unit_samples is None or unit_seen < unit_samples):
            take = len(batch.tensor) if unit_samples is None else min(len(batch.tensor), unit_samples - unit_seen)
            values = {input_name: batch.tensor, **ref}
            unit_feeds = {name: np.ascontiguousarray(np.asarray(values[name.removeprefix("ref/")][:take], np.float32))
                          for name in units_session.input_names}
            outputs = units_session.run(unit_feeds)
            for k, row in enumerate(units):
                row.introduced = row.introduced or OutputStats()
                row.introduced.update({row.tensor: np.asarray(ref[row.tensor])[:take]},
                                      {row.tensor: outputs[f"u{k}/{deployed[row.tensor]}"]})
            unit_seen += take
        if torch_stats is not None:
            working(REFERENCE_WORK)
            torch_stats.update({n: ref[n] for n in torch_session.output_names},
                               torch_session.run(feeds))
        seen += len(batch.tensor)
        if progress:
            progress(len(batch.tensor))
    for name, reason in why.items():
        by_name[name].unobservable = reason
    return DriftRun(rows, method, perturb or {"max_abs": None, "ok": None}, fallback, probe, seen, unit_seen,
                    deployed, torch_stats.to_json() if torch_stats is not None else None)


def _tappable(candidate, names, deployed, method):
    """Which reference tensors the candidate shows (through their deployed names), and why not the rest."""
    shown, why = candidate.tappable([deployed[n] for n in names], method)
    shown = set(shown)
    return ([n for n in names if deployed[n] in shown],
            {n: why[deployed[n]] for n in names if deployed[n] not in shown})


def _perturbation(candidate, feeds, observable, method, reference, thresholds: Thresholds) -> tuple[dict, dict]:
    """(the check, the tapped run's outputs, which the caller keeps for this batch). Max abs change of the candidate's final outputs when tapped vs untapped. It is negligible when it is
    at most 1 % of the larger of the candidate's own error there and the error the divergence rule
    tolerates (atol + rtol * max|output|, or max|output| at the SNR floor): then tapping cannot move a
    verdict."""
    plain = candidate.run(feeds)
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


def inherited_error(row: TensorRow, by_name: dict[str, TensorRow]) -> float | None:
    """The relative L2 error the op receives: the worst of its inputs in the candidate's full run (0 for
    the model input, None when none of its inputs is observable)."""
    errors = []
    for name in row.unit_inputs:
        source = by_name.get(name)
        if source is None:
            errors.append(0.0)  # a graph input: identical on both sides
        elif source.total is not None:
            errors.append(source.total.rel_l2)
    return max(errors) if errors else None


def _finite(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def rows_json(rows: list[TensorRow], thresholds: Thresholds) -> list[dict]:
    by_name = {row.tensor: row for row in rows}
    out = []
    for row in rows:
        total, alone = row.total, row.introduced
        out.append({
            "tensor": row.tensor, "op": row.op, "op_type": row.op_type, "module": row.module,
            "observable": total is not None,
            "max_abs": total.max_abs if total else None,
            "mean_abs": total.sum_abs / max(total.count, 1) if total else None,
            "cosine": total.to_json()["cosine"] if total else None,
            "snr_db": total.snr_db if total else None, "rel_l2": total.rel_l2 if total else None,
            "exact": (total.err_sq == 0) if total else None,
            "diverged": thresholds.diverged(total) if total else None,
            "introduced": alone.rel_l2 if alone else None,
            "introduced_snr_db": alone.snr_db if alone else None,
            "introduced_max_abs": alone.max_abs if alone else None,
            "introduced_diverged": thresholds.diverged(alone) if alone else None,
            "inherited": inherited_error(row, by_name) if alone else None,
            "inputs": list(row.unit_inputs),
            "reason": row.unobservable if total is None else None,
            "unit_reason": row.unit_reason,
        })
    return out


def top_introducers(rows: list[dict], count: int = 10) -> list[dict]:
    ranked = [r for r in rows if r["introduced"] is not None]
    ranked.sort(key=lambda r: -r["introduced"])
    return [{"tensor": r["tensor"], "op": r["op"], "op_type": r["op_type"], "module": r["module"],
             "introduced": r["introduced"], "introduced_snr_db": r["introduced_snr_db"]} for r in ranked[:count]]


def drift_report(spec, backend_name: str, device: str, precision: str, data, batch_size: int = 32,
                 threads: int | None = None, thresholds: Thresholds = Thresholds(), tap_method: str | None = None,
                 unit_samples: int | None = None, calibration=None, repro: Path | None = None,
                 artifact: Path | None = None, progress: bool = True, on_work=None, failed: str | None = None) -> dict:
    """The `harness.drift/1` report of one candidate (backend, device, precision) on `data`. on_work: see
    run_drift; failed: why the candidate killed or outlasted an earlier worker (the report says so, with
    `status` failed, and measures nothing)."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.backends import get_backend
    from harness.compare.cells import REFERENCE_WORK
    from harness.export import export
    from harness.report.blocks import common_blocks
    from harness.run import iter_batches, require_readable

    working = on_work or (lambda owner: None)
    working(REFERENCE_WORK)  # the reference's decoder reads the first sample: bounded by --cell-timeout too
    require_readable(data, spec.profile)
    working(None)
    exported = export(spec)
    backend = get_backend(backend_name)
    reference_block = {"backend": "onnxruntime", "device": "cpu", "precision": "fp32", "graph_optimizations": False,
                       "note": REFERENCE_NOTE, "profile": spec.profile.to_json()}
    if failed is not None:
        return _failed_report(exported, data, reference_block, threads, backend.name, device, precision,
                              thresholds, failed)
    started = time.perf_counter()
    options = {"artifact": Path(artifact)} if artifact else {}
    working(f"{backend.name}:{device}:{precision}")
    candidate = backend.load(exported, device, precision, threads, calibration=calibration, spinning=False, **options)
    working(REFERENCE_WORK)
    torch_session = get_backend("torch").load(exported, "cpu", "fp32", threads) if spec.has_torch else None
    failures = []
    with Progress(TextColumn("drift {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True, disable=not progress) as bars:
        bar = bars.add_task(f"{backend.name}:{device} {precision}", total=len(data.samples))
        run = run_drift(exported, backend, candidate, iter_batches(data, spec.profile, batch_size, failures),
                        thresholds, tap_method, unit_samples, threads,
                        progress=lambda n: bars.advance(bar, n), torch_session=torch_session, on_work=on_work)
    working(f"{backend.name}:{device}:{precision}")  # the repro and the execution record run the candidate
    rows = rows_json(run.rows, thresholds)
    first = first_divergence(run.rows, thresholds)
    repro_meta = None
    if repro is not None and first is not None and candidate.graph is not None:
        from harness.compare.repro import write_repro

        repro_meta = write_repro(Path(repro), exported, candidate, run, first, thresholds, threads)
    introducers = top_introducers(rows)
    perturb = dict(run.taps_perturb)
    if run.perturb_fallback:
        perturb["fallback_from"] = run.perturb_fallback
    return {
        **common_blocks("harness.drift/1", exported, data, data.fingerprint(), run.samples,
                        [f.to_json() for f in failures], {**reference_block, "torch_check": run.torch_check},
                        threads, {}, [backend.name]),
        "status": "ok",
        "reason": "",
        "candidate": {"backend": candidate.backend, "device": candidate.device, "precision": candidate.precision,
                      "precision_effective": candidate.precision_effective,
                      "execution": candidate.execution(),
                      "graph": str(candidate.graph) if candidate.graph else None},
        "tap_method": run.tap_method,
        "taps_perturb": perturb,
        "thresholds": thresholds.to_json(),
        "first_divergence": None if first is None else {
            "tensor": first.tensor, "op": first.op, "op_type": first.op_type, "module": first.module,
            "snr_db": first.total.snr_db, "max_abs": first.total.max_abs},
        "top_introducers": introducers,
        "ops": rows,
        "unobservable": [{"tensor": r["tensor"], "reason": r["reason"]} for r in rows if not r["observable"]],
        "unit_samples": run.unit_samples,
        "repro": str(repro) if repro_meta else None,
        "repro_info": repro_meta,
        "timing": {"total_s": time.perf_counter() - started},
    }


def _failed_report(exported, data, reference: dict, threads, backend: str, device: str, precision: str,
                   thresholds: Thresholds, reason: str) -> dict:
    """The report of a candidate that crashed or hung its worker: what was asked, why nothing was measured."""
    from harness.report.blocks import common_blocks

    return {
        **common_blocks("harness.drift/1", exported, data, data.fingerprint(), 0, [], reference, threads, {}, [backend]),
        "status": "failed",
        "reason": reason,
        "candidate": {"backend": backend, "device": device, "precision": precision, "precision_effective": None,
                      "execution": None, "graph": None},
        "tap_method": None, "taps_perturb": {"max_abs": None, "ok": None}, "thresholds": thresholds.to_json(),
        "first_divergence": None, "top_introducers": [], "ops": [], "unobservable": [], "unit_samples": 0,
        "repro": None, "repro_info": None, "timing": {"total_s": 0.0},
    }
