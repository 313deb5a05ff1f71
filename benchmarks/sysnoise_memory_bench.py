"""Peak memory of `harness sysnoise` against the dataset's size, at ImageNet geometry.

The sweep streams the data in chunks (harness.pipeline.StagedPipeline): only per-sample predictions
outlive a chunk, so peak memory should stay flat as the dataset grows. Measured here: the same sweep
(resnet_tiny on ONNX Runtime inputs resized 256 -> crop 224, the decoder, resize and colour axes: 29
variants, 6 decoders) on N and 4N photo-sized JPEGs (500x375, as ImageNet val's typical image), each run
a fresh `harness sysnoise` process, peak RSS of the CLI and its worker (the largest of them). Goal: peak
RSS at 4N <= 1.25x the peak at N. Before streaming, the sweep held every image's intermediates: ~10.6 MB
per image at this geometry (100 images 2.53 GB, 300 images 4.66 GB), a 50,000-image val was out of reach.

The JPEGs are made here from the embedded benchmark (upscaled, seeded noise, quality 90): nothing is
downloaded.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data import embedded_benchmark

MODEL = "resnet_tiny"
AXES = "decoder,resize,color"
PHOTO_SIZE = (500, 375)
PROFILE = """[pre]
input_size = 224
resize_size = 256
"""
GOAL = 1.25
# a fresh process per run: its own peak, reported by the kernel for it and its children
MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def photo_folder(root: Path, count: int) -> Path:
    """`count` 500x375 JPEGs in ImageNet's class-folder layout, from the embedded classification split."""
    source = embedded_benchmark("classify")
    rng = np.random.default_rng(0)
    for k in range(count):
        sample = source.samples[k % len(source.samples)]
        image = Image.open(sample.path).convert("RGB").resize(PHOTO_SIZE, Image.BICUBIC)
        noisy = np.asarray(image, np.int16) + rng.integers(-6, 7, (*PHOTO_SIZE[::-1], 3), dtype=np.int16)
        folder = root / source.classes[sample.label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"{k:05d}.jpg", quality=90)
    return root


def peak_rss(dataset: Path, profile: Path, chunk_size: int, threads: int, workdir: Path) -> dict:
    harness = Path(sys.executable).with_name("harness")
    report = workdir / f"{dataset.name}.json"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MEASURE, str(harness), "sysnoise", MODEL, "--profile", str(profile),
                             "--dataset", str(dataset), "--axes", AXES, "--chunk-size", str(chunk_size),
                             "--threads", str(threads), "--store", str(workdir / "cells.sqlite"),
                             "--json", str(report)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"harness sysnoise on {dataset} failed: {result.stderr[-2000:]}")
    sweep = json.loads(report.read_text())
    return {"images": sweep["dataset"]["samples"], "wall_s": time.perf_counter() - started,
            "peak_rss_mb": int(result.stdout.split()[-1]) / 1024, "counters": sweep["counters"],
            "variants": sum(len(a["variants"]) for a in sweep["axes"])}


def bench_memory(images: int = 128, chunk_size: int = 64, threads: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        profile = work / "imagenet-geometry.toml"
        profile.write_text(PROFILE)
        runs = [peak_rss(photo_folder(work / f"photos-{count}", count), profile, chunk_size, threads, work)
                for count in (images, 4 * images)]
    growth = runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
    return {"name": "sysnoise_peak_memory", "model": MODEL, "axes": AXES, "photo_size": list(PHOTO_SIZE),
            "input": "resize 256, centre crop 224", "chunk_size": chunk_size, "threads": threads, "runs": runs,
            "peak_rss_growth": growth, "goal": GOAL, "met": growth <= GOAL}


if __name__ == "__main__":
    print(json.dumps(bench_memory(), indent=2))
