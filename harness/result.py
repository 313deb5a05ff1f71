"""The result row: one candidate measured against its baseline. compare (`results`), sysnoise (`variants`)
and validate (`profiles`) emit it, and diff reads it back; its JSON keys are DESIGN.md's (add, never rename).

What varies between the commands is how a candidate is named (`identity`: backend/device/precision, a
variant's name and baseline, a gate profile's name) and what else was measured (`measures`: compare's
output statistics, timing and flipped samples; a variant's flip rate, KL and reshaped outputs; a gate
profile's max output error). Status, metric, Δ, the significance fields, and what the backend really ran
are the same concept everywhere, and live here once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IDENTITY_KEYS = ("profile", "name", "backend", "device", "precision", "source", "baseline")
SIGNIFICANCE_KEYS = ("ci95", "significant", "p_value", "significance_test", "bootstrap_rounds")
STATUSES = ("ok", "failed", "unavailable")


@dataclass
class ResultRow:
    identity: dict
    status: str = "ok"                  # ok | failed | unavailable
    reason: str = ""
    metric: dict | None = None
    delta: dict | float | None = None   # compare: per metric; sysnoise and validate: the primary metric's
    significance: dict = field(default_factory=dict)   # SIGNIFICANCE_KEYS, where the command decides them
    precision_effective: str | None = None
    execution: dict | None = None       # what the backend really ran (harness.backends.execution_record)
    measures: dict = field(default_factory=dict)       # the command's other fields, by their JSON keys

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"result status {self.status!r}: expected one of {', '.join(STATUSES)}")

    @classmethod
    def failed(cls, identity: dict, err: BaseException, status: str = "failed", **measures) -> "ResultRow":
        """A candidate that did not run: its row says why, in one line."""
        reason = str(err) if status == "unavailable" else f"{type(err).__name__}: {err}".strip()
        return cls(identity, status, reason, measures=measures)

    @property
    def key(self) -> tuple:
        """The candidate's identity as a tuple (what diff matches rows by)."""
        return tuple(self.identity.values())

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        return {**self.identity, "status": self.status, "reason": self.reason, "metric": self.metric,
                "delta": self.delta, **self.significance, "precision_effective": self.precision_effective,
                "execution": self.execution, **self.measures}

    @classmethod
    def from_json(cls, data: dict) -> "ResultRow":
        """The row of a report (or a stored sweep cell) read back."""
        identity = {key: data[key] for key in IDENTITY_KEYS if key in data}
        common = ("status", "reason", "metric", "delta", "precision_effective", "execution")
        taken = {*identity, *SIGNIFICANCE_KEYS, *common}
        return cls(identity, data.get("status", "ok"), data.get("reason", ""), data.get("metric"), data.get("delta"),
                   {key: data[key] for key in SIGNIFICANCE_KEYS if key in data}, data.get("precision_effective"),
                   data.get("execution"), {key: value for key, value in data.items() if key not in taken})
