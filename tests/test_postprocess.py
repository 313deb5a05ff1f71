"""The harness's NMS against torchvision's own, called directly, in a fresh process: the kernel is loaded
without importing the torchvision package (its import costs 4+ s per process), and the kept indices are
torchvision.ops.batched_nms's and nms's exactly, on both of batched_nms's strategies."""
import subprocess
import sys

CHECK = r'''
import sys
import numpy as np
from harness.postprocess import nms_torchvision_agnostic, nms_torchvision_batched

rng = np.random.default_rng(0)
cases = []
for count in (0, 1, 60, 999, 1001, 3000):  # 4 coordinates a box: up to 999 boxes the coordinate trick
    corners = rng.uniform(0, 200, (count, 2))
    boxes = np.hstack([corners, corners + rng.uniform(4, 60, (count, 2))]).astype(np.float32)
    scores = rng.choice(np.linspace(0.05, 0.95, 40), count).astype(np.float32)  # ties on purpose
    labels = rng.integers(0, 7, count).astype(np.int64)
    cases.append((boxes, scores, labels))
ours = [(nms_torchvision_batched(b, s, l, 0.5), nms_torchvision_agnostic(b, s, l, 0.5)) for b, s, l in cases]
assert "torchvision" not in sys.modules and "torch._dynamo" not in sys.modules, "torchvision was imported"

import torch
from torchvision.ops import batched_nms, nms

for (boxes, scores, labels), (batched, agnostic) in zip(cases, ours):
    b, s, l = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)
    assert batched.dtype == np.int64 and np.array_equal(batched, batched_nms(b, s, l, 0.5).numpy()), len(boxes)
    assert np.array_equal(agnostic, nms(b, s, 0.5).numpy()), len(boxes)
    assert len(boxes) < 999 or 0 < len(agnostic) < len(batched) < len(boxes)  # both suppress, classes apart
print("ok")
'''


def test_nms_is_torchvisions_without_importing_torchvision():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
