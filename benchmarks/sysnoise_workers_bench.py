"""Data-parallel workers: the speed-up of `harness sysnoise --workers 2` over `--workers 1` on this machine,
and the measured costs the README's cost model is built from.

Speed-up: a decode-heavy classification sweep (resnet_tiny at ImageNet geometry, resize 256 and crop 224,
the decoder axis: six JPEG decoders on photo-sized JPEGs), one worker with every core's threads against
two workers with half each (workers x threads = the cores), alternating, median of the rounds; their
variant rows must agree. A single worker decodes, resizes and hashes in one thread and uses the other
cores only inside inference, so here workers are what use the cores (`cpu_s`: the processes' CPU
seconds). The wall time includes each worker's start-up (a Python process importing torch, resolving the
model, loading the sessions: `fixed_s`, measured on a run of 8 images) and the merging worker
(`merge_seconds`), so the speed-up is what a user sees, not the shards' alone; the more images, the closer
it gets to the shards' own. (With the resize axis too, one worker already keeps ~1.7 of 2 cores busy:
its inference threads and OpenCV's resize pool; 160 photos took 85.7 s on one worker, 73.8 s on two.)

Costs (per image, one core): each decoder and the resize on the photos, called directly; and the work of a
sweep of every CPU axis on the zoo classifier per image (decodes, resizes and inferences per image, from
its counters), which with a model's own per-image inference time gives the work of any dataset size.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sysnoise_memory_bench import PROFILE, photo_folder

MODEL = "resnet_tiny"
AXES = "decoder"


def sweep(dataset: Path, profile: Path, workers: int, threads: int, workdir: Path, axes: str = AXES,
          name: str = "sweep") -> tuple[float, dict]:
    harness = Path(sys.executable).with_name("harness")
    report = workdir / f"{name}-{workers}.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([str(harness), "sysnoise", MODEL, "--profile", str(profile), "--dataset", str(dataset),
                           "--axes", axes, "--batch-size", "16", "--chunk-size", "16", "--threads", str(threads),
                           "--workers", str(workers), "--store", str(workdir / f"{name}-{workers}.sqlite"),
                           "--json", str(report)], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"harness sysnoise --workers {workers} failed: {done.stderr[-2000:]}")
    (workdir / f"{name}-{workers}.sqlite").unlink()
    result = json.loads(report.read_text())
    result["cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, result


def stage_costs(dataset: Path, profile_text: str) -> dict:
    """Seconds per image on one core: each decoder, and the reference resize (256, crop 224)."""
    import tomllib

    from harness.preprocess import DECODERS, apply_geometry, decode, stored_size
    from harness.profile import Profile

    blobs = [path.read_bytes() for path in sorted(dataset.rglob("*.jpg"))]
    decode_s = {}
    for decoder in DECODERS:
        decode(blobs[0], decoder)  # imported and warm
        started = time.perf_counter()
        for data in blobs:
            decode(data, decoder)
        decode_s[decoder] = (time.perf_counter() - started) / len(blobs)
    profile = Profile(**tomllib.loads(profile_text)["pre"])
    images = [(decode(data, "pil"), stored_size(data)) for data in blobs]
    started = time.perf_counter()
    for image, size in images:
        apply_geometry(image, profile, size)
    return {"decode_s": decode_s, "resize_s": (time.perf_counter() - started) / len(images)}


def bench_workers(images: int = 1000, rounds: int = 2) -> dict:
    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the decoders' own pools stay at one thread: a core each
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        profile = work / "imagenet-geometry.toml"
        profile.write_text(PROFILE)
        photos = photo_folder(work / "photos", images)
        # exports cached before timing; the fixed cost of a one-worker run (start-up, metrics) on 8 images
        fixed_s = sweep(photo_folder(work / "photos-8", 8), profile, 1, cores, work, name="fixed")[0]
        times = {1: [], 2: []}
        reports = {}
        for _ in range(rounds):
            for workers in (1, 2):  # alternating: a load drift of the machine affects both alike
                seconds, reports[workers] = sweep(photos, profile, workers, max(1, cores // workers), work)
                times[workers].append(seconds)
        all_axes_seconds, all_axes = sweep(photo_folder(work / "photos-16", 16), profile, 1, cores, work,
                                           axes="decoder,resize,color,precision,backend", name="all-axes")
        costs = stage_costs(photos, PROFILE)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    account = reports[2]["executor"]
    per_image = {key: value / 16 for key, value in all_axes["counters"].items() if key in ("decodes", "resizes",
                                                                                          "inferences")}
    return {"name": "sysnoise_workers", "model": MODEL, "axes": AXES, "images": images, "cores": cores,
            "rounds": rounds, "workers_1_s": times[1], "workers_2_s": times[2], "speedup_2_over_1": one / two,
            "same_rows": reports[1]["axes"] == reports[2]["axes"], "fixed_s": fixed_s,
            "cpu_s": {"workers_1": reports[1]["cpu_s"], "workers_2": reports[2]["cpu_s"]},
            "shard_seconds": [shard["seconds"] for shard in account["shards"]],
            "merge_seconds": account["merge_seconds"],
            "stage_costs": costs,
            "all_cpu_axes": {"axes": "decoder,resize,color,precision,backend", "images": 16,
                             "variants": sum(len(a["variants"]) for a in all_axes["axes"]),
                             "seconds": all_axes_seconds, "per_image": per_image}}


if __name__ == "__main__":
    print(json.dumps(bench_workers(), indent=2))
