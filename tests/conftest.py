"""Shared fixtures. The export cache lives in one temporary folder per test session (subprocesses
inherit it through HARNESS_CACHE), so tests never touch the user's cache and exports are re-used."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_CACHE = tempfile.mkdtemp(prefix="harness-test-cache-")
os.environ["HARNESS_CACHE"] = _CACHE
os.environ.setdefault("COLUMNS", "200")


def run_harness(*args: str, cwd: Path | None = None, env: dict | None = None,
                timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs the installed console script as a user would."""
    exe = Path(sys.executable).with_name("harness")
    return subprocess.run([str(exe), *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def harness_cli():
    """The `harness` console script as a subprocess: harness_cli("compare", "--json", "-")."""
    return run_harness


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(_CACHE)


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.needs_device(backend, device)`: skip with the backend's own reason when it is absent."""
    from harness.backends import get_backend

    for item in items:
        for mark in item.iter_markers("needs_device"):
            if mark.args[1] == "cpu":  # CPU backends are installed in CI: absent means broken, never skipped
                raise pytest.UsageError(f"{item.nodeid}: needs_device marks GPU devices only, not cpu")
            backend = get_backend(mark.args[0])
            ok, why = backend.available()
            devices = backend.devices() if ok else []
            if not ok or mark.args[1] not in devices:
                reason = why or f"device {mark.args[1]!r} not found here (found: {', '.join(devices)})"
                item.add_marker(pytest.mark.skip(reason=f"{backend.name}:{mark.args[1]}: {reason}"))


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_device(backend, device): runs only where that device exists")


@pytest.fixture
def starter_gate(tmp_path):
    """Runs `harness validate --init --model MODEL` in a fresh folder, limits the gate to `limit` samples and
    validates with it: returns the finished `validate` process."""
    def run(model: str, limit: int):
        folder = tmp_path / "gate"
        folder.mkdir()
        assert run_harness("validate", "--init", "--model", model, cwd=folder).returncode == 0
        gate = folder / "gate.toml"
        gate.write_text(gate.read_text().replace("batch_size = 64", f"batch_size = 64\nlimit = {limit}"))
        return run_harness("validate", "--config", str(gate), "--json", str(folder / "gate.json"))
    return run
