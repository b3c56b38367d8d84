"""The spatial-softmax heatmap head and its cross-entropy loss."""

import math

import numpy as np
import pytest

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
