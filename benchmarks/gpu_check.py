"""The GPU measurements a maintainer's GPU run adds to `make test-gpu` (benchmarks/gpu_check.sh): nvJPEG's
pixel difference to Pillow on the embedded benchmark's JPEGs, and torch CUDA throughput of each zoo
classifier at FP32 (TF32 off and on) and autocast FP16/BF16. JSON to the folder given, atomically."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def nvjpeg_vs_pillow(limit: int = 64) -> dict:
    from harness.data import embedded_benchmark
    from harness.preprocess import decode_nvjpeg, decode_pil

    means, maxima, p99 = [], [], []
    for sample in embedded_benchmark("classify").limit(limit).samples:
        data = sample.path.read_bytes()
        difference = np.abs(decode_nvjpeg(data).astype(np.int16) - decode_pil(data).astype(np.int16))
        means.append(float(difference.mean()))
        maxima.append(int(difference.max()))
        p99.append(float(np.percentile(difference, 99)))
    # the largest differences sit at saturated colour edges (chroma upsampling): the per-image 99th
    # percentile says how much of an image they cover
    return {"images": len(means), "mean_abs_levels": float(np.mean(means)), "max_abs_levels": max(maxima),
            "worst_image_mean_abs_levels": max(means), "median_image_p99_abs_levels": float(np.median(p99)),
            "identical_images": sum(m == 0 for m in maxima)}


def throughput(model: str, batch: int = 32, repeats: int = 20) -> dict:
    import torch

    from harness.backends import get_backend
    from harness.export import export
    from harness.model import resolve_model

    spec = resolve_model(model)
    exported = export(spec)
    size = spec.profile.input_size
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    rows = {}
    for label, precision, options in [("fp32", "fp32", {}), ("fp32-tf32", "fp32", {"tf32": True}),
                                      ("autocast-fp16", "fp16", {}), ("autocast-bf16", "bf16", {})]:
        session = get_backend("torch").load(exported, "cuda", precision, None, **options)
        feeds = {session.input_names[0]: x}
        for _ in range(3):
            session.run(feeds)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            session.run(feeds)
        torch.cuda.synchronize()
        rows[label] = {"samples_per_s": batch * repeats / (time.perf_counter() - started)}
    return rows


def main(folder: str) -> int:
    from harness.files import write_atomic
    from harness.noise import cuda_missing
    from harness.provenance import provenance

    if cuda_missing():
        print(f"gpu_check: {cuda_missing()}: nothing to measure", file=sys.stderr)
        return 2

    result = {"nvjpeg_vs_pillow": nvjpeg_vs_pillow(),
              "throughput": {model: throughput(model) for model in ("resnet_tiny", "mobilenetv2_tiny")},
              "provenance": provenance(None, {"inputs": 0}, backends=["torch"])}
    write_atomic(Path(folder) / "gpu_check.json", json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
