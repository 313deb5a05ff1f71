"""Provenance: what produced a report, so two reports can be told apart (DESIGN.md)."""
from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16",
                         "amx_int8", "fma", "f16c", "neon", "asimd", "sve")


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return [f for f in CPU_FLAGS_OF_INTEREST if f in present]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def provenance(threads: int | None, seeds: dict, exported=None, dataset_sha256: str | None = None,
               backends: list[str] = ()) -> dict:
    from harness.backends import get_backend

    return {
        "harness": _version("harness"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "seeds": seeds,
        "packages": {name: _version(name) for name in ("torch", "torchvision", "onnx", "numpy", "pillow",
                                                       "opencv-python-headless", "faster-coco-eval")},
        "backends": {name: get_backend(name).version() for name in backends},
        "exporter": exported.exporter if exported else None,
        "opset": exported.opset if exported else None,
        "dataset_sha256": dataset_sha256,
    }
