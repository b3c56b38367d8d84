"""Tests for aop_tf.metrics: hand-worked errors and AoP cases, properties, prediction loops."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_tf import geometry
from aop_tf import heatmap
from aop_tf import metrics
from aop_tf import model as model_lib


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


def _heatmap_dataset(gt_px, size_px, heatmap_size=32, batch_size=2):
  """Batches whose `image` is the perfect target heatmap of the GT (for identity 'models')."""
  cells = geometry.pixel_to_cell(gt_px, size_px[:, None, :], (heatmap_size, heatmap_size))
  maps = heatmap.gaussian_heatmaps(cells, (heatmap_size, heatmap_size), 1.5)
  return tf.data.Dataset.from_tensor_slices({
      "image": maps, "landmarks": tf.constant(gt_px), "size_px": tf.constant(size_px),
      "filename": tf.constant([f"img{i}.png" for i in range(len(gt_px))]),
  }).batch(batch_size)


def test_predict_on_dataset_with_callables_recovers_points():
  rng = np.random.default_rng(0)
  size = np.array([[256, 256], [300, 200], [128, 256]], np.float32)
  gt = (rng.uniform(0.15, 0.85, (3, 3, 2)) * size[:, None, :]).astype(np.float32)
  dataset = _heatmap_dataset(gt, size)
  timing = {}
  for fn in (lambda x: x, lambda x: {"heatmaps": x}):
    out = metrics.predict_on_dataset(fn, dataset, "dark", keep_heatmaps=True, timing=timing)
    assert out["pred_px"].shape == (3, 3, 2) and out["pred_px"].dtype == np.float32
    assert out["confidence"].shape == (3, 3)
    assert out["heatmaps"].shape == (3, 32, 32, 3)
    assert out["filename"].tolist() == ["img0.png", "img1.png", "img2.png"]
    np.testing.assert_allclose(out["gt_px"], gt)
    np.testing.assert_allclose(out["size_px"], size)
    # DARK is exact on noise-free Gaussians up to the pixel/cell ratio (<= 9.4 px per cell).
    np.testing.assert_allclose(out["pred_px"], gt, atol=0.05)
    np.testing.assert_allclose(out["confidence"], 1.0, atol=0.1)
  assert timing["n_batches"] == 2 and timing["model_s"] > 0
  argmax = metrics.predict_on_dataset(lambda x: x, dataset, "argmax")
  assert "heatmaps" not in argmax
  assert np.abs(argmax["pred_px"] - gt).max() <= 0.5 * 300 / 32 + 1e-3


def test_predict_on_dataset_with_keras_model():
  net = model_lib.build_unet(input_size=32, input_channels=1, base_filters=4, depth=2,
                             heatmap_size=8)
  images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 1)).astype(np.float32)
  dataset = tf.data.Dataset.from_tensor_slices({
      "image": images, "landmarks": np.zeros((3, 3, 2), np.float32),
      "size_px": np.full((3, 2), 64.0, np.float32), "filename": ["a", "b", "c"],
  }).batch(2)
  out = metrics.predict_on_dataset(net, dataset, "dark", blur_sigma_cells=1.0)
  assert out["pred_px"].shape == (3, 3, 2)
  # On the image, give or take the one cell (8 px) DARK may move a peak off the edge cell.
  assert np.all((out["pred_px"] >= -8.5) & (out["pred_px"] <= 71.5))
  errors = metrics.per_image_errors(out["pred_px"], out["gt_px"], out["size_px"])
  json.dumps(metrics.report(errors), allow_nan=False)


def test_predict_with_serving_signature():
  gt = np.array([[[10, 10], [0, 10], [10, 20]]] * 3, np.float32)

  def serve(images):
    batch = images.shape[0]
    return {"landmarks": tf.constant(gt[:batch] + 1.0), "confidence": tf.ones([batch, 3]),
            "heatmaps": tf.zeros([batch, 4, 4, 3])}

  examples = [{"image": np.zeros((20, 30, 1), np.uint8), "landmarks": gt[0],
               "filename": b"x.png"},
              {"image": np.zeros((2, 40, 40, 1), np.uint8), "landmarks": gt[:2],
               "filename": np.array([b"y.png", b"z.png"])}]
  out = metrics.predict_with_serving(serve, examples, keep_heatmaps=True)
  assert out["filename"].tolist() == ["x.png", "y.png", "z.png"]
  np.testing.assert_allclose(out["size_px"], [[30, 20], [40, 40], [40, 40]])
  np.testing.assert_allclose(out["pred_px"] - out["gt_px"], 1.0)
  assert out["heatmaps"].shape == (3, 4, 4, 3)
