"""benchmarks/quality.py's pieces that carry figures: the oracle's ceiling and conformal quantile."""

import numpy as np
import pytest

from benchmarks import quality as quality_bench


def test_the_oracle_is_perfect_without_label_noise_and_blind_under_it():
  errors = np.random.default_rng(1).normal(0.0, 8.0, 600)
  assert quality_bench.oracle_auroc(errors, noise_sd=0.0, draws=5) == pytest.approx(1.0)
  # Noise as large as the errors themselves leaves the model's own error nearly nothing to say.
  blind = quality_bench.oracle_auroc(errors, noise_sd=7.9, draws=20)
  mid = quality_bench.oracle_auroc(errors, noise_sd=4.0, draws=20)
  assert 0.45 < blind < mid < 1.0


def test_the_oracle_takes_the_pairs_noise_as_given():
  errors = np.random.default_rng(2).normal(0.0, 8.0, 600)
  same_pairs = np.zeros(50)  # pairs that never disagree: no label noise
  assert quality_bench.oracle_auroc(errors, pair_diffs=same_pairs, draws=3) == pytest.approx(1.0)
  heavy = np.r_[np.zeros(40), np.full(10, 25.0)]  # one pair in five 25 deg apart
  assert quality_bench.oracle_auroc(errors, pair_diffs=heavy, draws=20) < 0.95


def test_conformal_quantile_is_the_finite_sample_rank():
  ratios = np.arange(1, 20, dtype=float)  # 19 values: ceil(20 * 0.9) = 18th
  assert quality_bench.conformal_quantile(ratios, 0.9) == 18.0
