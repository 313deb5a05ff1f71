"""The GPU noise axes (tf32, cudnn, compile, the CUDA precisions, the nvJPEG decoder): what a machine
without a GPU says of them, and, where torch sees a CUDA GPU (`make test-gpu`), what they measure."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.backends import get_backend, nvidia_gpu_present
from harness.errors import UsageError
from harness.export import export
from harness.model import resolve_model
from harness.noise import cuda_missing


def test_list_axes_names_each_gpu_axis_and_why_it_has_no_variant_here(harness_cli):
    result = harness_cli("sysnoise", "resnet_tiny", "--list-axes")
    lines = result.stdout.splitlines()
    for axis in ("tf32", "cudnn", "compile"):
        listed = lines[next(k for k, line in enumerate(lines) if line.startswith(f"{axis} (model)")) + 1]
        if cuda_missing():
            assert listed.strip() == f"unavailable here: {cuda_missing()}"
        else:
            assert "unavailable" not in listed and listed.strip()
    decoder = lines[next(k for k, line in enumerate(lines) if line.startswith("decoder (pre)")) + 1]
    assert ("unavailable here: nvjpeg: " in decoder) == (cuda_missing() is not None)
    if not nvidia_gpu_present():
        assert cuda_missing() == "no NVIDIA GPU on this machine"


def test_cuda_numerics_are_refused_on_the_cpu_in_one_line():
    spec = resolve_model("resnet_tiny")
    for options in ({"tf32": True}, {"cudnn": "benchmark"}, {"compile": "default"}):
        with pytest.raises(UsageError, match="options of the CUDA device, not of cpu"):
            get_backend("torch").load(export(spec), "cpu", "fp32", **options)


def _gpu_sweep(harness_cli, tmp_path, model: str, *args: str) -> dict:
    """A GPU sweep's rows by (axis, variant); benchmarks/gpu_check.sh keeps the report beside its results."""
    out = tmp_path / "gpu.json"
    result = harness_cli("sysnoise", model, *args, "--json", str(out))
    assert out.exists(), result.stderr
    if os.environ.get("GPU_CHECK_OUT"):
        name = "sweep-compile" if "compile" in args else "sweep"
        shutil.copy(out, Path(os.environ["GPU_CHECK_OUT"]) / f"{name}-{model}.json")
    report = json.loads(out.read_text())
    return {(axis["axis"], row["name"]): row for axis in report["axes"] for row in axis["variants"]}


@pytest.mark.needs_device("torch", "cuda")
def test_gpu_axes_sweep_measures_tf32_cudnn_autocast_and_nvjpeg(harness_cli, tmp_path):
    """mobilenetv2_tiny (its 1x1 convolutions and classifier are matrix multiplies, which TF32 rounds), all
    1,000 images: the TF32 row differs from TF32 off; autocast FP16 and BF16 differ from FP32; every GPU row
    ran. Measured on an H200 (torch 2.11, CUDA 13): KL 3.6e-7 (TF32), 2.2e-6 (FP16), 1.3e-4 (BF16); cuDNN's
    benchmark-selected algorithms gave outputs identical to the deterministic ones."""
    rows = _gpu_sweep(harness_cli, tmp_path, "mobilenetv2_tiny", "--axes", "tf32,cudnn,precision,decoder")
    for key in [("tf32", "on"), ("cudnn", "benchmark"), ("precision", "torch-cuda-fp16"),
                ("precision", "torch-cuda-bf16"), ("decoder", "nvjpeg")]:
        assert rows[key]["status"] == "ok", (key, rows[key].get("reason"))
    for key in [("tf32", "on"), ("precision", "torch-cuda-fp16"), ("precision", "torch-cuda-bf16")]:
        assert not rows[key]["identical_to_reference"] and rows[key]["kl"] > 0, key
    assert rows[("tf32", "on")]["changes"]["options"] == {"tf32": True}


@pytest.mark.needs_device("torch", "cuda")
def test_gpu_compile_axis_runs_both_inductor_modes(harness_cli, tmp_path):
    """torch.compile default and max-autotune against eager CUDA FP32 on 64 images (max-autotune benchmarks
    Triton kernels for every convolution: ~2 minutes on an H200 here, over 5 on 1,000 images, whose last
    partial batch compiles again). Inductor's fusions reorder float sums: a change, but a small one
    (measured KL 2.7e-13 default, 3.2e-13 max-autotune, no top-1 flip)."""
    rows = _gpu_sweep(harness_cli, tmp_path, "mobilenetv2_tiny", "--axes", "compile", "--limit", "64")
    for mode in ("default", "max-autotune"):
        row = rows[("compile", mode)]
        assert row["status"] == "ok" and row["kl"] < 1e-6, (mode, row.get("reason"), row.get("kl"))
        assert row["changes"]["options"] == {"compile": mode}


@pytest.mark.needs_device("torch", "cuda")
def test_nvjpeg_decodes_the_benchmark_jpegs_close_to_pillow():
    """nvJPEG's IDCT and chroma upsampling are its own: over the benchmark's first 64 JPEGs its pixels
    differ from Pillow's by about one level on average (measured on an H200: 1.05; 19 of 64 images
    identical), never by a whole-image shift or a channel swap (tens of levels). Single pixels at saturated
    colour edges differ by up to 108 levels there, so no per-pixel bound is asserted."""
    from harness.data import embedded_benchmark
    from harness.preprocess import decode_nvjpeg, decode_pil

    means, identical = [], 0
    for sample in embedded_benchmark("classify").limit(64).samples:
        data = sample.path.read_bytes()
        gpu, cpu = decode_nvjpeg(data).astype(np.int16), decode_pil(data).astype(np.int16)
        assert gpu.shape == cpu.shape
        means.append(np.abs(gpu - cpu).mean())
        identical += bool(np.array_equal(gpu, cpu))
    assert len(means) == 64 and np.mean(means) < 2 and identical >= 1


def test_a_variants_load_options_are_its_own_and_not_its_baselines():
    """TF32 on is the variant's; its baseline is the same backend at FP32 with the defaults (TF32 off)."""
    from harness.noise import Variant
    from harness.noise.sweep import variant_configs
    from harness.placement import Placement

    variant = Variant("on", target=Placement("torch", "cuda", "fp32"), options={"tf32": True},
                      baseline="same-backend-fp32")
    config, baseline = variant_configs(variant, None)
    assert config.options == (("tf32", True),) and baseline.options == ()
    assert config.placement == baseline.placement == Placement("torch", "cuda", "fp32")


def test_the_gpu_check_script_runs_its_steps_under_one_deadline(tmp_path):
    """benchmarks/gpu_check.sh, as a maintainer runs it on a GPU (device time is scarce: a broken script
    wastes a run): with the harness's own python it runs the GPU tests (here they skip with their reasons)
    and says what each step did; a deadline already spent skips every step and says so."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"

    def check(out, **env):
        return subprocess.run(["bash", str(script), str(out)], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable, **env})

    done = check(tmp_path / "run", STEPS="measurements tests", DEADLINE="240")
    log = (tmp_path / "run" / "gpu_check.log").read_text()
    assert log == done.stdout  # everything it prints is kept in OUT
    assert "gpu_check: tests: exit 0 after" in log, log[-3000:]
    if cuda_missing():
        assert f"gpu_check: {cuda_missing()}: nothing to measure" in log and done.returncode == 1
        assert "SKIPPED" in log and "torch:cuda" in log
    spent = check(tmp_path / "late", DEADLINE="10")
    lines = [line for line in spent.stdout.splitlines() if line.startswith("gpu_check:")]
    assert lines[:-1] == [f"gpu_check: {step} skipped: the 10 s deadline is reached" for step in
                          ("measurements", "tests", "sweep resnet_tiny", "sweep fcos_tiny",
                           "compile sweep resnet_tiny")], lines
    assert spent.returncode == 1 and lines[-1].endswith("exit 1; results in " + str(tmp_path / "late") + "/")
