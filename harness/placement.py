"""Placement: where a model runs (DESIGN.md, "The nouns"): a backend, a device, a precision, and the
prebuilt artifact when one is deployed as built elsewhere. Profiles, compare targets, sweep variants and
model configurations all name where a model runs with this one value."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    backend: str
    device: str = "cpu"
    precision: str = "fp32"
    artifact: str | None = None   # a prebuilt engine or graph to load instead of building from the export

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.device}:{self.precision}" + (f" ({self.artifact})" if self.artifact else "")

    def with_precision(self, precision: str) -> "Placement":
        return dataclasses.replace(self, precision=precision)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
