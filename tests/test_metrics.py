"""Tests for aop_tf.metrics: hand-worked errors and AoP cases, properties."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_tf import metrics


def _aop_acos(points):
  """Independent AoP (acos of the normalised dot product), degrees."""
  u = points[1] - points[0]
  v = points[2] - points[0]
  cos = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
  return math.degrees(math.acos(np.clip(cos, -1.0, 1.0)))


def _ray(vertex, direction_deg, length=10.0):
  t = math.radians(direction_deg)
  return [vertex[0] + length * math.cos(t), vertex[1] + length * math.sin(t)]


def test_radial_and_512_errors_hand_worked_non_square():
  # Image 0 is 256 wide, 128 high: x errors double and y errors quadruple in 512 space.
  gt = np.array([[[100, 50], [50, 50], [100, 100]],
                 [[300, 300], [200, 300], [300, 400]]], np.float32)
  offsets = np.array([[[3, 4], [0, 0], [-1, 0]],
                      [[0, 0], [6, 8], [0, -2]]], np.float32)
  size = np.array([[256, 128], [512, 512]], np.float32)
  errors = metrics.per_image_errors(gt + offsets, gt, size)

  np.testing.assert_allclose(errors["radial_px"], [[5, 0, 1], [0, 10, 2]], atol=1e-5)
  np.testing.assert_allclose(errors["radial_512"], [[math.sqrt(6 ** 2 + 16 ** 2), 0, 2],
                                                    [0, 10, 2]], atol=1e-4)
  np.testing.assert_allclose(errors["abs_px"], np.abs(offsets))
  np.testing.assert_allclose(errors["abs_512"][0], [[6, 16], [0, 0], [2, 0]], atol=1e-5)

  summary = metrics.report(errors)
  assert summary["n_images"] == 2
  assert summary["mre_px"]["PS1"] == pytest.approx(2.5)
  assert summary["mre_px"]["PS2"] == pytest.approx(5.0)
  assert summary["mre_px"]["FH1"] == pytest.approx(1.5)
  assert summary["mre_px"]["mean"] == pytest.approx(3.0)
  assert summary["mre_512"]["PS1"] == pytest.approx(math.sqrt(292) / 2, rel=1e-5)
  assert summary["mre_512"]["PS2"] == pytest.approx(5.0)
  assert summary["mre_512"]["FH1"] == pytest.approx(2.0)
  # MAE: mean of |dx| and |dy| over images and both axes.
  assert summary["mae_px"]["PS1"] == pytest.approx((3 + 4 + 0 + 0) / 4)
  assert summary["mae_px"]["mean"] == pytest.approx(np.abs(offsets).mean())
  assert summary["mae_512"]["PS1"] == pytest.approx((6 + 16) / 4)
  assert summary["mae_px"]["x"] == pytest.approx((3 + 0 + 1 + 0 + 6 + 0) / 6)
  # SDR over the six landmarks in 512 space: radii 17.09, 0, 2, 0, 10, 2.
  assert summary["sdr_512"] == pytest.approx({"2": 4 / 6, "4": 4 / 6, "8": 4 / 6})
  json.dumps(summary, allow_nan=False)


def test_aop_error_and_agreement_at_120():
  # Image 0: GT 90 deg, prediction 135 deg (opposite sides of 120).
  # Image 1: GT 150 deg, prediction 130 deg (same side).
  gt = np.array([[[10, 10], [0, 10], [10, 20]],
                 [[0, 0], [-10, 0], _ray((0, 0), 30.0)]], np.float32)
  pred = np.array([[[10, 10], [0, 10], [20, 20]],
                   [[0, 0], [-10, 0], _ray((0, 0), 50.0)]], np.float32)
  errors = metrics.per_image_errors(pred, gt, [256, 256])
  np.testing.assert_allclose(errors["aop_gt_deg"], [90, 150], atol=1e-3)
  np.testing.assert_allclose(errors["aop_pred_deg"], [135, 130], atol=1e-3)
  np.testing.assert_allclose(errors["aop_error_deg"], [45, 20], atol=1e-3)
  for i in range(2):
    assert errors["aop_pred_deg"][i] == pytest.approx(_aop_acos(pred[i]), abs=1e-3)
  assert not errors["degenerate"].any()

  summary = metrics.report(errors)
  assert summary["aop_error_deg"]["mean"] == pytest.approx(32.5, abs=1e-3)
  assert summary["aop_error_deg"]["median"] == pytest.approx(32.5, abs=1e-3)
  assert summary["aop_error_deg"]["sd"] == pytest.approx(12.5, abs=1e-3)
  assert summary["aop_error_deg"]["p90"] == pytest.approx(20 + 0.9 * 25, abs=1e-3)
  assert summary["aop_agreement_120"] == pytest.approx(0.5)
  assert summary["n_degenerate"] == 0


def test_aop_error_by_landmark_moves_one_landmark_at_a_time():
  # GT: PS1 (10, 10), PS2 (0, 10), FH1 (10, 20): 90 deg. The prediction moves FH1 to 45 deg
  # (AoP 135) and PS2 to (0, 0) (PS1->PS2 at 225 deg): each alone changes the AoP by 45 deg.
  gt = np.array([[[10, 10], [0, 10], [10, 20]]] * 2, np.float32)
  pred = gt.copy()
  pred[0, 2] = [20, 20]
  pred[1, 1] = [0, 0]
  errors = metrics.per_image_errors(pred, gt, [64, 64])
  np.testing.assert_allclose(errors["aop_error_by_landmark_deg"], [[0, 0, 45], [0, 45, 0]],
                             atol=1e-3)
  summary = metrics.report(errors)
  assert summary["aop_error_by_landmark_deg"] == pytest.approx(
      {"PS1": 0.0, "PS2": 22.5, "FH1": 22.5}, abs=1e-3)
  assert "PS2 22.50" in metrics.summary_table(summary)


def test_degenerate_prediction_is_counted_not_dropped():
  gt = np.array([[[10, 10], [0, 10], [10, 20]]] * 3, np.float32)
  pred = gt.copy()
  pred[1, 1] = pred[1, 0]  # PS2 on PS1: AoP undefined.
  pred[2, 0] += [0, 1]     # valid, small AoP change.
  errors = metrics.per_image_errors(pred, gt, [64, 64])
  assert errors["degenerate"].tolist() == [False, True, False]
  assert np.isnan(errors["aop_error_deg"][1])
  # The landmark errors of the degenerate image still count.
  assert errors["radial_px"][1, 1] == pytest.approx(10.0)

  summary = metrics.report(errors)
  assert summary["n_degenerate"] == 1
  assert summary["n_images"] == 3
  assert summary["aop_error_deg"]["n"] == 2
  assert summary["mre_px"]["PS2"] == pytest.approx(10 / 3, rel=1e-5)
  assert math.isfinite(summary["aop_error_deg"]["mean"])
  json.dumps(summary, allow_nan=False)


def test_all_degenerate_and_empty_reports_are_json():
  pred = np.zeros((2, 3, 2), np.float32)
  gt = np.array([[[10, 10], [0, 10], [10, 20]]] * 2, np.float32)
  summary = metrics.report(metrics.per_image_errors(pred, gt, [32, 32]))
  assert summary["n_degenerate"] == 2
  assert summary["aop_error_deg"]["mean"] is None
  assert summary["aop_agreement_120"] is None
  json.dumps(summary, allow_nan=False)

  empty = metrics.report(metrics.per_image_errors(np.zeros((0, 3, 2)), np.zeros((0, 3, 2)),
                                                  np.zeros((0, 2))))
  assert empty["n_images"] == 0 and empty["mre_px"]["mean"] is None
  json.dumps(empty, allow_nan=False)
  assert "images: 0" in metrics.summary_table(empty)


_coord = st.floats(-50.0, 600.0, allow_nan=False, width=32)
_size = st.integers(16, 1024)


@settings(max_examples=40, deadline=None)
@given(points=st.lists(_coord, min_size=6, max_size=6), width=_size, height=_size)
def test_identical_points_give_zero_errors(points, width, height):
  pts = np.array(points, np.float32).reshape(1, 3, 2)
  errors = metrics.per_image_errors(pts, pts, [[width, height]])
  for key in ("radial_px", "radial_512", "abs_px", "abs_512"):
    assert np.all(errors[key] == 0.0)
  assert errors["degenerate"][0] == errors["gt_degenerate"][0]
  if not errors["degenerate"][0]:
    assert errors["aop_error_deg"][0] == 0.0


@settings(max_examples=40, deadline=None)
@given(dx=st.floats(-40, 40, width=32), dy=st.floats(-40, 40, width=32), width=_size,
       height=_size)
def test_512_scaling_is_per_axis(dx, dy, width, height):
  gt = np.array([[[100, 50], [20, 60], [150, 120]]], np.float32)
  pred = gt + np.array([dx, dy], np.float32)
  errors = metrics.per_image_errors(pred, gt, [[width, height]])
  # float32 rounding differs per landmark: compare with the offsets actually applied.
  d = (pred - gt)[0].astype(np.float64)
  expected = np.hypot(d[:, 0] * 512.0 / width, d[:, 1] * 512.0 / height)
  np.testing.assert_allclose(errors["radial_512"][0], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(errors["radial_px"][0], np.hypot(d[:, 0], d[:, 1]), rtol=1e-5,
                             atol=1e-5)
  if width == height:
    np.testing.assert_allclose(errors["radial_512"], errors["radial_px"] * 512.0 / width,
                               rtol=1e-5, atol=1e-5)


def test_auroc_counts_ordered_pairs_and_ties():
  assert metrics.auroc([3, 2, 1, 0], [True, True, False, False]) == 1.0
  assert metrics.auroc([0, 1, 2, 3], [True, True, False, False]) == 0.0
  assert metrics.auroc([1, 1], [True, False]) == 0.5
  assert metrics.auroc([2, 1, 3, 0], [True, False, False, False]) == pytest.approx(2 / 3)
  assert np.isnan(metrics.auroc([1, 2], [False, False]))


def test_threshold_for_recall_flags_at_least_that_share_of_positives():
  scores = np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.3])
  bad = np.array([True, False, True, True, False, True])
  t = metrics.threshold_for_recall(scores, bad, 0.5)
  assert t == 0.7  # positives score 0.9, 0.7, 0.3, 0.1: the top two are caught from 0.7 down
  assert (scores[bad] >= t).mean() >= 0.5
  summary = metrics.flag_summary(scores, np.where(bad, 12.0, 2.0), t)
  assert summary["flagged_share"] == pytest.approx(3 / 6)
  assert summary["bad_caught_share"] == pytest.approx(2 / 4)
  assert summary["mean_error_flagged_deg"] == pytest.approx((12 + 2 + 12) / 3)
  assert metrics.threshold_for_recall(scores, np.zeros(6, bool)) is None
