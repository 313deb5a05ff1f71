"""OutputStats against float64 numpy on the same arrays: a float32 reference and its FP16 copy (drift's
commonest pair), longer than one reduction chunk, with the worst error in the last, partial chunk."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from harness.compare.outputs import CHUNK, OutputStats


def _pair(size: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    reference = rng.standard_normal(size).astype(np.float32) * 4
    candidate = reference.astype(np.float16)
    candidate[-5] = np.float16(reference[-5] + 0.75)  # the worst error, in the last (partial) chunk
    return reference, candidate


def test_statistics_of_an_fp16_copy_equal_float64_arithmetic():
    reference, candidate = _pair(5 * (CHUNK // 2 + 1001))  # two chunks and a part
    candidate.setflags(write=False)  # as ORT hands its outputs over: read-only, and must stay unwarned about
    stats = OutputStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats.update({"t": reference.reshape(5, -1)}, {"t": candidate.reshape(5, -1)})
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    error = cand - ref
    report = stats.to_json()
    assert report["max_abs"] == np.abs(error).max() and stats.count == reference.size
    assert report["mean_abs"] == pytest.approx(np.abs(error).mean(), rel=1e-6)
    assert report["rel_l2"] == pytest.approx(np.linalg.norm(error) / np.linalg.norm(ref), rel=1e-6)
    assert report["snr_db"] == pytest.approx(10 * np.log10((ref @ ref) / (error @ error)), abs=1e-4)
    # 1 - cosine is 2.8e-8 here: from float32 dot products of the two it came out 2.9e-6, 100x off
    one_minus_cosine = 1 - (ref @ cand) / np.sqrt((ref @ ref) * (cand @ cand))
    assert 1 - report["cosine"] == pytest.approx(one_minus_cosine, rel=1e-3)


def test_non_finite_candidate_values_are_counted_and_the_rest_compared():
    reference, candidate = _pair(CHUNK + 100, seed=4)
    candidate[[7, CHUNK + 3]] = [np.inf, np.nan]
    stats = OutputStats()
    stats.update({"t": reference}, {"t": candidate})
    finite = np.where(np.isfinite(candidate), candidate, 0).astype(np.float64)
    error = finite - reference
    assert stats.nonfinite == 2
    # float32 dot products over a chunk: 1e-5 relative is 4e-5 dB of SNR
    assert stats.max_abs == np.abs(error).max() and stats.err_sq == pytest.approx(error @ error, rel=1e-5)
