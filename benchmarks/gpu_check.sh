#!/usr/bin/env bash
# The GPU check, for a maintainer with an NVIDIA GPU: `bash benchmarks/gpu_check.sh [OUT]` (default
# gpu-check/). Beside the machine's own CUDA torch, it installs the harness (editable, --no-deps, so its torch
# pin does not replace that torch) and what else the harness needs and the machine lacks, from WHEELS=DIR when
# set (an offline machine: fill it with `make gpu-wheels`), else from PyPI. Then, most telling first, each
# step under a time limit and all of it within DEADLINE seconds (default 480, so a 15-minute device budget
# leaves room for a rerun): benchmarks/gpu_check.py (nvJPEG vs Pillow pixels, torch CUDA throughput), the GPU
# tests (`make test-gpu`'s mark), and GPU sweeps of the zoo over the GPU axes. Everything it prints goes to
# OUT too; a step cut by the deadline says so and the others' results stay.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
started=$(date +%s)
deadline=${DEADLINE:-480}
python=${PYTHON:-}
if [ -z "$python" ]; then
    machine=${MACHINE_PYTHON:-python3}
    venv=.gpu-venv
    rm -rf "$venv"
    "$machine" -m venv --without-pip --system-site-packages "$venv" || exit 2
    python=$venv/bin/python
    # a venv made from a venv (as GPU images ship torch) sees the base interpreter's packages, not the
    # machine's torch: a .pth puts the machine interpreter's own site folders after the venv's
    site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$machine" -c 'import site; print("\n".join(site.getsitepackages()))' > "$site/_machine_site.pth"
    # the machine's pip installs into the venv (pip --python): no pip or network needed inside it; a package
    # the machine already has counts as satisfied and stays the machine's
    install=("$machine" -m pip --python "$python" install -q --no-deps)
    if [ -n "${WHEELS:-}" ]; then install+=(--no-index --find-links "$WHEELS"); fi
    "${install[@]}" --no-build-isolation -e . > "$out/install.log" 2>&1 \
        && "${install[@]}" onnxscript onnx-ir ml-dtypes pycocotools "faster-coco-eval>=1.8,<1.9" simplejpeg \
            onnxconverter-common typer rich scipy matplotlib pillow pytest pluggy iniconfig pytest-xdist execnet \
            >> "$out/install.log" 2>&1 \
        || { tail -30 "$out/install.log"; exit 2; }
fi
"$python" - <<'PY'
import torch, torchvision
from harness.backends import nvidia_gpu_present
from harness.noise import cuda_missing
print("torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__,
      "| GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
      "| nvidia_gpu_present", nvidia_gpu_present(), "| cuda_missing", cuda_missing())
PY
harness="$(dirname "$python")/harness"
status=0

left() { echo $(( deadline - ($(date +%s) - started) )); }
# step LIMIT NAME COMMAND...: runs COMMAND under min(LIMIT, the time left); says when it was cut or skipped
step() {
    local limit=$1 name=$2; shift 2
    local budget; budget=$(left)
    if [ "$budget" -lt 20 ]; then echo "gpu_check: $name skipped: the ${deadline} s deadline is reached"; status=1; return; fi
    if [ "$budget" -lt "$limit" ]; then limit=$budget; fi
    local began; began=$(date +%s)
    echo "gpu_check: $name (limit ${limit} s)"
    timeout "$limit" "$@"
    local rc=$?
    echo "gpu_check: $name: exit $rc after $(( $(date +%s) - began )) s$([ $rc -eq 124 ] && echo ', cut by its time limit')"
    [ $rc -eq 0 ] || status=1
}

# STEPS, TESTS_K, SWEEP_MODELS and SWEEP_AXES narrow a rerun to what a first run left undone
steps=${STEPS:-measurements tests sweeps}
[[ " $steps " == *" measurements "* ]] && step 120 measurements "$python" benchmarks/gpu_check.py "$out"
# the files that hold GPU tests: collecting the whole suite would need every test-only package
export GPU_CHECK_OUT="$out"  # the GPU sweep test keeps its report there
[[ " $steps " == *" tests "* ]] && step 300 tests "$python" -m pytest -q -rs -v -p no:cacheprovider --durations=10 \
    ${TESTS_K:+-k "$TESTS_K"} \
    -m needs_device tests/test_gpu_axes.py tests/test_backends.py tests/test_noise_variants.py \
    tests/test_drift.py tests/backends/test_caches.py tests/backends/test_contract.py
# the zoo's other two models over the GPU axes (mobilenetv2_tiny's sweeps are the tests'); compile on 64 images:
# max-autotune benchmarks Triton kernels for every convolution shape (~1 minute for resnet_tiny on an H200)
if [[ " $steps " == *" sweeps "* ]]; then
    for model in ${SWEEP_MODELS:-resnet_tiny fcos_tiny}; do
        step 150 "sweep $model" "$harness" sysnoise "$model" --axes "${SWEEP_AXES:-tf32,cudnn,precision,decoder}" \
            --json "$out/sweep-$model.json"  # its table is in the log: the device returns 8 files at most
    done
    step 150 "compile sweep resnet_tiny" "$harness" sysnoise resnet_tiny --axes compile --limit 64 \
        --json "$out/sweep-compile-resnet_tiny.json"
fi
echo "gpu_check: $(( $(date +%s) - started )) s, exit $status; results in $out/"
exit $status
