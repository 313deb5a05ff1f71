"""Backend adapters and their registry (entry-point group `harness.backends`).

A backend only runs models: `load(model, device, precision) -> Session`, `Session.run(feeds) -> outputs`.
It never compares, decodes boxes or computes metrics (harness/compare, harness/postprocess do, once for
all backends). Heavy packages are imported inside the adapters, so `harness --help` and an install
without a backend's package still work, and `available()` says what is missing.
"""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from importlib.metadata import PackageNotFoundError, entry_points
from importlib.metadata import version as package_version

import numpy as np

from harness.errors import BackendUnavailable, InputError, UnknownName, UsageError

GROUP = "harness.backends"
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
QUANTIZED = ("int8", "int4")  # a build that quantizes some ops and leaves others in float
# options any backend may be handed and leave alone: scheduling and memory hints (idle threads not spinning;
# no memory pool for outputs the caller keeps), and the calibration data that only an INT8 build consumes
IGNORABLE_OPTIONS = ("spinning", "calibration", "arena")


class Session(ABC):
    """A model loaded on one backend/device/precision. Subclasses implement `_run`; a session whose
    outputs are looked up rather than computed (recorded on a target) sets uses_sample_ids and
    implements `run_ids`.

    Taps (intermediate tensors, by ONNX tensor name): `run(feeds, taps=[...], tap_method=...)` also returns
    the tapped tensors the backend can show; `tappable(names, method)` says which those are and why the
    others are not. Methods, in each adapter's `tap_methods` (first = default): `graph-outputs` (the
    tensors marked as outputs of the graph it compiles; may change what fuses), `kernel-boundary` (only
    tensors that are outputs of kernels in the untapped compile: does not perturb), `forward-hooks` (torch
    module outputs, aligned through the export's name map)."""

    uses_sample_ids = False
    tap_methods: tuple[str, ...] = ()
    fixed_batch: int | None = None  # the graph's fixed batch (Backend.load sets it from the model)

    def __init__(self, backend: str, device: str, precision: str, input_names, output_names,
                 precision_effective: str | None = None, graph=None, load_precision: str | None = None):
        self.backend, self.device, self.precision = backend, device, precision
        self.precision_effective = precision_effective or precision
        self.input_names, self.output_names = tuple(input_names), tuple(output_names)
        # the ONNX file this session compiled (an FP16 or QDQ graph for those precisions), and the precision
        # that loads a cut of that file the same way (fp32 for a graph already converted; the hint for OV)
        self.graph, self.load_precision = graph, load_precision or precision
        self._tap_runners: dict = {}
        self._tappable_cache: dict = {}
        self._execution: dict | None = None

    def execution(self) -> dict:
        """What this session really executes, as its runtime reports it (`execution_record`), judged
        against what was asked; found once, on first request (it may compile or profile the model again)."""
        if self._execution is None:
            try:
                self._execution = execution_record(self.precision, *self._executed())
            except Exception as err:  # noqa: BLE001 - an unknown is reported as one, never a crashed row
                self._execution = {"recorded": False, "source": f"{type(err).__name__}: {err}",
                                   "matches_request": None, "mismatch": None, "int8_share": None}
        return self._execution

    def _executed(self) -> tuple[dict[str, int], dict[str, int] | None, str | None, str]:
        """({precision: compute ops}, {device or execution provider: nodes} or None, the one asked for,
        where the numbers come from)."""
        raise NotImplementedError(f"{self.backend}: this adapter does not record what executed")

    def tappable(self, names, method: str | None = None) -> tuple[list[str], dict[str, str]]:
        """(the names this session can show with `method`, in the given order; {name: why not} for the rest).
        Answered once per (names, method): adapters read the graph to know."""
        method = self._tap_method(method)
        key = (tuple(names), method)
        if key not in self._tappable_cache:
            observable, reasons = self._tappable(list(names), method)
            shown = set(observable)
            self._tappable_cache[key] = ([n for n in names if n in shown],
                                         {n: reasons.get(n, "not observable") for n in names if n not in shown})
        observable, reasons = self._tappable_cache[key]
        return list(observable), dict(reasons)

    def _tap_method(self, method: str | None) -> str:
        if not self.tap_methods:
            raise BackendUnavailable(f"{self.backend}: this session cannot show intermediate tensors")
        if method is None:
            return self.tap_methods[0]
        if method not in self.tap_methods:
            raise UsageError(f"{self.backend}: tap method {method!r} is not offered "
                             f"(offered: {', '.join(self.tap_methods)})")
        return method

    def _tappable(self, names: list[str], method: str) -> tuple[list[str], dict[str, str]]:
        raise BackendUnavailable(f"{self.backend}: this session cannot show intermediate tensors")

    def _tap_runner(self, names: list[str], method: str):
        """A callable feeds -> {output and tapped name: array} for names already known to be tappable."""
        raise BackendUnavailable(f"{self.backend}: this session cannot show intermediate tensors")

    def run(self, feeds: dict[str, np.ndarray], taps=None, tap_method: str | None = None) -> dict[str, np.ndarray]:
        """feeds: {input name: float32[N, ...] or int64[N, L]} -> {output name: array[N, ...]} (plus each tap it can show);
        checks once for all backends."""
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise InputError(f"{self.backend}: missing input(s) {', '.join(sorted(missing))}; "
                             f"the model takes {', '.join(self.input_names)}")
        for name in self.input_names:
            array = feeds[name]
            if array.dtype not in (np.float32, np.int64):
                raise InputError(f"{self.backend}: input {name!r} is {array.dtype}, expected float32 (an image) "
                                 "or int64 (token ids, an attention mask)")
        checked = {name: feeds[name] for name in self.input_names}
        if self.fixed_batch and any(len(array) != self.fixed_batch for array in checked.values()):
            return self._run_in_fixed_batches(checked, taps, tap_method)
        if taps:
            method = self._tap_method(tap_method)
            observable, _ = self.tappable(list(taps), method)
            key = (tuple(observable), method)
            if key not in self._tap_runners:
                self._tap_runners = {key: self._tap_runner(observable, method)}  # one tapped compile kept
            outputs = self._tap_runners[key](checked)
            return {name: np.asarray(outputs[name]) for name in (*self.output_names, *observable) if name in outputs}
        outputs = self._run(checked)
        return {name: np.asarray(outputs[name]) for name in self.output_names}

    def _run_in_fixed_batches(self, feeds: dict[str, np.ndarray], taps, tap_method) -> dict[str, np.ndarray]:
        """A graph compiled for a fixed batch (an export at batch 1) run on any number of samples: that many
        at a time, the last batch filled up with copies of its last sample, whose outputs are dropped."""
        size = self.fixed_batch
        count = len(next(iter(feeds.values())))
        parts: dict[str, list] = {}
        for start in range(0, count, size):
            chunk = {}
            for name, array in feeds.items():
                piece = array[start:start + size]
                chunk[name] = np.concatenate([piece, np.repeat(piece[-1:], size - len(piece), axis=0)]) \
                    if len(piece) < size else piece
            for name, value in self.run(chunk, taps, tap_method).items():
                parts.setdefault(name, []).append(value)
        return {name: np.concatenate(values)[:count] for name, values in parts.items()}

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The adapter's inference: feeds already checked by run()."""


def execution_record(requested: str, by_precision: dict[str, int], placement: dict[str, int] | None,
                     expected_placement: str | None, source: str) -> dict:
    """A session's execution judged against the request: `matches_request` is False when a fp32/fp16/bf16
    request ran any compute op in another precision (OpenVINO's f16 hint run as bf16; ONNX Runtime's CPU
    provider running an FP16 graph's convolutions in fp32), when an int8 (int4) request ran no compute op in
    int8 (int4), or when any node ran on another device or execution provider than the one asked for. An int8
    build that leaves some ops in float matches, and says how much ran int8 (`int8_share`); a gate can
    require a minimum share (min_int8_share)."""
    total = sum(by_precision.values())
    int8 = by_precision.get("int8", 0)
    ran = ", ".join(f"{count} {precision}" for precision, count in by_precision.items())
    problems = []
    if requested in QUANTIZED and total and not by_precision.get(requested, 0):
        problems.append(f"asked {requested}, no compute op ran {requested} ({ran})")
    elif requested not in QUANTIZED and total and by_precision.get(requested, 0) != total:
        problems.append(f"asked {requested}, compute ops ran {ran}")
    elsewhere = {where: count for where, count in (placement or {}).items() if where != expected_placement}
    if elsewhere:
        problems.append(f"asked {expected_placement}, " + ", ".join(f"{count} nodes ran on {where}"
                                                                    for where, count in elsewhere.items()))
    return {"recorded": True, "source": source, "compute_ops": total, "by_precision": by_precision,
            "int8_share": int8 / total if total else None, "placement": placement,
            "expected_placement": expected_placement,
            "matches_request": (not problems) if total or elsewhere else None,
            "mismatch": "; ".join(problems) or None}


def nvidia_gpu_present() -> bool:
    """Whether this machine shows its processes an NVIDIA GPU (the driver's /proc entries, or its device
    nodes): a probe that imports nothing, so that where there is none, listing the backends and their
    devices costs no torch, TVM or TensorRT import. Where there is one, each adapter still asks its own
    runtime whether it can use it."""
    import glob
    from pathlib import Path

    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or bool(glob.glob("/dev/nvidia[0-9]*"))


class Backend(ABC):
    """One runtime. Subclasses set `name`, `aliases`, `package` and implement `_load`."""

    name = ""
    aliases: tuple[str, ...] = ()
    package = ""          # the import name whose presence makes the backend available
    # every device kind the adapter supports, with the precisions it offers there (where present)
    declared: dict[str, tuple[str, ...]] = {"cpu": ("fp32",)}
    # the load options `_load` acts on; any other option with a value is refused, never silently ignored
    load_options: tuple[str, ...] = ()
    # its speed on a model cannot be told before it runs it (untuned compilers: 50x apart on one CPU), so the
    # default set of `harness compare` times one sample first (harness.compare.defaults)
    speed_unknown = False

    def available(self) -> tuple[bool, str]:
        if self.package and importlib.util.find_spec(self.package) is None:
            return False, f"{self.package} is not installed (pip install {self.package})"
        return True, ""

    def version(self) -> str | None:
        try:
            return package_version(self.distribution())
        except PackageNotFoundError:
            return None

    def distribution(self) -> str:
        return self.package

    def devices(self) -> list[str]:
        return ["cpu"]

    def precisions(self, device: str = "cpu") -> list[str]:
        return list(self.declared.get(device, ()))

    def load(self, model, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
             **options) -> Session:
        """model: harness.export.ExportedModel. Raises BackendUnavailable for what this backend lacks."""
        ok, reason = self.available()
        if not ok:
            raise BackendUnavailable(f"{self.name}: {reason}")
        if device not in self.devices():
            raise BackendUnavailable(f"{self.name}: device {device!r} not found here "
                                     f"(found: {', '.join(self.devices())})")
        if precision not in self.precisions(device):
            raise BackendUnavailable(f"{self.name}: precision {precision} is not offered on {device} "
                                     f"(offered: {', '.join(self.precisions(device))})")
        refused = sorted(k for k, v in options.items()
                         if v is not None and k not in self.load_options and k not in IGNORABLE_OPTIONS)
        if refused:  # e.g. --artifact on torch: running the exported model instead would report a lie
            raise UsageError(f"{self.name}: does not take {', '.join(refused)} (it takes "
                             f"{', '.join(self.load_options) or 'no option'})")
        session = self._load(model, device, precision, threads,
                             **{k: v for k, v in options.items() if k in self.load_options})
        session.fixed_batch = getattr(getattr(model, "spec", None), "fixed_batch", None)
        return session

    @abstractmethod
    def _load(self, model, device, precision, threads, **options) -> Session:
        """The adapter's loading: availability, device and precision already checked by load()."""

    def describe(self) -> dict:
        ok, reason = self.available()
        devices = self.devices() if ok else []
        return {"name": self.name, "aliases": list(self.aliases), "available": ok, "reason": reason,
                "version": self.version(), "devices": devices,
                "precisions": {d: self.precisions(d) for d in devices},
                "declared": {d: list(p) for d, p in self.declared.items()}}


class BrokenBackend(Backend):
    """A plugin whose module failed to import: kept, so `harness backends` shows why."""

    def __init__(self, name: str, reason: str):
        self.name, self._reason = name, reason

    def available(self) -> tuple[bool, str]:
        return False, self._reason

    def version(self) -> str | None:
        return None

    def _load(self, model, device, precision, threads, **options) -> Session:
        raise BackendUnavailable(f"{self.name}: {self._reason}")


_REGISTRY: dict[str, Backend] | None = None


def registry() -> dict[str, Backend]:
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, Backend] = {}
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            try:
                found[ep.name] = ep.load()()
            except Exception as err:  # a broken plugin becomes a row that says why, never a crash
                found[ep.name] = BrokenBackend(ep.name, f"plugin failed to load: {type(err).__name__}: {err}")
        _REGISTRY = found
    return _REGISTRY


def get_backend(name: str) -> Backend:
    """By full name or alias (`ort`, `ov`, `trt`)."""
    backends = registry()
    for backend in backends.values():
        if name == backend.name or name in backend.aliases:
            return backend
    known = sorted(set(backends) | {a for b in backends.values() for a in b.aliases})
    raise UnknownName("backend", name, known)


def parse_target(text: str) -> tuple[Backend, str]:
    """'ort', 'ort:cuda', 'openvino:gpu' -> (backend, device); the device defaults to cpu."""
    name, _, device = text.strip().partition(":")
    return get_backend(name.strip().lower()), (device.strip().lower() or "cpu")
