#!/usr/bin/env bash
# The GPU check, for a maintainer with an NVIDIA GPU: `bash benchmarks/gpu_check.sh [OUT]` (default
# gpu-check/). Beside the machine's own CUDA torch (a venv with --system-site-packages; the harness
# installed --no-deps, so its torch pin does not replace it), it installs what else the harness needs,
# from WHEELS=DIR when set (an offline machine: fill it with `make gpu-wheels`), else from PyPI. Then it
# runs the GPU tests (`make test-gpu`'s mark), a GPU sweep of two zoo models with the GPU axes, and
# benchmarks/gpu_check.py (nvJPEG vs Pillow pixels, torch CUDA throughput), each under a time limit so the
# whole stays under 8 minutes on one GPU. Everything it prints goes to OUT too.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
started=$(date +%s)
python=${PYTHON:-}
if [ -z "$python" ]; then
    python3 -m venv --system-site-packages .gpu-venv || exit 2
    python=.gpu-venv/bin/python
    source_args=()
    if [ -n "${WHEELS:-}" ]; then source_args=(--no-index --find-links "$WHEELS"); fi
    "$python" -m pip install -q --no-deps -e . || exit 2
    # what the machine's image may lack; torch, torchvision, onnx, onnxruntime, opencv, numpy stay its own
    "$python" -m pip install -q "${source_args[@]}" onnxscript pycocotools "faster-coco-eval>=1.8,<1.9" simplejpeg \
        onnxconverter-common typer rich scipy matplotlib pillow pytest pytest-xdist || exit 2
fi
"$python" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
harness="$(dirname "$python")/harness"
status=0
# the test files that hold GPU tests: collecting the whole suite would need every test-only package
timeout 240 "$python" -m pytest -q -rs -p no:cacheprovider -m needs_device tests/test_gpu_axes.py \
    tests/test_backends.py tests/test_noise_variants.py tests/test_drift.py tests/backends/test_caches.py \
    | tee "$out/test-gpu.txt" || status=1
for model in mobilenetv2_tiny resnet_tiny; do
    timeout 120 "$harness" sysnoise "$model" --axes tf32,cudnn,compile,precision,decoder \
        --json "$out/sweep-$model.json" --markdown "$out/sweep-$model.md" || status=1
done
timeout 90 "$python" benchmarks/gpu_check.py "$out" || status=1
echo "gpu_check: $(( $(date +%s) - started )) s, exit $status; results in $out/"
exit $status
