"""The spatial-softmax heatmap head and its cross-entropy loss."""

import math

import numpy as np
import pytest

from aop_tf import geometry
from aop_tf import heatmap
from aop_tf import losses
from aop_tf import model as model_lib


def _targets(points, size=32, sigma=2.0):
  return heatmap.gaussian_heatmaps(np.asarray(points, np.float32), (size, size), sigma)


def test_head_outputs_scaled_distributions():
  scale = 2 * math.pi * 2.0 ** 2
  model = model_lib.build_unet(input_size=64, base_filters=4, depth=2, heatmap_size=16,
                               heatmap_activation="spatial_softmax", softmax_peak_scale=scale)
  maps = model(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)).astype(np.float32))
  sums = np.asarray(maps["heatmaps"]).sum(axis=(1, 2))
  np.testing.assert_allclose(sums, scale, rtol=1e-4)


def test_unknown_activation_is_refused():
  with pytest.raises(ValueError, match="heatmap_activation"):
    model_lib.build_unet(input_size=64, base_filters=4, depth=2, heatmap_size=16,
                         heatmap_activation="sigmoid")


def test_softmax_ce_is_minimal_at_the_target_and_scale_free():
  target = _targets([[[10.3, 12.6], [20.0, 5.5], [16.2, 25.1]]])
  loss = losses.SpatialSoftmaxCE()
  at_target = float(loss(target, target))
  scaled = float(loss(target, 7.0 * target))
  shifted = float(loss(target, _targets([[[12.3, 12.6], [20.0, 7.5], [16.2, 22.1]]])))
  flat = float(loss(target, np.ones_like(target)))
  assert at_target == pytest.approx(scaled, rel=1e-5)
  assert at_target < shifted < flat
  # Cross-entropy of a distribution with itself is its entropy: ~log(2 pi e sigma^2) for a
  # well-sampled Gaussian.
  assert at_target == pytest.approx(math.log(2 * math.pi * math.e * 4.0), rel=0.02)


def test_softmax_ce_target_shaped_output_decodes_exactly():
  points = np.array([[[10.3, 12.6], [20.0, 5.5], [16.2, 25.1]]], np.float32)
  # What the head outputs at the loss optimum: the normalised target times 2 pi sigma^2.
  target = np.asarray(_targets(points))
  output = target / target.sum(axis=(1, 2), keepdims=True) * 2 * math.pi * 4.0
  decoded, peak = heatmap.decode_heatmaps(output, "dark")
  np.testing.assert_allclose(decoded, points, atol=0.01)
  np.testing.assert_allclose(peak, np.asarray(target).max(axis=(1, 2)), atol=0.02)


def test_soft_argmax_is_the_expected_cell_position():
  points = np.array([[[10.3, 12.6], [20.0, 5.5], [16.2, 25.1]]], np.float32)
  np.testing.assert_allclose(heatmap.soft_argmax(_targets(points)), points, atol=0.01)
  one_hot = np.zeros((1, 8, 8, 1), np.float32)
  one_hot[0, 5, 2, 0] = 3.0  # row 5, column 2: (x, y) = (2, 5); scale free
  np.testing.assert_allclose(heatmap.soft_argmax(one_hot), [[[2.0, 5.0]]])


def test_geometric_terms_add_the_coordinate_and_aop_errors():
  true_points = np.array([[[20.0, 12.0], [8.0, 14.0], [24.0, 26.0]]], np.float32)
  # PS2 moved 2 cells along y: coordinate error (0 + 2 + 0) / 3 cells, and an AoP change.
  pred_points = true_points + np.array([[[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]]], np.float32)
  target, pred = _targets(true_points), _targets(pred_points)
  ce = float(losses.SpatialSoftmaxCE()(target, pred))
  coord = float(losses.SpatialSoftmaxCE(coord_weight=1.0)(target, pred))
  both = float(losses.SpatialSoftmaxCE(coord_weight=1.0, aop_weight=0.5)(target, pred))
  aop_change = abs(float(geometry.aop_deg(pred_points)[0]) - float(geometry.aop_deg(true_points)[0]))
  assert aop_change > 5.0
  assert coord - ce == pytest.approx(2.0 / 3.0, abs=0.01)
  assert both - coord == pytest.approx(0.5 * aop_change, rel=0.01)
  # At the target both terms vanish, so the optimum of the cross-entropy is unchanged.
  assert float(losses.SpatialSoftmaxCE(1.0, 0.5)(target, target)) == pytest.approx(
      float(losses.SpatialSoftmaxCE()(target, target)), abs=1e-3)


def test_geometric_terms_need_the_softmax_loss():
  with pytest.raises(ValueError, match="softmax"):
    losses.heatmap_loss("mse", coord_weight=1.0)
  assert losses.heatmap_loss("softmax_ce", aop_weight=0.1).get_config()["aop_weight"] == 0.1


def test_aop_term_ignores_a_degenerate_target_without_nan_gradients():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  target = np.array(_targets([[[20.0, 12.0], [8.0, 14.0], [24.0, 26.0]]] * 2))
  target[1] = 0.0  # an example without landmarks: its soft-argmax points coincide
  logits = tf.Variable(np.random.default_rng(0).normal(size=target.shape).astype(np.float32))
  loss_fn = losses.SpatialSoftmaxCE(coord_weight=0.0, aop_weight=1.0)
  with tf.GradientTape() as tape:
    prob = tf.nn.softmax(tf.reshape(logits, [2, -1, 3]), axis=1)
    loss = loss_fn.call(tf.constant(target), tf.reshape(prob, target.shape))
  grad = tape.gradient(loss, logits)
  assert np.all(np.isfinite(loss.numpy())) and np.all(np.isfinite(grad.numpy()))
