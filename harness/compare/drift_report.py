"""The `harness.drift/1` report: one drift pass (harness.compare.drift) over the data, or over each
data-parallel worker's shard of it, merged; a row per tensor with the error it has and the error its op
introduces apart from the error it inherits; the first divergence, the top introducers, and the repro."""
from __future__ import annotations

from pathlib import Path

from harness.compare.drift import (DEFAULT_MEMORY_BUDGET, REFERENCE_NOTE, DriftRun, TensorRow, first_divergence,
                                   run_drift)
from harness.compare.outputs import Thresholds


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
                 artifact: Path | None = None, progress=True, on_work=None, failed: str | None = None,
                 shards: int = 1, shard: int | None = None, parts: list | None = None,
                 memory_budget: int | None = None) -> dict:
    """The `harness.drift/1` report of one candidate (backend, device, precision) on `data`. progress: a
    bar on stderr (True), none (False), or called with each batch's sample count; on_work: see run_drift;
    failed: why the candidate killed or outlasted an earlier worker (the report says so, with `status`
    failed, and measures nothing). Data-parallel workers (harness.shards): with `shard` (of `shards`), the
    pass over that shard's batches is made and its part returned; with `parts`, the shards' parts are
    merged and the report made from them (the candidate is loaded again only to write a repro). memory_budget:
    bytes the tapped tensors of one run may take (None: DEFAULT_MEMORY_BUDGET)."""
    import time

    from harness.backends import get_backend
    from harness.compare.cells import REFERENCE_WORK
    from harness.export import export
    from harness.report.blocks import common_blocks
    from harness.run import require_readable

    working = on_work or (lambda owner: None)
    if parts is None:
        working(REFERENCE_WORK)  # the reference's decoder reads the first sample: bounded by --cell-timeout too
        require_readable(data, spec.profile)
        working(None)
    exported = export(spec)
    backend = get_backend(backend_name)
    reference_block = {"backend": "onnxruntime", "device": "cpu", "precision": "fp32", "graph_optimizations": False,
                       "note": REFERENCE_NOTE, "profile": spec.profile.to_json()}
    if failed is not None:
        if shard is not None:  # the candidate killed or outlasted a worker: no shard measures it
            return {"account": {"shard": shard, "chunks": 0}}
        return _failed_report(exported, data, reference_block, threads, backend.name, device, precision,
                              thresholds, failed)
    started = time.perf_counter()
    label = f"{backend.name}:{device}:{precision}"

    def load_candidate():
        working(label)
        return backend.load(exported, device, precision, threads, calibration=calibration, spinning=False,
                            **({"artifact": Path(artifact)} if artifact else {}))

    candidate = None
    if parts is None:
        candidate = load_candidate()
        part = _drift_pass(exported, backend, candidate, spec, data, batch_size, threads, thresholds, tap_method,
                           unit_samples, progress, on_work, shards, shard, memory_budget or DEFAULT_MEMORY_BUDGET)
        if shard is not None:
            return part
    else:
        part = _merged_part(parts)
    run = part["run"]
    rows = rows_json(run.rows, thresholds)
    first = first_divergence(run.rows, thresholds)
    repro_meta = None
    if repro is not None and first is not None and part["candidate"]["graph"] is not None:
        from harness.compare.repro import write_repro

        candidate = candidate or load_candidate()  # the repro runs the candidate (cached: no conversion again)
        working(label)
        repro_meta = write_repro(Path(repro), exported, candidate, run, first, thresholds, threads)
    torch_check = run.torch_check.to_json() if run.torch_check is not None else None
    return {
        **common_blocks("harness.drift/1", exported, data, data.fingerprint(), run.samples,
                        [f.to_json() for f in part["failures"]], {**reference_block, "torch_check": torch_check},
                        threads, {}, [backend.name]),
        "status": "ok",
        "reason": "",
        "candidate": part["candidate"],
        **_measured(run, rows, first, thresholds),
        "repro": str(repro) if repro_meta else None,
        "repro_info": repro_meta,
        "timing": {"total_s": time.perf_counter() - started},
    }


def _merged_part(parts: list[dict]) -> dict:
    """The shards' parts (harness.shards), in shard order, as the part of one pass over all the data."""
    return {"run": DriftRun.merged([found["run"] for found in parts]),
            "failures": [failure for found in parts for failure in found["failures"]],
            "candidate": parts[0]["candidate"]}


def _measured(run: DriftRun, rows: list[dict], first: TensorRow | None, thresholds: Thresholds) -> dict:
    """The report's blocks of what the pass measured."""
    perturb = dict(run.taps_perturb)
    if run.perturb_fallback:
        perturb["fallback_from"] = run.perturb_fallback
    return {
        "tap_method": run.tap_method,
        "taps_perturb": perturb,
        "thresholds": thresholds.to_json(),
        "first_divergence": None if first is None else {
            "tensor": first.tensor, "op": first.op, "op_type": first.op_type, "module": first.module,
            "snr_db": first.total.snr_db, "max_abs": first.total.max_abs},
        "top_introducers": top_introducers(rows),
        "ops": rows,
        "unobservable": [{"tensor": r["tensor"], "reason": r["reason"]} for r in rows if not r["observable"]],
        "observed_tensors": sum(r["observable"] for r in rows),
        "graph_tensors": len(rows),
        "unit_samples": run.unit_samples,
        # how many samples went through one tapped run: the batch, or fewer where the memory budget says so
        "tapped_run": run.tapped_run,
    }


def _drift_pass(exported, backend, candidate, spec, data, batch_size, threads, thresholds, tap_method, unit_samples,
                progress, on_work, shards: int, shard: int | None, memory_budget: int) -> dict:
    """The pass over the data (or over shard `shard` of `shards`, whole batches): its DriftRun, the samples it
    could not read, what the candidate said it executed, and for a shard the executor's account."""
    from contextlib import nullcontext

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.backends import get_backend
    from harness.compare.cells import REFERENCE_WORK
    from harness.pipeline import shard_of
    from harness.run import iter_batches

    working = on_work or (lambda owner: None)
    count = len(data.samples)
    positions, first_batch = range(count), None
    if shard is not None:
        mine = shard_of(-(-count // batch_size), shard, shards)
        positions = range(mine.start * batch_size, min(mine.stop * batch_size, count))
        if positions.start > 0:  # the taps are checked on the data's first batch, as one pass checks them
            working(REFERENCE_WORK)
            found = next(iter_batches(data, spec.profile, batch_size, [], spec=spec))
            first_batch = found if found.positions[0] < positions.start else None
    working(REFERENCE_WORK)
    torch_session = get_backend("torch").load(exported, "cpu", "fp32", threads) if spec.has_torch else None
    failures = []
    bar = Progress(TextColumn("drift {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True) if progress is True else nullcontext()
    with bar:
        if progress is True:
            task = bar.add_task(f"{backend.name}:{candidate.device} {candidate.precision}", total=len(positions))
            progress = lambda n: bar.advance(task, n)  # noqa: E731
        run = run_drift(exported, backend, candidate, iter_batches(data, spec.profile, batch_size, failures, positions,
                                                                   spec=spec),
                        thresholds, tap_method, unit_samples, threads, progress=progress or None,
                        torch_session=torch_session, on_work=on_work, first_batch=first_batch,
                        memory_budget=memory_budget)
    working(f"{candidate.backend}:{candidate.device}:{candidate.precision}")  # the execution record asks it
    part = {"run": run, "failures": failures,
            "candidate": {"backend": candidate.backend, "device": candidate.device, "precision": candidate.precision,
                          "precision_effective": candidate.precision_effective, "execution": candidate.execution(),
                          "graph": str(candidate.graph) if candidate.graph else None}}
    if shard is not None:
        part["account"] = {"shard": shard, "chunks": -(-len(positions) // batch_size)}
    return part


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
        "first_divergence": None, "top_introducers": [], "ops": [], "unobservable": [], "observed_tensors": 0,
        "graph_tensors": 0, "unit_samples": 0, "tapped_run": {},
        "repro": None, "repro_info": None, "timing": {"total_s": 0.0},
    }
