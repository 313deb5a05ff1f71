"""harness sysnoise: variants, statistics and the caching claim (checked by instrumentation)."""
import json
import time

import numpy as np
import onnx
import pytest
import torch
from rich.console import Console

import harness.inference as inference_module
import harness.pipeline as pipeline_module
import harness.stages as stages_module
from harness.backends import Session
from harness.data import embedded_benchmark
from harness.export import export
from harness.model import resolve_model
from harness.noise import AXES
from harness.noise.graph import rewritten_model
from harness.noise.stats import mcnemar_exact, paired_bootstrap_ci, significant
from harness.noise.journal import ChunkJournal
from harness.pipeline import ModelConfig, Request, StagedPipeline
from harness.noise.sweep import run_axes, run_axis
from harness.report.sysnoise import variants_table


def test_ceil_mode_rewrite_changes_the_pool_output_as_torch_does():
    exported = export(resolve_model("resnet_tiny"))
    rewritten = onnx.load(str(rewritten_model(exported, ceil_mode=True).onnx_path))
    pool = next(n for n in rewritten.graph.node if n.op_type == "MaxPool")
    rewritten.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(rewritten)
    shape = next([d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info
                 if v.name == pool.output[0])
    expected = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)(torch.zeros(1, 16, 64, 64)).shape
    assert shape == list(expected) == [1, 16, 33, 33]


def test_ceil_mode_rewrite_of_an_fpn_detector_computes_what_torch_computes_with_ceil_mode():
    """The flip makes the detector's levels odd-sized (16 -> 17 points a side); the rewritten graph must
    still run and equal the eager model with its pool's ceil_mode flipped (FPN resizing to the lateral)."""
    import onnxruntime

    spec = resolve_model("fcos_tiny")
    exported = export(spec)
    pixels = np.random.default_rng(0).standard_normal((2, 3, 128, 128)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(rewritten_model(exported, ceil_mode=True).onnx_path))
    rewritten = session.run(None, {exported.input_name: pixels})
    model = spec.load_torch().eval()
    model.maxpool.ceil_mode = True
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(pixels))]
    assert [o.shape[-1] for o in rewritten] == [17] * 3 + [9] * 3 + [5] * 3
    for got, want in zip(rewritten, expected):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_mcnemar_and_bootstrap_on_a_known_case():
    # 100 paired samples: the candidate loses 10 the reference had and gains none
    reference = np.ones(100, bool)
    candidate = reference.copy()
    candidate[:10] = False
    assert mcnemar_exact(reference, candidate) == pytest.approx(2 * 0.5 ** 10)  # binomial(0; 10, 1/2), two-sided
    low, high = paired_bootstrap_ci(reference, candidate)
    assert -0.17 < low < -0.10 < high < -0.04 and significant((low, high))
    assert mcnemar_exact(reference, reference) == 1.0 and not significant(paired_bootstrap_ci(reference, reference))


def test_each_stage_runs_once_per_distinct_work(monkeypatch):
    """Streamed in chunks of 8 images (20 images: 8, 8, 4), the counts are still the distinct work, and no
    more than one chunk's decodes are ever alive at once."""
    import gc
    import weakref

    counts = {"decode": 0, "geometry": 0, "run": 0}
    alive = {"now": 0, "most": 0}

    def released():
        alive["now"] -= 1

    def counting(name, real):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            result = real(*args, **kwargs)
            if name == "decode":
                alive["now"] += 1
                if alive["now"] > alive["most"]:  # a new high: count only what is still reachable
                    gc.collect()                  # (torchvision's arrays sit in a cycle with their tensor)
                alive["most"] = max(alive["most"], alive["now"])
                weakref.finalize(result, released)
            return result
        return wrapped
    monkeypatch.setattr(stages_module, "decode", counting("decode", stages_module.decode))
    monkeypatch.setattr(stages_module, "apply_geometry", counting("geometry", stages_module.apply_geometry))
    monkeypatch.setattr(Session, "run", counting("run", Session.run))

    spec = resolve_model("resnet_tiny")
    dataset = embedded_benchmark("classify").limit(20).aligned_to(spec.labels)
    pipeline = StagedPipeline(export(spec), dataset, batch_size=8, chunk_size=8)
    reference = ModelConfig("torch", "cpu", "fp32")
    axes = [AXES[name] for name in ("decoder", "ceil_mode")]
    results = run_axes(pipeline, axes, spec.profile, reference, "classify", spec.labels, "top1", "onnxruntime")
    decoders = [v["name"] for v in results[0]["variants"]]
    assert len(decoders) == 5  # opencv, torchvision, ffmpeg, simplejpeg-fast, pil-draft-2
    # each image decoded once per decoder (the reference's pil included), and resized once per input set
    assert counts["decode"] == 20 * 6 == pipeline.counters["decodes"]
    assert counts["geometry"] == 20 * 6 == pipeline.counters["resizes"]
    assert alive["most"] <= 8  # one chunk of one decoder: memory does not grow with the dataset
    # inference once per distinct input set: opencv and torchvision give Pillow's very pixels, so torch
    # runs 4 sets (pil, ffmpeg, simplejpeg-fast, pil-draft-2); ceil_mode runs ORT on the rewritten and
    # the unrewritten graph: 6 input sets, each one batch per chunk
    assert counts["run"] == 6 * 3 and pipeline.counters["inferences"] == 6 * 20
    identical = {v["name"] for v in results[0]["variants"] if v["identical_to_reference"]}
    assert identical == {"opencv", "torchvision"}
    # the same sweep unchunked, keeping no raw outputs for re-use (more inference) and its logits in
    # memory-mapped files, gives the same rows
    monkeypatch.setattr(inference_module, "OUTPUTS_BUDGET", 0)
    monkeypatch.setattr(pipeline_module, "SPILL_BYTES", 0)
    whole = StagedPipeline(export(spec), dataset, batch_size=8, chunk_size=20)
    unchunked = [run_axis(whole, axis, spec.profile, reference, "classify", spec.labels, "top1", "onnxruntime")
                 for axis in axes]
    assert [[(v["name"], v["delta"], v["flip_rate"], v["kl"], v["outputs_sha256"]) for v in r["variants"]]
            for r in results] == \
        [[(v["name"], v["delta"], v["flip_rate"], v["kl"], v["outputs_sha256"]) for v in r["variants"]]
         for r in unchunked]
    assert all(isinstance(e.predictions[0].base, np.memmap) for e in whole.evaluated.values())


def test_sysnoise_cli_report(harness_cli, tmp_path):
    markdown = tmp_path / "table.md"
    result = harness_cli("sysnoise", "--axes", "decoder,color,ceil_mode", "--limit", "60", "--combine",
                         "--batch-size", "16", "--chunk-size", "20", "--markdown", str(markdown), "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "harness.sysnoise/1" and report["reference"]["backend"] == "torch"
    axes = {a["axis"]: a for a in report["axes"]}
    assert [a["stage"] for a in report["axes"]] == ["pre", "pre", "model"]
    for axis in axes.values():
        assert {"delta_mean", "delta_std", "delta_max", "variants"} <= set(axis)
        for variant in axis["variants"]:
            assert {"name", "status", "metric", "delta", "ci95", "significant", "flip_rate", "kl",
                    "identical_to_reference"} <= set(variant)
    colors = {v["name"]: v for v in axes["color"]["variants"]}
    assert colors["yuv420-bt601-full-nv12"]["identical_to"] == "yuv420-bt601-full-i420"
    findings = [v["delta"] for v in colors.values() if v["identical_to"] is None]  # an NV12 repeats its I420
    # bgr, 4 YUV conversions at decode (the default: full resolution) and the same 4 after the resize
    assert len(findings) == 9 and axes["color"]["delta_mean"] == pytest.approx(np.mean(findings))
    assert colors["yuv420-bt601-full-i420"]["changes"] == {"color": "yuv420-bt601-full-i420", "color_at": "decode"}
    assert colors["yuv420-bt601-full-i420@model-input"]["changes"]["color_at"] == "model-input"
    assert report["reference"]["profile"]["color_at"] == "decode"
    ceil = axes["ceil_mode"]["variants"][0]
    assert ceil["significant"] and ceil["delta"] < -0.1 and ceil["p_value"] < 0.01
    assert [step["axis"] for step in report["combined"]] == ["decoder", "color", "ceil_mode"]
    assert set(report["counters"]) == {"decodes", "resizes", "inferences", "distinct_inputs"}
    assert report["chunk_size"] == 32  # 20 images rounded up to whole batches of 16: 60 images in 2 chunks
    assert "| resnet_tiny |" in markdown.read_text()
    console = Console(width=250, record=True)
    console.print(variants_table(report))
    rows = {line.split("│")[2].strip(): line for line in console.export_text().splitlines() if line.count("│") > 3}
    assert "= yuv420-bt601-full-i420" in rows["yuv420-bt601-full-nv12"]
    assert "= " not in rows["yuv420-bt601-full-i420"] and "identical" in rows["opencv"]


def test_list_axes_and_unknown_axis(harness_cli):
    result = harness_cli("sysnoise", "--list-axes")
    assert result.returncode == 0 and "yuv420-bt709-limited-nv12" in result.stdout and "ceil_mode" in result.stdout
    result = harness_cli("sysnoise", "--axes", "decoder,jitter")
    assert result.returncode == 2 and "unknown noise axis 'jitter'" in result.stderr


def _boxes(*rows):
    return np.array(rows, np.float32)


def test_nms_variants_agree_on_an_easy_case_and_differ_where_documented():
    from harness.postprocess import NMS

    # easy: two clusters of one class far apart, and a lone box of another class
    boxes = _boxes([0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [51, 50, 61, 60], [0, 0, 10, 10])
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.6], np.float32)
    labels = np.array([0, 0, 0, 0, 1])
    aware = {name: sorted(NMS[name](boxes, scores, labels, 0.5).tolist())
             for name in ("torchvision-batched", "onnx", "opencv", "numpy")}
    assert all(kept == [0, 3, 4] for kept in aware.values()), aware
    # class-agnostic NMS lets the class-0 box suppress the identical class-1 box (documented behaviour)
    assert sorted(NMS["torchvision-agnostic"](boxes, scores, labels, 0.5).tolist()) == [0, 3]
    # a tie: equal scores, heavy overlap. torchvision's docs: which box survives is implementation-defined,
    # so implementations are compared on the kept scores, never on indices
    tied = _boxes([0, 0, 10, 10], [0, 0, 10, 11])
    tied_scores = np.array([0.5, 0.5], np.float32)
    for name, nms in NMS.items():
        kept = nms(tied, tied_scores, np.zeros(2, np.int64), 0.5)
        assert len(kept) == 1 and tied_scores[kept[0]] == 0.5, name
    # IoU exactly at the threshold is kept by every implementation: all suppress only when IoU > threshold
    at_threshold = _boxes([0, 0, 10, 10], [0, 0, 10, 20])  # IoU = 100 / 200 = 0.5
    for name in ("torchvision-batched", "onnx", "numpy"):
        assert len(NMS[name](at_threshold, np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64), 0.5)) == 2, name


def test_box_decode_variants_do_what_they_say():
    from harness.postprocess import decode_boxes
    from harness.profile import Profile

    reg = np.log(np.array([[2.0, 2.0, 20.0, 1.0]], np.float32))  # l, t, r, b in strides
    centre = np.array([[120.0, 4.0]], np.float32)
    stride = np.array([8.0], np.float32)
    base = Profile(input_size=128)
    np.testing.assert_allclose(decode_boxes(reg, centre, stride, base), [[104, 0, 128, 12]], rtol=1e-6)
    np.testing.assert_allclose(decode_boxes(reg, centre, stride, base.replace(box_decode="no-clip")),
                               [[104, -12, 280, 12]], rtol=1e-6)
    np.testing.assert_allclose(decode_boxes(reg, centre, stride, base.replace(box_decode="legacy-plus-one")),
                               [[104, 0, 128, 11]], rtol=1e-6)
    half = decode_boxes(np.array([[0.1234, 0.1, 0.1, 0.1]], np.float32), centre, stride,
                        base.replace(box_decode="fp16"))
    full = decode_boxes(np.array([[0.1234, 0.1, 0.1, 0.1]], np.float32), centre, stride, base)
    assert 0 < np.abs(half - full).max() < 0.1  # float16 rounding, visible but small


def test_point_placements_agree_at_the_trained_geometry_and_part_under_ceil_mode():
    from harness.postprocess import fcos_points

    trained = ((8, 16, 16), (16, 8, 8), (32, 4, 4))
    by_stride, by_spread = (fcos_points(trained, 128, placement) for placement in ("stride", "spread"))
    for a, b in zip(by_stride, by_spread):
        np.testing.assert_array_equal(a, b)
    assert by_stride[0][:2].tolist() == [[4, 4], [12, 4]] and by_stride[0][-1].tolist() == [112, 112]
    ceil = ((8, 17, 17), (16, 9, 9), (32, 5, 5))
    (stride_points, stride_scale), (spread_points, spread_scale) = (fcos_points(ceil, 128, p)
                                                                    for p in ("stride", "spread"))
    # stride placement keeps the 16 x 16 grid and adds a 17th row/column at 132; spread fits 17 into 128
    assert stride_points[16].tolist() == [132, 4] and stride_scale[0] == 8
    np.testing.assert_allclose(spread_points[16], [16.5 * 128 / 17, 0.5 * 128 / 17], rtol=1e-6)
    np.testing.assert_allclose(spread_scale[:289], 128 / 17, rtol=1e-6)
    from harness.errors import HarnessError
    from harness.profile import Profile
    from harness.tasks import get_task

    # offset 0 (YOLOX's grid): the cell's corner, half a step from where the head was trained to look
    corner, corner_scale = fcos_points(trained, 128, "stride-offset0")
    np.testing.assert_array_equal(corner, by_stride[0] - by_stride[1][:, None] / 2)
    np.testing.assert_array_equal(fcos_points(trained, 128, "spread-offset0")[0], corner)
    known = "stride, stride-offset0, spread, spread-offset0"
    with pytest.raises(HarnessError, match=f"head points 'grid' is not a point placement; known: {known}"):
        get_task("detect").predictions({}, [], Profile(input_size=128),
                                       {"type": "fcos", "points": "grid", "levels": []})


def test_user_variants_from_the_command_line(harness_cli, tmp_path):
    env = _plugin_env()
    result = harness_cli("sysnoise", "--axes", "color", "--limit", "30", "--variant",
                         "color=harness_test_variants:gray_world_color", "--json", "-", env=env)
    assert result.returncode == 0, result.stderr
    variants = {v["name"]: v for v in json.loads(result.stdout)["axes"][0]["variants"]}
    user = variants["harness_test_variants:gray_world_color"]
    assert user["status"] == "ok" and not user["identical_to_reference"] and user["kl"] > 0
    bad = harness_cli("sysnoise", "--axes", "color", "--variant", "color=nowhere_module:fn", env=env)
    assert bad.returncode == 2 and "cannot import color 'nowhere_module:fn'" in bad.stderr


def _plugin_env():
    import os
    from pathlib import Path

    plugins = str(Path(__file__).parent / "plugins")
    return {"PYTHONPATH": plugins + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_a_crashing_decoder_costs_only_its_own_cell(harness_cli, tmp_path):
    """The local executor: a decoder that kills its process (as a segfaulting C extension does) becomes one
    failed row; the worker is restarted and carries the pass on without it, from the pieces already done.
    --resume later takes the five finished rows from the store and tries the failed one again."""
    from harness.store import CellStore

    store = tmp_path / "cells.sqlite"
    crash = "decoder=harness_test_variants:decoder_that_kills_the_process"
    first = harness_cli("sysnoise", "--axes", "decoder", "--limit", "20", "--store", str(store), "--variant", crash,
                        "--json", "-", env=_plugin_env())
    assert first.returncode == 1, first.stderr  # README: a failed row makes the exit code 1
    report = json.loads(first.stdout)
    variants = {v["name"]: v for v in report["axes"][0]["variants"]}
    assert len(variants) == 6 and len(report["axes"][0]["variants"]) == 6
    crashed = variants[crash.split("=")[1]]
    assert crashed["status"] == "failed" and crashed["reason"] == "its worker process died (exit code 139) while running it"
    assert all(v["status"] == "ok" for name, v in variants.items() if v is not crashed)
    assert report["executor"]["worker_starts"] == 2
    assert report["executor"]["isolated_failures"] == [{"axis": "decoder", "variant": crashed["name"],
                                                         "reason": crashed["reason"]}]
    # the pass had done ffmpeg's piece (decoders run in name order) before the crash: the new worker takes
    # it back from the store and decodes only with the other five decoders
    assert report["counters"]["pieces_taken"] == 1 and report["counters"]["decodes"] == 20 * 5
    assert "resumed" not in report["counters"]  # the crashed row was isolated, nothing taken back
    cells = CellStore(store)
    assert cells.connection.execute("SELECT count(*) FROM pieces").fetchone()[0] == 0  # done: rows hold it all
    cells.close()
    again = harness_cli("sysnoise", "--axes", "decoder", "--limit", "20", "--store", str(store), "--resume",
                        "--variant", crash, "--json", "-", env=_plugin_env())
    resumed = json.loads(again.stdout)
    assert resumed["counters"]["resumed"] == 5 and resumed["executor"]["worker_starts"] == 2  # failed: tried again
    fresh = harness_cli("sysnoise", "--axes", "decoder", "--limit", "20", "--json", "-")
    recomputed = {v["name"]: v["delta"] for v in json.loads(fresh.stdout)["axes"][0]["variants"]}
    assert {n: v["delta"] for n, v in variants.items() if v is not crashed} == recomputed


def test_a_hanging_reference_is_bounded_by_the_cell_timeout(harness_cli, tmp_path):
    """The reference's decoder hangs: no variant can be measured, and the sweep stops after --cell-timeout
    with one line (exit 1) instead of running until killed from outside."""
    profile = tmp_path / "hang.toml"
    profile.write_text('[pre]\ndecoder = "harness_test_variants:stage_that_hangs"\n')
    started = time.monotonic()
    result = harness_cli("sysnoise", "--axes", "resize", "--limit", "4", "--profile", str(profile), "--allow-code",
                         "--cell-timeout", "3", env=_plugin_env(), timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("harness: error: the reference pass ran past "
                                                             "--cell-timeout (3 s")
    assert time.monotonic() - started < 120


def test_a_hanging_cell_times_out_alone(harness_cli, tmp_path):
    hang = "color=harness_test_variants:stage_that_hangs"
    page = tmp_path / "sweep.html"
    result = harness_cli("sysnoise", "--axes", "color", "--limit", "10", "--variant", hang, "--cell-timeout", "3",
                         "--json", "-", "--html", str(page), env=_plugin_env())
    assert result.returncode == 1, result.stderr  # the timed-out row failed; every report is still written
    variants = {v["name"]: v for v in json.loads(result.stdout)["axes"][0]["variants"]}
    hung = variants["harness_test_variants:stage_that_hangs"]
    assert hung["status"] == "failed" and hung["reason"].startswith("timed out: still running after 3 s")
    assert sum(v["status"] == "ok" for v in variants.values()) == len(variants) - 1 >= 8
    assert hung["delta"] is None and "delta per noise axis" in page.read_text()  # the page renders past it


class PieceShelf:
    """What the executor's relay store does with pieces, minus the pipe: kept pickled, as the store keeps them."""

    def __init__(self):
        self.pieces = {}

    def take_piece(self, key):
        import pickle

        return pickle.loads(self.pieces[key]) if key in self.pieces else None

    def keep_piece(self, key, context, piece):
        import pickle

        self.pieces[key] = pickle.dumps(piece)


def test_pieces_taken_back_replace_the_whole_pass(tmp_path):
    """A second pipeline given the first one's pieces decodes and infers nothing, and ends with the same
    predictions, output shapes and unreadable samples (a truncated JPEG) as the first."""
    import shutil

    from harness.data import load_dataset

    source = embedded_benchmark("classify")
    for sample in source.samples[:12]:
        (tmp_path / sample.id).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.path, tmp_path / sample.id)
    corrupt = tmp_path / source.samples[3].id
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    spec = resolve_model("resnet_tiny")
    dataset = load_dataset(tmp_path).aligned_to(spec.labels)
    requests = [Request(spec.profile, ModelConfig("torch", "cpu", "fp32")),
                Request(spec.profile.replace(color="bgr"), ModelConfig("onnxruntime", "cpu", "fp32"))]
    shelf, runs = PieceShelf(), []
    for _ in range(2):
        pipeline = StagedPipeline(export(spec), dataset, batch_size=4, chunk_size=4)
        pipeline.journal = ChunkJournal(shelf, "sweep")
        pipeline.prepare(requests)
        runs.append(pipeline)
    first, second = runs
    assert len(shelf.pieces) == 2 * 3 and second.counters["pieces_taken"] == 6
    assert second.counters["decodes"] == second.counters["inferences"] == 0 < first.counters["decodes"]
    assert second.failures == first.failures and list(first.failures) == [source.samples[3].id]
    assert second.output_shapes == first.output_shapes
    for request in requests:
        one, two = first.evaluate(request.profile, request.config), second.evaluate(request.profile, request.config)
        assert one.ids == two.ids and len(one.ids) == 11 and one.outputs_digest == two.outputs_digest


def _popen_as_a_terminal_would(args, **kwargs):
    """Popen with SIGINT at its default, as a shell in a terminal starts a command. A suite started in the
    background (`nohup make test &`) has SIGINT ignored, every child inherits that, and the Ctrl-C the test
    sends would be lost. A Python handler in this process becomes the default in the exec'd child."""
    import signal
    import subprocess

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


STOPPED_SWEEP = ["sysnoise", "--axes", "color", "--limit", "12", "--batch-size", "4", "--chunk-size", "4"]


@pytest.fixture(scope="module")
def uninterrupted_color_deltas(harness_cli) -> dict:
    """The sweep the stopped ones resume, run once without a stop (the expectation of every signal's case)."""
    fresh = harness_cli(*STOPPED_SWEEP, "--json", "-")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    return {v["name"]: v["delta"] for v in json.loads(fresh.stdout)["axes"][0]["variants"]}


# SIGKILL of the driver: tests/test_workers.py (its workers, as this one, go with it)
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_a_stopped_sweep_takes_its_worker_along_and_resumes_from_the_chunks_it_finished(tmp_path, stop,
                                                                                       uninterrupted_color_deltas):
    """Ctrl-C (SIGINT) or a cancelled job (SIGTERM) in the middle of the pass: the worker does not outlive the driver, the chunks already done stay in the store, and
    --resume takes them back instead of recomputing them; the rows equal an uninterrupted sweep's."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from harness.store import CellStore

    store = tmp_path / "cells.sqlite"
    harness = str(Path(sys.executable).with_name("harness"))
    common = [*STOPPED_SWEEP, "--store", str(store), "--json", "-"]
    # colours run in name order: bgr's first chunk is done, then the hanging converter blocks the pass
    running = _popen_as_a_terminal_would([harness, *common, "--variant", "color=harness_test_variants:stage_that_hangs"],
                                         env={**os.environ, **_plugin_env()}, stdout=subprocess.DEVNULL,
                                         stderr=(tmp_path / "stderr.txt").open("w"))
    deadline = time.monotonic() + 120
    done = 0
    while done == 0 and time.monotonic() < deadline and running.poll() is None:
        time.sleep(0.5)
        if store.exists():
            cells = CellStore(store)
            done = cells.connection.execute("SELECT count(*) FROM pieces").fetchone()[0]
            cells.close()
    children = Path(f"/proc/{running.pid}/task/{running.pid}/children").read_text().split()
    workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    number = getattr(signal, stop)
    running.send_signal(number)
    assert running.wait(60) == 128 + number and done >= 1 and len(workers) == 1
    worker = Path(f"/proc/{workers[0]}/stat")

    def stopped() -> bool:  # gone, or a zombie its (dead) parent can no longer reap
        return not worker.exists() or worker.read_text().split(")")[-1].split()[0] == "Z"

    for _ in range(50):  # the driver's `finally` stopped it
        if stopped():
            break
        time.sleep(0.1)
    assert stopped()
    # the user learns that the work done is not lost
    assert f"kept in {store}: run the same command with --resume" in (tmp_path / "stderr.txt").read_text()
    resumed = subprocess.run([harness, *common, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads(resumed.stdout)
    assert report["counters"]["pieces_taken"] >= 1
    assert {v["name"]: v["delta"] for v in report["axes"][0]["variants"]} == uninterrupted_color_deltas


# the Ray executor's isolation of a crash and a hang: tests/test_workers.py, on a two-node Ray cluster


def test_executor_and_timeout_errors_are_one_line(harness_cli):
    bad = harness_cli("sysnoise", "--axes", "color", "--executor", "slurm")
    assert bad.returncode == 2 and "--executor 'slurm': expected one of local, ray" in bad.stderr
    missing = harness_cli("sysnoise", "--axes", "color", "--dataset", "/nonexistent/folder")
    assert missing.returncode == 2 and "/nonexistent/folder" in missing.stderr and "Traceback" not in missing.stderr


def test_post_processing_variants_never_rerun_inference(monkeypatch):
    calls = []
    real_run = Session.run
    monkeypatch.setattr(Session, "run", lambda self, feeds: calls.append(1) or real_run(self, feeds))
    spec = resolve_model("fcos_tiny")
    dataset = embedded_benchmark("detect").limit(16).aligned_to(spec.labels)
    pipeline = StagedPipeline(export(spec), dataset, batch_size=64, bootstrap_rounds=20)
    reference = ModelConfig("torch", "cpu", "fp32")
    results = run_axes(pipeline, [AXES["nms"], AXES["box_decode"]], spec.profile, reference, "detect", spec.labels,
                       "map", "onnxruntime")
    assert len(calls) == 1 and pipeline.counters["inferences"] == 16  # one pass, every variant re-uses it
    by_name = {v["name"]: v for r in results for v in r["variants"]}
    assert by_name["numpy"]["identical_to_reference"] and by_name["onnx"]["identical_to_reference"]
    legacy = by_name["legacy-plus-one"]
    assert legacy["status"] == "ok" and not legacy["identical_to_reference"] and legacy["ci95"] is not None


def test_the_papers_findings_on_the_zoo_classifier():
    """On the full embedded split: decoders that change pixels flip predictions, pixel-identical ones are
    reported identical, FP16 stays near zero, and the ceil-mode flip is a significant loss."""
    spec = resolve_model("resnet_tiny")
    dataset = embedded_benchmark("classify").aligned_to(spec.labels)
    from harness.calibration import calibration_set

    pipeline = StagedPipeline(export(spec), dataset, batch_size=100, calibration=calibration_set(spec))
    reference = ModelConfig("torch", "cpu", "fp32")
    names = ("decoder", "precision", "ceil_mode")
    axes = dict(zip(names, run_axes(pipeline, [AXES[name] for name in names], spec.profile, reference, "classify",
                                    spec.labels, "top1", "onnxruntime")))
    decoders = {v["name"]: v for v in axes["decoder"]["variants"]}
    assert decoders["opencv"]["identical_to_reference"] and decoders["torchvision"]["identical_to_reference"]
    for name in ("ffmpeg", "simplejpeg-fast", "pil-draft-2"):
        assert not decoders[name]["identical_to_reference"] and decoders[name]["flip_rate"] > 0, name
    precisions = {v["name"]: v for v in axes["precision"]["variants"]}
    from harness.backends import get_backend

    openvino = [f"openvino-{p}" for p in ("fp16", "bf16") if p in get_backend("openvino").precisions("cpu")]
    # a CPU without BF16/FP16 instructions offers neither to OpenVINO: no row claims to measure them
    assert {"openvino-fp16", "openvino-bf16"} & set(precisions) == set(openvino)
    for name in ("onnxruntime-fp16", *openvino):
        assert abs(precisions[name]["delta"]) <= 0.005 and not precisions[name]["significant"], name
    ceil = axes["ceil_mode"]["variants"][0]
    assert ceil["significant"] and ceil["delta"] < -0.2
    # the pool after the 64x64 stem gives 33x33 maps under ceil mode (as torch's does); global pooling keeps
    # the logits' shape, so the report points at the pool, where the geometry starts to differ
    assert ceil["output_shapes_changed"] == {}
    expected = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)(torch.zeros(1, 16, 64, 64)).shape[1:]
    assert ceil["first_reshaped_tensor"] == {"tensor": "max_pool2d", "op_type": "MaxPool",
                                             "shapes": [[16, 32, 32], list(expected)]}
    assert all(v["first_reshaped_tensor"] is None for v in axes["precision"]["variants"])
    assert precisions["onnxruntime-fp16"]["precision_effective"] == "fp16"
    # what really executed, per model variant: ORT's CPU provider runs the FP16 graph's convolutions in fp32,
    # and fuses only part of the INT8 graph into integer kernels (tests/test_execution.py counts them)
    assert precisions["onnxruntime-fp16"]["execution"]["matches_request"] is False
    assert 0 < precisions["onnxruntime-int8"]["execution"]["int8_share"] < 1
    assert all(v["execution"] is None for v in decoders.values())  # pre-processing runs the reference model
    if not openvino:
        return
    # the precision each variant really ran, as OpenVINO itself reports it for that hint on this CPU
    import openvino as ov

    core = ov.Core()
    hinted = core.compile_model(core.read_model(str(export(spec).onnx_path)), "CPU",
                                {"INFERENCE_PRECISION_HINT": "f16"}).get_property("INFERENCE_PRECISION_HINT")
    runs = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}[hinted.get_type_name()]
    assert precisions["openvino-fp16"]["precision_effective"] == runs
    assert precisions["openvino-bf16"]["precision_effective"] == "bf16"
    assert precisions["onnxruntime-fp16"]["precision_effective"] == "fp16"
    if runs == "bf16":  # f16 not honoured: the 'fp16' row is the bf16 row, and the summary counts it once
        assert precisions["openvino-bf16"]["identical_to"] == "openvino-fp16"


def test_the_papers_findings_on_the_zoo_detector():
    """Upsample mode, box decoding and point placement move the detector's mAP significantly (bootstrap over
    images); ceil mode, with the stride point placement the head is trained with (FCOS, mmdetection), only
    adds a border row and column of points: a small change the 120 images cannot tell from chance. Under
    ceil mode a runtime that spreads the points over the input instead moves every point by 16/17."""
    spec = resolve_model("fcos_tiny")
    dataset = embedded_benchmark("detect").aligned_to(spec.labels)
    pipeline = StagedPipeline(export(spec), dataset, batch_size=60, bootstrap_rounds=100)
    reference = ModelConfig("torch", "cpu", "fp32")
    names = ("ceil_mode", "upsample", "box_decode", "points")
    axes = dict(zip(names, run_axes(pipeline, [AXES[name] for name in names], spec.profile, reference, "detect",
                                    spec.labels, "map", "onnxruntime")))
    ceil = axes["ceil_mode"]["variants"][0]
    assert -0.01 < ceil["delta"] < 0 and not ceil["significant"] and ceil["ci95"][0] < 0 < ceil["ci95"][1]
    points = {v["name"]: v for v in axes["points"]["variants"]}
    assert points["spread"]["identical_to_reference"]  # the two grids coincide at the trained geometry
    assert points["stride-offset0"]["significant"] and points["stride-offset0"]["delta"] < -0.2
    assert points["spread-offset0"]["identical_to"] == "stride-offset0"
    # ceil mode meeting a spread placement: the same rewritten graph, every point moved
    from harness.inference import GRAPH_BASELINE
    from harness.noise.sweep import compare_variant

    rewritten = ModelConfig("onnxruntime", "cpu", "fp32", (("ceil_mode", True),))
    unrewritten = ModelConfig("onnxruntime", "cpu", "fp32", GRAPH_BASELINE)
    spread = spec.profile.replace(points="spread")
    pipeline.prepare([Request(spread, rewritten), Request(spec.profile, unrewritten)])
    moved = compare_variant(pipeline, "detect", spec.labels, spread, rewritten, spec.profile, unrewritten, "map")
    assert moved.delta < -0.2
    # the report says why ceil mode changes anything: every map grows by one point a side (16 -> 17)
    changed = ceil["output_shapes_changed"]
    assert len(changed) == 9 and changed["cls_logits_s8"] == [[10, 16, 16], [10, 17, 17]]
    assert changed["centerness_s32"] == [[1, 4, 4], [1, 5, 5]]
    from harness.report.sysnoise import shape_notes

    assert shape_notes({"model": {"name": "fcos_tiny"}, "axes": [axes["ceil_mode"], axes["upsample"]]}) == [
        "fcos_tiny ceil_mode `ceil` reshapes the model from max_pool2d (MaxPool) 24x32x32 -> 24x33x33 on; outputs "
        "cls_logits_s8 10x16x16 -> 10x17x17, box_reg_s8 4x16x16 -> 4x17x17, centerness_s8 1x16x16 -> 1x17x17, "
        "and 6 more"]
    upsample = {v["name"]: v for v in axes["upsample"]["variants"]}
    assert all(v["output_shapes_changed"] == {} for v in axes["upsample"]["variants"])
    assert all(upsample[f"nearest-{mode}"]["identical_to_reference"]  # same picks at 2x
               for mode in ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel"))
    assert upsample["linear-align_corners"]["significant"]
    legacy = next(v for v in axes["box_decode"]["variants"] if v["name"] == "legacy-plus-one")
    assert legacy["significant"] and legacy["delta"] < -0.01


def test_bootstrap_scope_largest_gives_only_the_largest_change_an_interval(tmp_path):
    """The README's setting: per axis, only the variant with the largest |Δ mAP| is bootstrapped; the
    interval equals the one a full-scope sweep gives it (same seeded rounds), and the store keeps it."""
    from harness.store import CellStore

    spec = resolve_model("fcos_tiny")
    dataset = embedded_benchmark("detect").limit(40).aligned_to(spec.labels)
    reference = ModelConfig("onnxruntime", "cpu", "fp32")
    rows = {}
    for scope in ("all", "largest"):
        store = CellStore(tmp_path / f"{scope}.sqlite")
        pipeline = StagedPipeline(export(spec), dataset, batch_size=40, bootstrap_rounds=200, bootstrap_scope=scope)
        rows[scope] = run_axis(pipeline, AXES["box_decode"], spec.profile, reference, "detect", spec.labels, "map",
                               "onnxruntime", store=store)["variants"]
        store.close()
    measured = [v for v in rows["all"] if not v["identical_to_reference"]]
    assert len(measured) >= 2 and all(v["ci95"] is not None for v in measured)
    largest = max(measured, key=lambda v: abs(v["delta"]))["name"]
    by_name = {v["name"]: v for v in rows["largest"]}
    assert by_name[largest]["ci95"] == next(v["ci95"] for v in measured if v["name"] == largest)
    assert all(v["ci95"] is None for v in rows["largest"] if v["name"] != largest)
    store = CellStore(tmp_path / "largest.sqlite")
    pipeline = StagedPipeline(export(spec), dataset, batch_size=40, bootstrap_rounds=200, bootstrap_scope="largest")
    resumed = run_axis(pipeline, AXES["box_decode"], spec.profile, reference, "detect", spec.labels, "map",
                       "onnxruntime", store=store, resume=True)["variants"]
    store.close()
    assert all(v.get("resumed") for v in resumed)
    assert next(v for v in resumed if v["name"] == largest)["ci95"] == by_name[largest]["ci95"]


def test_a_variant_that_every_sample_fails_in_is_one_failed_row_that_says_why(harness_cli):
    """No shared sample is no measurement: the row fails with the first failure, never a numpy error
    (an AxisError on classifiers) or an "ok" row with a NaN mAP (detectors), as a GPU image without PyAV
    showed for the ffmpeg decoder."""
    nothing = "harness_test_variants:decoder_that_reads_nothing"
    for model in ("resnet_tiny", "fcos_tiny"):
        result = harness_cli("sysnoise", model, "--axes", "decoder", "--limit", "8", "--variant",
                             f"decoder={nothing}", "--bootstrap-rounds", "0", "--json", "-", env=_plugin_env())
        assert result.returncode == 1, result.stderr  # a failed row makes the exit code 1
        row = {v["name"]: v for v in json.loads(result.stdout)["axes"][0]["variants"]}[nothing]
        assert row["status"] == "failed" and row["metric"] is None, (model, row)
        assert row["reason"] == ("SampleError: no sample was evaluated by both the variant and its baseline: the "
                                 f"variant read 0 of 8 (first failure: {nothing}: {nothing} cannot decode it "
                                 "(ValueError: not a format this decoder reads))"), (model, row["reason"])


def test_a_decoder_whose_package_is_missing_is_listed_unavailable_not_run(harness_cli, tmp_path):
    """PyAV (ffmpeg) and simplejpeg absent, as in a GPU image beside a --no-deps install: --list-axes names
    each with its package, and a sweep runs the other decoders."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nfor name in ('av', 'simplejpeg'):\n    sys.modules[name] = None  # not installed\n")
    env = {"PYTHONPATH": str(tmp_path)}
    listed = harness_cli("sysnoise", "resnet_tiny", "--list-axes", env=env).stdout.splitlines()
    decoder = listed[next(k for k, line in enumerate(listed) if line.startswith("decoder (pre)")) + 1]
    assert "ffmpeg: the av package is not installed; simplejpeg-fast: the simplejpeg package is not installed" \
        in decoder
    result = harness_cli("sysnoise", "resnet_tiny", "--axes", "decoder", "--limit", "8", "--json", "-", env=env)
    assert result.returncode == 0, result.stderr
    names = [v["name"] for v in json.loads(result.stdout)["axes"][0]["variants"]]
    assert names == ["opencv", "torchvision", "pil-draft-2"] + (["nvjpeg"] if "nvjpeg:" not in decoder else [])
