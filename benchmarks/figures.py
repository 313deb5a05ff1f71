"""The benchmark figures, rendered from `benchmarks/results/*.json` alone: `make bench` prints them after it
writes the files and puts them into the README between the bench markers, and tests/test_readme.py holds
the README's block equal to what the committed files render, so no figure in it is typed by hand.

    python benchmarks/figures.py [--readme README.md]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _load(folder: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def _machine(results: dict[str, dict]) -> str:
    seen = next(iter(results.values()))["provenance"]
    packages = ", ".join(f"{name} {version}" for name, version in seen["packages"].items() if version)
    return (f"Measured by `make bench` on {seen['cpu']} ({seen['cpu_count']} cores), Python {seen['python']}, "
            f"harness {seen['harness']}; {packages}. Each figure is from `benchmarks/results/`, ratios within one run.")


def _throughput(r: dict) -> str:
    rows = [f"{row['backend']} {row['precision']} {row['batch8_samples_per_s']:.0f}" for row in r["rows"]
            if row["status"] == "ok"]
    compile_s = f"; TVM's compile, cold cache: {r['tvm_compile_s']:.1f} s" if r.get("tvm_compile_s") else ""
    return (f"**Throughput** ({r['model']}, batch 8, {r['threads']} threads, samples/s): " + ", ".join(rows)
            + compile_s + ".")


def _sweep(r: dict) -> str:
    stages = r["naive_stage_s"]
    total = sum(stages.values())
    split = ", ".join(f"{name.replace('_', ' ')} {seconds / total * 100:.0f} %" for name, seconds in stages.items())
    return (f"**Sweep cost** ({r['model']} on every CPU axis: {r['variants']} variants, {r['images']} images, "
            f"batch {r['batch_size']}, {r['threads']} threads): the sweep {r['sweep_s']:.1f} s, a hand-written "
            f"script doing only the distinct work {r['hand_written_s']:.1f} s ({r['sweep_over_hand_written']:.2f}x; "
            f"goal <= 1.3), the naive loop re-running the whole pipeline per variant, as the paper's code does, "
            f"{r['naive_s']:.1f} s ({r['naive_over_sweep']:.2f}x the sweep; where its time goes: {split}). "
            f"Evaluated by pycocotools instead of {r['coco_library']}, the same sweep takes "
            f"{r['sweep_s_pycocotools']:.1f} s ({r['coco_library_speedup']:.2f}x slower; same deltas: "
            f"{r['coco_libraries_agree']}).")


def _memory(r: dict) -> str:
    small, large = r["runs"]
    return (f"**Sweep memory** ({r['model']}, {r['axes']}, {r['photo_size'][0]}x{r['photo_size'][1]} photos at "
            f"{r['input']}, chunks of {r['chunk_size']}): peak RSS {small['peak_rss_mb']:.0f} MB at "
            f"{small['images']} images, {large['peak_rss_mb']:.0f} MB at {large['images']} "
            f"(x{r['peak_rss_growth']:.2f}; goal <= {r['goal']}).")


def _workers(r: dict) -> str:
    one, two = statistics.median(r["workers_1_s"]), statistics.median(r["workers_2_s"])
    decode, every = r["stage_costs"]["decode_s"], r["all_cpu_axes"]
    return (f"**Workers** ({r['model']}, {r['axes']} axis, {r['images']} photos, {r['cores']} cores): one worker "
            f"{one:.0f} s, two {two:.0f} s (x{r['speedup_2_over_1']:.2f}, same rows: {r['same_rows']}); a "
            f"worker's fixed cost (start-up and metrics, 8 images) {r['fixed_s']:.0f} s, the merging worker "
            f"{r['merge_seconds']:.1f} s. One image's stages on one core: decoding "
            f"{min(decode.values()) * 1000:.1f} to {max(decode.values()) * 1000:.1f} ms "
            f"({statistics.mean(decode.values()) * 1000:.1f} ms on average over the {len(decode)} decoders), resize "
            f"and crop {r['stage_costs']['resize_s'] * 1000:.1f} ms; every CPU axis ({every['axes']}: "
            f"{every['variants']} variants) does per image " + ", ".join(
                f"{count:.0f} {name}" for name, count in every["per_image"].items()) + ".")


def _drift(r: dict) -> str:
    return (f"**Drift vs Polygraphy** ({r['model']}, FP32 vs FP16, every tensor): one more sample costs "
            f"{r['marginal_s_per_sample']:.3f} s vs Polygraphy's {r['polygraphy']['marginal_s_per_sample']:.3f} s "
            f"({r['speedup_per_sample']:.1f}x; goal >= 20); peak RSS {r['harness_drift']['peak_rss_mb']:.0f} vs "
            f"{r['polygraphy']['peak_rss_mb']:.0f} MB at {r['samples']} samples; drift's RSS from 100 to 1,000 "
            f"samples {r['rss_growth'] * 100:+.1f} % (goal <= 10 %).")


def _drift_resnet50(r: dict) -> str:
    names = {"harness_default_taps": "drift, default taps", "harness_all_taps": "drift, every tensor a graph output",
             "polygraphy": "Polygraphy `mark all`", "physical_limit": "the two models run plainly"}
    costs = "; ".join(f"{names[name]} {c['marginal_s_per_sample']:.3f} s (peak RSS "
                      f"{max(c['peak_rss_mb'].values()):.0f} MB)" for name, c in r["contenders"].items())
    ratios = r["ratios"]
    return (f"**Drift at ResNet-50** ({r['model']}, FP32 vs FP16, {r['threads']} threads, median of {r['rounds']} "
            f"alternating rounds), one more sample: {costs}. Polygraphy / drift: "
            f"{ratios['polygraphy_over_harness_default']:.1f}x (default taps), "
            f"{ratios['polygraphy_over_harness_all_taps']:.1f}x (every tensor; goal >= 20); drift / the physical "
            f"limit: {ratios['harness_default_over_physical']:.2f}x, {ratios['harness_all_taps_over_physical']:.2f}x "
            f"(goal <= 2).")


def _overhead(r: dict) -> str:
    return (f"**Compare's overhead** ({r['model']}, batch {r['batch_size']}): the harness's inference path "
            f"{r['harness_ms_per_batch']:.1f} ms/batch vs a bare ONNX Runtime loop {r['raw_ort_ms_per_batch']:.1f} "
            f"({r['ratio']:.3f}; goal <= {r['goal']}).")


RENDERERS = {"throughput": _throughput, "sysnoise": _sweep, "sysnoise_memory": _memory,
             "sysnoise_workers": _workers, "drift": _drift, "drift_resnet50": _drift_resnet50, "overhead": _overhead}


def paragraphs(folder: Path = RESULTS) -> list[str]:
    results = _load(folder)
    return [_machine(results)] + [render(results[name]) for name, render in RENDERERS.items() if name in results]


def readme_block(folder: Path = RESULTS) -> str:
    return "\n".join([START, "", *("\n\n".join(paragraphs(folder)).splitlines()), "", END])


def write_readme(readme: Path, folder: Path = RESULTS) -> None:
    text = readme.read_text()
    head, rest = text.split(START, 1)
    readme.write_text(head + readme_block(folder) + rest.split(END, 1)[1])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--readme"]:
        write_readme(Path(sys.argv[2]))
    else:
        print("\n\n".join(paragraphs()))
