"""`make bench`: speed goals, measured as ratios within one run, written to benchmarks/results/*.json.

drift: `harness drift` vs Polygraphy's mark-all compare (benchmarks/drift_bench.py), on ResNet-18 and, with the
physical limit (the two models run plainly) and drift's default taps beside them, on ResNet-50.

throughput: each installed backend x precision on the zoo classifier at batch 1 and 8 (median of warm
runs, samples/s), plus TVM's compile time (a cold cache, so the build is measured).

sysnoise: sweep vs hand-written vs naive time (benchmarks/sysnoise_bench.py); sweep peak memory vs dataset
size (benchmarks/sysnoise_memory_bench.py); the speed-up of `--workers 2` over one worker, and the costs the
README's cost model uses (benchmarks/sysnoise_workers_bench.py).

overhead: the harness's compare inference path (the staged pipeline's model stage: normalisation, Session.run
checks, timing; then post-processing and streaming output statistics) over a bare loop of the same
normalisation and `onnxruntime.InferenceSession.run`, on the same decoded pixels, for a full-size architecture (torchvision ResNet-18, 224x224, random init) so inference is not
trivially small. Goal: ratio <= 1.05. The two loops alternate, repeat after repeat, so machine load
drifts affect both alike; the ratio is taken of the per-loop medians.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from harness.backends import get_backend
from harness.compare.outputs import OutputStats
from harness.export import export
from harness.model import ModelSpec
from harness.inference import ModelConfig, ModelStage
from harness.preprocess import Geometry, normalize
from harness.profile import Profile
from harness.provenance import provenance
from harness.stages import Inputs
from harness.tasks import CLASSIFY, get_task

RESULTS = Path(__file__).parent / "results"
GOAL = 1.05


def resnet18_spec(workdir: Path) -> ModelSpec:
    torch.manual_seed(0)
    weights = workdir / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), weights)
    return ModelSpec(name="torchvision:resnet18", task="classify", profile=Profile(input_size=224),
                     build=lambda: torchvision.models.resnet18(num_classes=1000), weights=weights)


def bench_overhead(batches: int = 12, batch_size: int = 8, repeats: int = 5, threads: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        exported = export(resnet18_spec(Path(tmp)), cache_dir=Path(tmp) / "exports")
        rng = np.random.default_rng(0)
        count = batches * batch_size
        pixels = rng.integers(0, 256, (count, 224, 224, 3), dtype=np.uint8)
        inputs = Inputs([f"sample-{k}" for k in range(count)], pixels, [Geometry(1, 1)] * count, "bench")
        profile = Profile(input_size=224)

        backend = get_backend("onnxruntime")
        config = ModelConfig("onnxruntime", "cpu", "fp32")
        models = ModelStage(exported, batch_size, threads, None, {})
        models.sessions[config] = backend.load(exported, "cpu", "fp32", threads)
        task = get_task(CLASSIFY)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        raw = ort.InferenceSession(str(exported.onnx_path), options, providers=["CPUExecutionProvider"])
        input_name = raw.get_inputs()[0].name
        for start in (0, batch_size):  # warm both before timing
            raw.run(None, {input_name: normalize(pixels[start:start + batch_size], profile)})
            models.sessions[config].run({input_name: normalize(pixels[start:start + batch_size], profile)})

        def raw_loop() -> float:
            started = time.perf_counter()
            for start in range(0, count, batch_size):
                raw.run(None, {input_name: normalize(pixels[start:start + batch_size], profile)})
            return time.perf_counter() - started

        def harness_loop() -> float:
            """The staged pipeline's model stage (compare's inference path), its post-processing and its
            streamed output statistics."""
            stats = OutputStats()
            started = time.perf_counter()
            models.drop()
            outputs = models.run(inputs, profile, config)
            for start in range(0, count, batch_size):
                batch = {name: value[start:start + batch_size] for name, value in outputs.items()}
                task.predictions(batch, inputs.geometries[start:start + batch_size], profile, {})
                stats.update(batch, batch)
            return time.perf_counter() - started

        raw_times, harness_times = [], []
        for _ in range(repeats):
            raw_times.append(raw_loop())
            harness_times.append(harness_loop())
    ratio = statistics.median(harness_times) / statistics.median(raw_times)
    return {"name": "compare_inference_overhead", "model": "torchvision resnet18 (random init) 224x224",
            "batches": batches, "batch_size": batch_size, "repeats": repeats, "threads": threads,
            "raw_ort_s": raw_times, "harness_s": harness_times,
            "raw_ort_ms_per_batch": statistics.median(raw_times) / batches * 1000,
            "harness_ms_per_batch": statistics.median(harness_times) / batches * 1000,
            "ratio": ratio, "goal": GOAL, "met": ratio <= GOAL}


def bench_throughput(model: str = "resnet_tiny", repeats: int = 15, threads: int = 2) -> dict:
    from harness.backends import registry
    from harness.calibration import calibration_set
    from harness.model import resolve_model

    rows = []
    import os

    previous = os.environ.get("HARNESS_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HARNESS_CACHE"] = tmp  # cold: the TVM compile below is really measured
        spec = resolve_model(model)
        exported = export(spec)
        calibration = calibration_set(spec, count=32)
        rng = np.random.default_rng(0)
        size = spec.profile.input_size
        for backend in registry().values():
            if not backend.available()[0]:
                rows.append({"backend": backend.name, "status": "unavailable", "reason": backend.available()[1]})
                continue
            for precision in backend.precisions("cpu"):
                started = time.perf_counter()
                try:
                    session = backend.load(exported, "cpu", precision, threads, calibration=calibration)
                except Exception as err:  # noqa: BLE001 - a row that says why, the others still measured
                    rows.append({"backend": backend.name, "precision": precision, "status": "failed",
                                 "reason": f"{type(err).__name__}: {err}"})
                    continue
                row = {"backend": backend.name, "precision": precision, "status": "ok",
                       "precision_effective": session.precision_effective,
                       "load_s": time.perf_counter() - started}
                for batch in (1, 8):
                    x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
                    session.run({"input": x})
                    count = repeats if not (backend.name == "tvm" and precision == "fp16") else 3
                    times = []
                    for _ in range(count):
                        t0 = time.perf_counter()
                        session.run({"input": x})
                        times.append(time.perf_counter() - t0)
                    row[f"batch{batch}_ms"] = statistics.median(times) * 1000
                    row[f"batch{batch}_samples_per_s"] = batch / statistics.median(times)
                rows.append(row)
    if previous is None:
        os.environ.pop("HARNESS_CACHE", None)
    else:
        os.environ["HARNESS_CACHE"] = previous
    tvm_compile = [r["load_s"] for r in rows if r.get("backend") == "tvm" and r.get("precision") == "fp32"]
    return {"name": "backend_throughput", "model": model, "threads": threads, "rows": rows,
            "tvm_compile_s": tvm_compile[0] if tvm_compile else None}


def _written(name: str, result: dict, seeds: dict, backends: list[str]) -> None:
    """One benchmark's JSON, with the machine and versions it was measured with, written atomically."""
    from harness.files import write_atomic

    result["provenance"] = provenance(2, seeds, None, None, backends)
    write_atomic(RESULTS / f"{name}.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / name}.json", flush=True)


def main(names: list[str]) -> int:
    """The benchmarks named (every one when none is), each written to benchmarks/results/ as it finishes;
    then the figures, printed and put into the README (benchmarks/figures.py renders them from the files
    alone, so a benchmark not rerun keeps its last result)."""
    from drift_bench import bench_drift, bench_drift_resnet50
    from figures import paragraphs, write_readme
    from sysnoise_bench import bench_sweep
    from sysnoise_memory_bench import bench_memory
    from sysnoise_workers_bench import bench_workers

    benches = {  # name: (run, seeds, backends)
        "throughput": (bench_throughput, {"tensors": 0}, []),
        "sysnoise": (bench_sweep, {"bootstrap": 0}, ["onnxruntime"]),
        "sysnoise_memory": (bench_memory, {"photos": 0}, ["onnxruntime", "torch"]),
        "sysnoise_workers": (bench_workers, {"photos": 0}, ["onnxruntime", "torch"]),
        "drift": (bench_drift, {"inputs": 0, "weights": 0}, ["onnxruntime"]),
        "drift_resnet50": (bench_drift_resnet50, {"inputs": 0, "weights": 0}, ["onnxruntime"]),
        "overhead": (bench_overhead, {"tensors": 0, "weights": 0}, ["onnxruntime"]),
    }
    unknown = sorted(set(names) - set(benches))
    if unknown:
        print(f"no benchmark named {', '.join(unknown)} (there are: {', '.join(benches)})", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names or benches:
        run, seeds, backends = benches[name]
        _written(name, run(), seeds, backends)
    print("\n\n".join(paragraphs()))
    write_readme(Path(__file__).resolve().parent.parent / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
