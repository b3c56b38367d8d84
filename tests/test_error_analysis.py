"""benchmarks/error_analysis.py: the geometry of the AoP error."""

import numpy as np
import pytest

from benchmarks import error_analysis


def _row(gt, pred, aop_gt, aop_pred):
  row = {"aop_gt_deg": str(aop_gt), "aop_deg": str(aop_pred)}
  for prefix, pts in (("gt_", gt), ("", pred)):
    for name, (x, y) in zip(("PS1", "PS2", "FH1"), pts):
      row[f"{prefix}{name}_x"], row[f"{prefix}{name}_y"] = str(x), str(y)
  return row


def test_prediction_geometry_measures_ray_directions_and_ps_errors():
  gt = [(100.0, 100.0), (40.0, 100.0), (100.0, 160.0)]
  # PS2 rotated 10 degrees about PS1; FH1 exact; PS1 exact.
  angle = np.radians(180.0 - 10.0)
  pred = [gt[0], (100.0 + 60.0 * np.cos(angle), 100.0 + 60.0 * np.sin(angle)), gt[2]]
  out = error_analysis.prediction_geometry([_row(gt, pred, 90.0, 100.0)] * 2 +
                                           [_row(gt, gt, 90.0, 90.0)] * 2)
  assert out["ray_ps1_ps2_direction_error_deg"] == pytest.approx(5.0, abs=1e-6)
  assert out["ray_ps1_fh1_direction_error_deg"] == pytest.approx(0.0, abs=1e-6)
  assert out["ps_length_gt_px"] == pytest.approx(60.0)
  assert out["ps_length_error_px"] == pytest.approx(0.0, abs=1e-6)
  assert out["aop_error_mean_deg"] == pytest.approx(5.0)
  assert out["ray_error_correlation"] is None  # the FH1 ray has no error to correlate


def test_principal_axis_of_a_tilted_bar():
  mask = np.zeros((100, 100), bool)
  t = np.linspace(-30, 30, 600)
  for w in np.linspace(-3, 3, 13):
    x = 50 + t * np.cos(np.radians(20)) - w * np.sin(np.radians(20))
    y = 50 + t * np.sin(np.radians(20)) + w * np.cos(np.radians(20))
    mask[np.round(y).astype(int), np.round(x).astype(int)] = True
  axis = error_analysis.principal_axis_deg(mask)
  assert abs(error_analysis._wrap(axis - 20.0, 180.0)) < 1.0  # pylint: disable=protected-access


def test_rule_sensitivity_is_exact_at_full_resolution_and_not_when_coarse():
  cv2 = pytest.importorskip("cv2")
  from data_prep import masks as masks_lib  # pylint: disable=import-outside-toplevel
  mask = np.zeros((64, 64), np.uint8)
  cv2.ellipse(mask, (22, 20), (13, 4), 15, 0, 360, 1, -1)   # pubic symphysis
  cv2.circle(mask, (36, 44), 14, 2, -1)                      # fetal head
  masks = mask[None]
  points = masks_lib.landmarks_from_mask(mask)[None]
  out = error_analysis.rule_sensitivity(masks, points, [64, 8])
  assert out["64"]["mre_px_mean"] == pytest.approx(0.0, abs=1e-6)
  assert out["64"]["aop_error_deg"] == pytest.approx(0.0, abs=1e-4)
  assert out["8"]["mre_px_mean"] > 0.5
