"""Minimal repro of a drift: the smallest window of the graph ending at the first divergent tensor that,
fed the reference's values at its inputs, still diverges on the candidate; saved as a folder that a
fresh process checks with `harness repro DIR` (exit 1: it reproduces; `--reference`: exit 0).

The window start is found by bisection over the topological order (as `polygraphy debug reduce` bisects):
a start at the tensor itself is the op alone; a start at 0 is the whole prefix of the model. The largest
start that still diverges gives the smallest sub-graph; only nodes on paths into the target are kept.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from harness.compare.outputs import OutputStats, Thresholds
from harness.files import write_atomic

REPRO_FILES = ("candidate.onnx", "reference.onnx", "inputs.npz", "expected.npz", "repro.json")


def _cut_model(proto, target: str, stops: set[str]):
    from harness.onnx_graph import subgraph_model

    model, inputs, outputs = subgraph_model(proto, [(target, stops - {target})], set(), prefix_units=False)
    return model, inputs, outputs[0]


def _run_graph(model, backend_name: str, device: str, precision: str, feeds: dict, optimize: bool = True,
               threads: int | None = None) -> np.ndarray:
    import onnx

    from harness.backends import get_backend
    from harness.export import graph_model

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "graph.onnx"
        onnx.save(model, str(path))
        options = {"optimize": optimize} if backend_name == "onnxruntime" else {}
        session = get_backend(backend_name).load(graph_model(path), device, precision, threads, artifact=path,
                                                 **options)
        outputs = session.run({name: feeds[name] for name in session.input_names})
    (value,) = outputs.values()
    return np.asarray(value)


def _feeds_for(inputs: list[str], probe: dict) -> dict:
    return {f"ref/{name}": np.ascontiguousarray(np.asarray(probe[name], np.float32)) for name in inputs}


def minimal_repro(exported, candidate, run, target: str, thresholds: Thresholds, threads: int | None = None):
    """(stops, start tensor, probe stats) of the smallest diverging window ending at `target`."""
    from harness.onnx_graph import load

    candidate_proto = load(candidate.graph)
    order = [row.tensor for row in run.rows]
    end = order.index(target)
    deployed = run.deployed.get(target, target)

    def probe(start: int) -> OutputStats:
        stops = set(order[:start]) | {exported.input_name}
        model, inputs, _ = _cut_model(candidate_proto, deployed, stops)
        got = _run_graph(model, candidate.backend, candidate.device, candidate.load_precision,
                         _feeds_for(inputs, run.probe_feeds), threads=threads)
        stats = OutputStats()
        stats.update({target: run.probe_feeds[target]}, {target: got})
        return stats

    low, high = 0, end
    results = {}
    while low < high:
        middle = (low + high + 1) // 2
        results[middle] = probe(middle)
        if thresholds.diverged(results[middle]):
            low = middle
        else:
            high = middle - 1
    stats = results.get(low) or probe(low)
    stops = set(order[:low]) | {exported.input_name}
    return stops, order[low], stats


def write_repro(folder: Path, exported, candidate, run, target_row, thresholds: Thresholds,
                threads: int | None = None) -> dict:
    import onnx

    from harness.onnx_graph import load

    stops, start, stats = minimal_repro(exported, candidate, run, target_row.tensor, thresholds, threads)
    folder.mkdir(parents=True, exist_ok=True)
    target = target_row.tensor
    candidate_model, inputs, _ = _cut_model(load(candidate.graph), run.deployed.get(target, target), stops)
    reference_model, reference_inputs, _ = _cut_model(load(exported.onnx_path), target, stops)
    feeds = _feeds_for(sorted(set(inputs) | set(reference_inputs)), run.probe_feeds)
    onnx.save(candidate_model, str(folder / "candidate.onnx"))
    onnx.save(reference_model, str(folder / "reference.onnx"))
    np.savez_compressed(folder / "inputs.npz", **feeds)
    np.savez_compressed(folder / "expected.npz", output=np.asarray(run.probe_feeds[target], np.float32))
    meta = {
        "schema": "harness.repro/1",
        "tensor": target, "op": target_row.op, "op_type": target_row.op_type, "module": target_row.module,
        "window_start": start, "nodes": len(candidate_model.graph.node), "reference_nodes": len(reference_model.graph.node),
        "samples": int(len(run.probe_feeds[target])),
        "candidate": {"backend": candidate.backend, "device": candidate.device, "precision": candidate.precision,
                      "load_precision": candidate.load_precision},
        "thresholds": thresholds.to_json(),
        "probe": {"snr_db": stats.snr_db, "max_abs": stats.max_abs, "rel_l2": stats.rel_l2},
        "command": f"harness repro {folder}",
        "reference_command": f"harness repro {folder} --reference",
    }
    write_atomic(folder / "repro.json", json.dumps(meta, indent=2, default=str))
    write_atomic(folder / "COMMAND", f"{meta['command']}    # exit 1: the candidate still diverges\n"
                                    f"{meta['reference_command']}    # exit 0: the reference matches\n")
    return meta


def _checked_repro_meta(path: Path, meta) -> tuple[Thresholds, dict]:
    """repro.json's fields the re-run uses, checked: one line naming the file and the field otherwise."""
    from harness.backends import PRECISIONS, registry
    from harness.errors import InputError

    def bad(problem: str) -> InputError:
        return InputError(f"{path}: {problem}")

    if not isinstance(meta, dict) or meta.get("schema") != "harness.repro/1":
        raise bad("not a harness repro file (schema harness.repro/1)")
    target, limits = meta.get("candidate"), meta.get("thresholds")
    if not isinstance(target, dict) or not all(isinstance(target.get(k), str) for k in
                                                  ("backend", "device", "load_precision")):
        raise bad("candidate must hold backend, device and load_precision names")
    if target["backend"] not in registry():
        raise bad(f"candidate.backend {target['backend']!r} is not one of {', '.join(registry())}")
    if target["load_precision"] not in PRECISIONS:
        raise bad(f"candidate.load_precision {target['load_precision']!r} is not one of {', '.join(PRECISIONS)}")
    if not isinstance(limits, dict) or set(limits) - {"snr_floor", "atol", "rtol"} or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in limits.values()):
        raise bad("thresholds must hold numbers snr_floor, atol, rtol")
    return Thresholds(**limits), target


def check_repro(folder: Path, reference: bool = False, threads: int | None = None) -> tuple[bool, OutputStats, dict]:
    """Runs the saved sub-graph (on the candidate, or the reference form on the tensor reference) and
    returns (diverged, stats vs the saved reference output, repro.json)."""
    import onnx

    from harness.errors import InputError

    missing = [name for name in REPRO_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: not a repro folder (missing {', '.join(missing)})")
    from harness.files import read_json

    meta = read_json(folder / "repro.json", "repro file")
    thresholds, target = _checked_repro_meta(folder / "repro.json", meta)
    try:
        with np.load(folder / "inputs.npz", allow_pickle=False) as stored:
            feeds = {name: stored[name] for name in stored.files}
        with np.load(folder / "expected.npz", allow_pickle=False) as stored:
            expected = stored["output"]
        graph = onnx.load(str(folder / ("reference.onnx" if reference else "candidate.onnx")))
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{folder}: a repro file cannot be read ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]})") from None
    if reference:
        got = _run_graph(graph, "onnxruntime", "cpu", "fp32", feeds, optimize=False, threads=threads)
    else:
        got = _run_graph(graph, target["backend"], target["device"], target["load_precision"], feeds, threads=threads)
    stats = OutputStats()
    stats.update({"output": expected}, {"output": got})
    return thresholds.diverged(stats), stats, meta
