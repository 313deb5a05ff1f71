"""The chunk journal of a sweep's pass: each (request, chunk)'s predictions are written to the store as
they are done, and taken back instead of computed again (a worker restarted after a crash, --resume)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass
class Piece:
    """One request's work on one chunk: what a later pass needs to skip it."""

    task: str                          # the harness.tasks name whose predictions these are
    ids: list[str]
    predictions: list
    shapes: dict | None                # per-sample raw output shapes (None: nothing loaded)
    input_digest: str | None           # of the chunk's input set
    failures: dict[str, str]           # sample id -> why it could not be read

    def as_tuple(self) -> tuple:
        return self.task, self.ids, self.predictions, self.shapes, self.input_digest, self.failures


class ChunkJournal:
    """Pieces of one sweep (`context`: everything its results depend on) in a store with take_piece /
    keep_piece (harness.noise.cells.RelayStore, or any object with those two methods)."""

    def __init__(self, store, context: str):
        self.store, self.context = store, context

    def _key(self, request_key: tuple, chunk) -> str:
        return hashlib.sha256(f"{self.context}|{request_key!r}|{'|'.join(s.id for s in chunk)}".encode()).hexdigest()

    def take(self, request_key: tuple, chunk) -> Piece | None:
        taken = self.store.take_piece(self._key(request_key, chunk))
        return None if taken is None else Piece(*taken)

    def keep(self, request_key: tuple, chunk, piece: Piece) -> None:
        self.store.keep_piece(self._key(request_key, chunk), self.context, piece.as_tuple())
