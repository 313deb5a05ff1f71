"""A sysnoise sweep as a job of harness.executor: its cells are the variants; the worker's rows and pieces
of the pass go to the driver's cell store as they finish, so a restarted worker (or `--resume`) takes them
back instead of computing them again."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from harness.noise.runner import SweepSettings


@dataclass
class SweepJob:
    """What a worker needs to run one sweep: names and paths (picklable), resolved again in the worker; a job
    of harness.executor."""

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

    @property
    def cpus(self) -> int:
        return self.settings.threads or 1

    def work(self, send) -> dict:
        """The worker's side: the sweep, its rows and pieces sent as they finish; returns the report."""
        from harness.model import resolve_model
        from harness.noise import add_user_variant
        from harness.noise.runner import sysnoise_report

        for text in self.user_variants:
            add_user_variant(text)
        spec = resolve_model(self.model, checkpoint=self.checkpoint, profile_path=self.profile,
                             allow_code=self.allow_code, input_shape=self.input_shape)
        return sysnoise_report(spec, self.settings, store=RelayStore(self, send), resume=True)

    def receive(self, message: tuple, store) -> None:
        """The driver's side: rows and pieces into the cell store as they come; a finished sweep's pieces
        dropped (its rows hold it all)."""
        kind = message[0]
        if kind == "row":
            _, key, axis, variant, row = message
            self.taken[key] = row
            if store is not None:
                store.put(key, axis, variant, row)
        elif kind == "piece" and store is not None:
            _, key, context, data = message
            store.put_piece(key, self.run, context, data)
            self.piece_contexts.add(context)
        elif kind == "done" and store is not None:
            store.drop_pieces(self.piece_contexts)

    def isolate(self, cell: tuple, reason: str, store) -> dict:
        """The variant whose work killed or outlasted its worker: a failed row, taken as it is from now on."""
        from harness.noise.sweep import variant_row

        key, axis, variant, baseline = cell
        row = {**variant_row(variant, "failed", reason, baseline), "isolated": True}
        self.taken[key] = row
        if store is not None:
            store.put(key, axis, variant, row)
        return {"axis": axis, "variant": variant, "reason": reason}


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
