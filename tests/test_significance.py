"""One significance rule per metric kind, the same in the JSON row, the summary table, the HTML plot and the
gate: accuracy by McNemar's exact test (p < 0.05), the bootstrap interval only shown; mAP by a seeded
bootstrap whose budget is rounds, so two runs give the same interval."""
import json
from math import comb

import numpy as np
import pytest

from harness.noise.stats import accuracy_change


def _paired(broken: int, fixed: int, samples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Reference and candidate correctness: `broken` samples only the reference gets right, `fixed` only the
    candidate, the rest both right."""
    reference = np.ones(samples, bool)
    candidate = reference.copy()
    candidate[:broken] = False
    reference[broken:broken + fixed] = False
    return reference, candidate


def _two_sided_binomial(smaller: int, discordant: int) -> float:
    """Exact two-sided binomial p at 1/2, by hand (the independent expectation of McNemar's exact test)."""
    tail = sum(comb(discordant, k) for k in range(smaller + 1)) / 2 ** discordant
    return min(1.0, 2 * tail)


def _row(broken: int, fixed: int, samples: int = 1000) -> dict:
    reference, candidate = _paired(broken, fixed, samples)
    return {"name": f"{broken}-broken-{fixed}-fixed", "status": "ok", "identical_to_reference": False,
            "identical_to": None, "delta": (fixed - broken) / samples, "flip_rate": (fixed + broken) / samples,
            "kl": 0.0, "metric": {"top1": 0.9}, "output_shapes_changed": {}, "first_reshaped_tensor": None,
            "precision_effective": None, **accuracy_change(reference, candidate)}


@pytest.mark.parametrize("broken, fixed", [
    (0, 4),    # all discordant pairs one way, a gain (ORT INT8 on the README's run: 4 fixed, 0 broken)
    (9, 2),    # a loss just short of the level (a resize variant on the README's run: p = 0.065)
    (2, 9),    # the same, a gain
])
def test_an_interval_that_excludes_zero_is_not_significant_when_mcnemar_says_so(broken, fixed):
    row = _row(broken, fixed)
    expected_p = _two_sided_binomial(min(broken, fixed), broken + fixed)
    assert row["p_value"] == pytest.approx(expected_p) and 0.05 < expected_p < 0.13
    low, high = row["ci95"]
    assert low > 0 or high < 0  # the bootstrap alone would have starred it
    assert row["significant"] is False and row["significance_test"] == "mcnemar-exact"


def test_a_change_mcnemar_finds_is_significant():
    row = _row(10, 1)
    assert row["p_value"] == pytest.approx(_two_sided_binomial(1, 11)) and row["p_value"] < 0.05
    assert row["significant"] is True


def test_table_html_and_gate_read_the_one_rule():
    """The summary star, the HTML bar colour and the gate's words follow `significant`, never the interval."""
    from harness.report.html import sysnoise_axes_figure
    from harness.report.sysnoise import summary_markdown
    from harness.validate import significance_text

    rows = [_row(0, 4), _row(10, 1)]

    def report_of(variants):
        axis = {"axis": "resize", "stage": "pre", "variants": variants, "delta_mean": 0.0, "delta_std": 0.0,
                "delta_max": min(v["delta"] for v in variants)}
        return {"model": {"name": "m"}, "primary_metric": "top1", "reference": {"metric": {"top1": 0.9}},
                "axes": [axis], "combined": []}

    assert "(worst +0.40; 0/1 significant)" in summary_markdown(report_of(rows[:1]))  # no star
    assert "(worst -0.90*; 1/2 significant)" in summary_markdown(report_of(rows))
    report = report_of(rows)
    figure = sysnoise_axes_figure(report)
    bars = figure.axes[0].patches
    colours = [tuple(round(c, 3) for c in bar.get_facecolor()[:3]) for bar in bars]
    assert colours[0] == (0.6, 0.6, 0.6) and colours[1] == (round(0xbb / 255, 3), 0.0, 0.0)
    assert significance_text(rows[0]) == "not significant, McNemar p = 0.125"
    assert significance_text(rows[1]).startswith("significant, McNemar p = 0.0117")


def test_two_runs_of_one_map_sweep_give_the_same_intervals(harness_cli, tmp_path):
    """Rounds, not seconds, are the bootstrap's budget: the same sweep run twice (fresh stores, nothing
    taken back) reports the same interval, and says how many rounds made it. The second run is sharded
    over two workers (--workers 2): mAP and its intervals come from the merged predictions, so the whole
    report is the one-worker run's."""
    reports = []
    for run, workers in (("first", "1"), ("second", "2")):
        out = tmp_path / f"{run}.json"
        result = harness_cli("sysnoise", "fcos_tiny", "--axes", "box_decode", "--limit", "24", "--bootstrap-rounds",
                             "40", "--batch-size", "4", "--chunk-size", "12", "--threads", "1", "--workers", workers,
                             "--store", str(tmp_path / f"{run}.sqlite"), "--json", str(out))
        assert result.returncode == 0, result.stderr
        reports.append(json.loads(out.read_text()))
    rows = [{v["name"]: v for v in report["axes"][0]["variants"]} for report in reports]
    measured = [name for name, v in rows[0].items() if not v["identical_to_reference"]]
    assert measured
    for name in measured:
        assert rows[0][name]["ci95"] is not None and rows[0][name]["ci95"] == rows[1][name]["ci95"]
        assert rows[0][name]["bootstrap_rounds"] == 40 and rows[0][name]["significance_test"] == "bootstrap"
    assert [shard["chunks"] for shard in reports[1]["executor"]["shards"]] == [1, 1]
    assert [{k: v for k, v in report.items() if k not in ("executor", "store", "counters")} for report in reports] \
        == [{k: v for k, v in reports[0].items() if k not in ("executor", "store", "counters")}] * 2
    assert reports[0]["bootstrap_rounds"] == 40 and "excludes 0" in reports[0]["significance"]["rule"]
