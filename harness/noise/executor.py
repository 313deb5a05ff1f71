"""Where a sweep's cells run (DESIGN.md, "Scale"): `--executor local` (default) or `ray`, with
`--cell-timeout SECONDS`.

A cell is one variant of one axis. One worker runs the sweep with its stage caches (a decode, a resize, a
session is shared by the cells that need it, as in a single process); the driver, this process, only
watches: the worker says which cell its current work is for and sends every finished row, which the driver
writes to the cell store at once. The worker streams the data in chunks, doing a piece of every cell per
chunk (harness.pipeline.StagedPipeline), so a cell's time is the sum of its pieces; work shared by
several cells is the first one's. When a native crash takes the worker down, or a cell runs past the
timeout and the driver kills it, that cell alone becomes a `failed` row saying so, and a new worker carries
on without it: the rows already finished are taken back, not computed again; the pass over the data of the
cells not yet finished starts again. So a crashing backend or decoder costs its own cell and one worker
start-up, never the sweep.

- local: the worker is a process of this machine (multiprocessing, spawn: no inherited threads or state).
- ray: the worker is a Ray task (`ray.init(address=$RAY_ADDRESS)`, a local cluster when unset) asking for
  `--threads` CPUs; messages come back through a Ray queue, so the store stays on the driver's machine.
  Taking rows back from the store with `--resume` needs the store's path to be readable by the worker
  (one machine, or a shared file system).
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError, UsageError
from harness.noise.runner import SweepSettings

EXECUTORS = ("local", "ray")
POLL_S = 0.2


class WorkerError(HarnessError):
    """The sweep's worker stopped on an error of the user's (shown as the worker saw it)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class SweepJob:
    """What a worker needs to run one sweep: names and paths (picklable), resolved again in the worker."""

    model: str | None
    checkpoint: Path | None
    profile: Path | None
    user_variants: list[str]
    settings: SweepSettings                    # what the sweep measures and how
    store_path: Path | None = None             # read by the worker: pieces of this run, and with --resume rows
    resume: bool = False                       # and pieces of earlier runs
    allow_code: bool = False                   # --allow-code: the profile file may name code
    input_shape: str | None = None             # --input-shape
    taken: dict = field(default_factory=dict)  # rows finished by earlier workers of this run, by cell key
    run: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this run's pieces in the store
    piece_contexts: set = field(default_factory=set)  # the sweeps whose pieces the store got (driver side)


class RelayStore:
    """The worker's side of the cell store: rows of this run first, then (with --resume) the store's
    finished rows; every row it is given goes to the driver."""

    def __init__(self, job: SweepJob, send):
        from harness.store import CellStore

        self.taken, self.send = dict(job.taken), send
        self.stored = CellStore(job.store_path) if job.store_path else None
        self.path, self.resume, self.run = job.store_path, job.resume, job.run

    def get(self, key: str) -> dict | None:
        if key in self.taken:
            return self.taken[key]
        row = self.stored.get(key) if self.stored is not None and self.resume else None
        return row if row is not None and row.get("status") == "ok" else None  # failures are tried again

    def take_piece(self, key: str):
        """A piece of the pass done by an earlier worker of this run (or with --resume, of any run)."""
        from harness.store import BadPiece, decode_piece

        data = self.stored.get_piece(key, None if self.resume else self.run) if self.stored is not None else None
        if data is None:
            return None
        try:
            return decode_piece(data)
        except BadPiece:  # not what keep_piece wrote: computed again, never trusted
            return None

    def keep_piece(self, key: str, context: str, piece) -> None:
        from harness.store import encode_piece

        if self.stored is not None:
            self.send(("piece", key, context, encode_piece(*piece)))

    def started(self, key: str, axis: str, variant: str, baseline: str) -> None:
        self.send(("start", key, axis, variant, baseline))

    def paused(self) -> None:
        self.send(("pause",))

    def reference_work(self) -> None:
        self.send(("reference",))

    def put(self, key: str, axis: str, variant: str, row: dict) -> None:
        self.taken[key] = row
        self.send(("row", key, axis, variant, row))


def run_job(job: SweepJob, send) -> None:
    """The worker: runs the sweep and sends ("start" ...), ("row" ...) and finally ("done", report) or
    ("error", exit_code, message)."""
    import os

    os.environ["HARNESS_WORKER"] = "1"  # the driver already said what resolving the model says
    try:
        from harness.model import resolve_model
        from harness.noise import add_user_variant
        from harness.noise.runner import sysnoise_report

        for text in job.user_variants:
            add_user_variant(text)
        spec = resolve_model(job.model, checkpoint=job.checkpoint, profile_path=job.profile,
                             allow_code=job.allow_code, input_shape=job.input_shape)
        store = RelayStore(job, send)
        send(("done", sysnoise_report(spec, job.settings, store=store, resume=True)))
    except HarnessError as err:
        send(("error", err.exit_code, str(err)))
    except Exception as err:  # noqa: BLE001 - one line for the user; the traceback with --debug
        send(("error", 1, f"{type(err).__name__}: {' '.join(str(err).split())}", traceback.format_exc()))


def _local_main(job: SweepJob, connection) -> None:
    _die_with_parent()
    run_job(job, connection.send)


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the driver dies, even by SIGKILL (an OOM kill, a CI runner's
    hard stop), where no `finally` of the driver runs. Elsewhere, an orphaned worker ends at its next message
    (a broken pipe) unless it hangs."""
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl in this libc: the fallback above
        return
    if os.getppid() == 1:  # the driver died before the request took effect
        os._exit(1)


class LocalWorker:
    def __init__(self, job: SweepJob):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        # a Pipe, not a Queue: Connection.send writes before it returns, where a Queue's feeder thread may
        # still hold the "start" of a cell whose native code kills the process the next instant
        self.messages, sending = context.Pipe(duplex=False)
        # not a daemon: a backend may start processes of its own (a daemon may not)
        self.process = context.Process(target=_local_main, args=(job, sending))
        self.process.start()
        sending.close()

    def receive(self, timeout: float):
        try:
            return self.messages.recv() if self.messages.poll(timeout) else None
        except EOFError:  # the worker is gone; ended() says how
            return None

    def ended(self) -> str | None:
        """Why the worker is gone, or None while it runs."""
        if self.process.is_alive():
            return None
        code = self.process.exitcode
        if code is not None and code < 0:
            import signal

            return f"signal {signal.Signals(-code).name}"
        return f"exit code {code}"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


class RayWorker:
    def __init__(self, job: SweepJob):
        import os

        import ray
        from ray.util.queue import Queue

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        self.ray = ray
        self.messages = Queue()
        cpus = job.settings.threads or 1
        self.ref = ray.remote(num_cpus=cpus, max_retries=0)(_ray_main).remote(job, self.messages)

    def receive(self, timeout: float):
        from ray.util.queue import Empty

        try:
            return self.messages.get(timeout=timeout)
        except Empty:
            return None

    def ended(self) -> str | None:
        ready, _ = self.ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            self.ray.get(self.ref)
            return "the task ended"
        except Exception as err:  # noqa: BLE001 - Ray's own words on why the task died
            return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"

    def kill(self) -> None:
        self.ray.cancel(self.ref, force=True)


def _ray_main(job: SweepJob, messages) -> None:
    run_job(job, messages.put)


def run_sweep(job: SweepJob, executor: str = "local", cell_timeout: float | None = None, store=None,
              max_restarts: int = 50) -> dict:
    """Runs `job` on a worker, restarting it past a crashed or timed-out cell; returns the report."""
    if executor not in EXECUTORS:
        raise UsageError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        import sys

        try:
            import ray
        except ImportError as err:
            raise UsageError(f"--executor ray needs Ray ({err}): pip install ray (in the harness checkout: "
                             "pip install -e '.[ray]')") from err
        started_here = not ray.is_initialized()
        # Ray prints its cluster's events (a dead worker, ...) on stdout, where `--json -` writes the report
        with contextlib.redirect_stdout(sys.stderr):
            try:
                return _drive(job, executor, cell_timeout, store, max_restarts)
            finally:
                if started_here:
                    ray.shutdown()
    return _drive(job, executor, cell_timeout, store, max_restarts)


@contextlib.contextmanager
def _terminate_like_interrupt():
    """SIGTERM (a cancelled CI job, `kill`, `timeout`) ends the driver the way Ctrl-C does: through the
    `finally` that kills its worker. By default SIGTERM ends the process at once, and the worker, a spawned
    process, would outlive it, still computing (or hanging) with no one to report to."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield  # a handler of the caller's own, or no way to install one: left alone
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drive(job: SweepJob, executor: str, cell_timeout: float | None, store, max_restarts: int) -> dict:
    with _terminate_like_interrupt():
        return _drive_workers(job, executor, cell_timeout, store, max_restarts)


def _drive_workers(job: SweepJob, executor: str, cell_timeout: float | None, store, max_restarts: int) -> dict:
    from harness.noise.sweep import variant_row

    isolated = []
    for _ in range(max_restarts + 1):
        worker = LocalWorker(job) if executor == "local" else RayWorker(job)
        try:
            current, reason, report = _watch(worker, job, cell_timeout, store)
        finally:  # done, failed, or interrupted (Ctrl-C): no worker outlives the driver
            worker.kill()
        if report is not None:
            report["executor"] = {"name": executor, "cell_timeout": cell_timeout, "worker_starts": len(isolated) + 1,
                                  "isolated_failures": isolated}
            return report
        if current is None:
            raise WorkerError(f"the sweep's worker stopped outside any cell: {reason}", 1)
        key, axis, variant, baseline, _ = current
        row = {**variant_row(variant, "failed", reason, baseline), "isolated": True}
        job.taken[key] = row
        if store is not None:
            store.put(key, axis, variant, row)
        isolated.append({"axis": axis, "variant": variant, "reason": reason})
    raise WorkerError(f"the sweep's worker was restarted {max_restarts} times; giving up", 1)


def _watch(worker, job: SweepJob, cell_timeout: float | None, store):
    """Relays one worker's rows to the store until it is done (-> report) or gone (-> the cell it was in
    and why). A cell's work comes in pieces (the sweep streams the data in chunks, each chunk doing a piece
    of every cell), so its time is the sum of its pieces."""
    current, reason, spent = None, None, {}
    reference_since = None  # the reference's work (no cell's) runs since then
    while reason is None:
        message = worker.receive(POLL_S)
        if message is None:
            if cell_timeout and current and \
                    spent.get(current[0], 0.0) + time.monotonic() - current[-1] > cell_timeout:
                worker.kill()
                reason = f"timed out: still running after {cell_timeout:g} s (--cell-timeout); its worker was killed"
            elif cell_timeout and reference_since is not None and time.monotonic() - reference_since > cell_timeout:
                # the reference's own work is bounded too: nothing can be measured against a reference that
                # never finishes, and a sweep that hangs there must not run until killed from outside
                worker.kill()
                raise WorkerError(f"the reference pass ran past --cell-timeout ({cell_timeout:g} s on one chunk of "
                                  "data); its worker was killed and no variant can be measured", 1)
            elif (ended := worker.ended()) is not None:
                message = worker.receive(1.0)  # a last message may still be in flight
                if message is None:
                    reason = f"its worker process died ({ended}) while running it"
        if message is None:
            continue
        kind = message[0]
        if kind == "reference" or (kind == "piece" and reference_since is not None):  # begun, or progressed
            reference_since = time.monotonic()
        elif kind in ("start", "pause"):
            reference_since = None
        if kind in ("start", "pause", "row", "reference") and current is not None:  # the running piece of work ends
            spent[current[0]] = spent.get(current[0], 0.0) + time.monotonic() - current[-1]
            current = None
        if kind == "start":
            current = (*message[1:], time.monotonic())
        elif kind == "row":
            _, key, axis, variant, row = message
            job.taken[key] = row
            if store is not None:
                store.put(key, axis, variant, row)
        elif kind == "piece" and store is not None:
            _, key, context, data = message
            store.put_piece(key, job.run, context, data)
            job.piece_contexts.add(context)
        elif kind == "done":
            if store is not None:
                store.drop_pieces(job.piece_contexts)
            return None, None, message[1]
        elif kind == "error":
            if len(message) > 3 and _debugging():
                import sys

                print(message[3], file=sys.stderr)
            raise WorkerError(message[2], message[1])
    return current, reason, None


def _debugging() -> bool:
    import os

    return os.environ.get("HARNESS_DEBUG", "") not in ("", "0")
