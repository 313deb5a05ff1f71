"""`harness drift` vs `polygraphy run --onnxrt --onnx-outputs mark all`, on the same FP32 and FP16 models
(torchvision ResNet-18, random init, 224x224, batch 1) and the same inputs.

Polygraphy's way: run the FP32 model with every tensor marked and save all outputs, then run the FP16
model the same way and compare against the saved file (two processes). Harness's way: one `run_drift`
(tensor reference ORT FP32 no-opt + candidate ORT FP16, every tensor tapped, statistics streamed, and the
ops run alone on the candidate). Each side runs in its own process; wall time and peak RSS come from
that process's rusage (os.wait4). Goals: >= 20x faster per sample; drift's peak RSS at 1,000 samples
within 10 % of that at 100.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _measure(command: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS of one child process (its output goes to files: a full pipe would block it)."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {err[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out}


def _models(folder: Path) -> tuple[Path, Path]:
    """The FP32 export and the FP16 graph the harness's ORT FP16 candidate runs."""
    import torch
    import torchvision

    from harness.artifacts import fp16_onnx
    from harness.export import export
    from harness.model import ModelSpec
    from harness.profile import Profile

    torch.manual_seed(0)
    weights = folder / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), weights)
    spec = ModelSpec(name="resnet18", task="classify", profile=Profile(input_size=224),
                     build=lambda: torchvision.models.resnet18(num_classes=1000), weights=weights)
    exported = export(spec)
    return exported.onnx_path, fp16_onnx(exported)


def _inputs(count: int):
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(count):
        yield rng.standard_normal((1, 3, 224, 224), dtype=np.float32)


def worker(fp32: str, samples: int, threads: int) -> None:
    """One drift run in this process: batch 1, every tensor, ops alone on every sample."""
    from harness.backends import get_backend
    from harness.compare.drift import Thresholds, first_divergence, run_drift
    from harness.data import Sample
    from harness.export import export
    from harness.model import resolve_model
    from harness.preprocess import Geometry
    from harness.run import Batch

    exported = export(resolve_model(fp32))
    backend = get_backend("onnxruntime")
    started = time.perf_counter()
    candidate = backend.load(exported, "cpu", "fp16", threads)
    batches = (Batch([Sample(str(k), Path("none"))], tensor, [Geometry(1, 1)], [(224, 224)])
               for k, tensor in enumerate(_inputs(samples)))
    # every tensor, as Polygraphy's `mark all` does (no fall-back to kernel-boundary taps)
    run = run_drift(exported, backend, candidate, batches, Thresholds(), tap_method="graph-outputs", threads=threads)
    first = first_divergence(run.rows, Thresholds())
    print(json.dumps({"seconds": time.perf_counter() - started, "samples": run.samples,
                      "tensors": sum(r.total is not None for r in run.rows), "first": first and first.tensor}))


def prepare(folder: str, samples: int) -> None:
    """In a child process, so the measuring parent never holds torch: Linux carries a parent's peak RSS
    into its children's ru_maxrss."""
    import polygraphy.json

    fp32, fp16 = _models(Path(folder))
    polygraphy.json.save_json([{"input": x} for x in _inputs(samples)], str(Path(folder) / "inputs.json"))
    print(json.dumps({"fp32": str(fp32), "fp16": str(fp16)}))


def bench_drift(samples: int = 20, rss_counts: tuple[int, int] = (100, 1000), threads: int = 2) -> dict:
    python = sys.executable
    polygraphy_exe = str(Path(python).with_name("polygraphy"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {"HARNESS_CACHE": str(folder / "cache"), "OMP_NUM_THREADS": str(threads)}
        prepared = _measure([python, str(HERE / "drift_bench.py"), "--prepare", str(folder), str(samples)], env)
        paths = json.loads(prepared["stdout"].strip().splitlines()[-1])
        fp32, fp16 = Path(paths["fp32"]), Path(paths["fp16"])
        common = ["--onnxrt", "--onnx-outputs", "mark", "all", "--load-inputs", str(folder / "inputs.json")]
        save = _measure([polygraphy_exe, "run", str(fp32), *common, "--save-outputs", str(folder / "fp32.json")], env)
        check = _measure([polygraphy_exe, "run", str(fp16), *common, "--load-outputs", str(folder / "fp32.json"),
                          "--atol", "1e9", "--rtol", "1e9"], env)  # we time the comparison, not its verdict
        polygraphy_s = save["wall_s"] + check["wall_s"]
        runs = {}
        for count in (samples, *rss_counts):
            runs[count] = _measure([python, str(HERE / "drift_bench.py"), "--worker", str(fp32), str(count),
                                    str(threads)], env)
            runs[count]["result"] = json.loads(runs[count].pop("stdout").strip().splitlines()[-1])
        outputs_mb = (folder / "fp32.json").stat().st_size / 2**20
    ours = runs[samples]
    low, high = (runs[c]["peak_rss_mb"] for c in rss_counts)
    return {
        "name": "drift_vs_polygraphy", "model": "torchvision resnet18 (random init) 224x224, batch 1",
        "samples": samples, "threads": threads,
        "polygraphy": {"wall_s": polygraphy_s, "per_sample_s": polygraphy_s / samples,
                       "peak_rss_mb": max(save["peak_rss_mb"], check["peak_rss_mb"]), "outputs_file_mb": outputs_mb},
        "harness_drift": {"wall_s": ours["wall_s"], "per_sample_s": ours["wall_s"] / samples,
                          "peak_rss_mb": ours["peak_rss_mb"], "tensors_compared": ours["result"]["tensors"]},
        "speedup_per_sample": polygraphy_s / ours["wall_s"], "speedup_goal": 20.0,
        "rss_mb": {str(c): runs[c]["peak_rss_mb"] for c in rss_counts},
        "rss_growth": high / low - 1, "rss_growth_goal": 0.10,
        "wall_s_by_samples": {str(c): runs[c]["wall_s"] for c in runs},
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--prepare":
        prepare(sys.argv[2], int(sys.argv[3]))
    else:
        print(json.dumps(bench_drift(), indent=2))
