"""Training losses (aop_tf/losses.py): hand-worked values of each heatmap loss and the masked
segmentation loss (the spatial-softmax loss: tests/test_softmax_head.py)."""

import math

import numpy as np
import pytest

from aop_tf import config
from aop_tf import heatmap
from aop_tf import losses


def _targets(batch=2, size=16, sigma=1.5):
  points = np.random.default_rng(0).uniform(2, size - 3, (batch, 3, 2)).astype("float32")
  return heatmap.gaussian_heatmaps(points, (size, size), sigma).numpy()


def test_mse_is_the_elementwise_mean():
  y = _targets()
  pred = y + np.random.default_rng(1).normal(0, 0.1, y.shape).astype("float32")
  got = float(losses.heatmap_loss("mse")(y, pred))
  assert got == pytest.approx(float(np.mean((pred - y) ** 2)), rel=1e-5)
  scaled = float(losses.heatmap_loss("mse", heatmap_scale=10.0)(y, pred))
  assert scaled == pytest.approx(float(np.mean((pred - 10 * y) ** 2)), rel=1e-5)


def test_weighted_mse_weights_the_foreground():
  y = _targets()
  pred = np.zeros_like(y)
  plain = float(losses.heatmap_loss("mse")(y, pred))
  weighted = float(losses.heatmap_loss("weighted_mse", foreground_weight=10.0)(y, pred))
  assert weighted == pytest.approx(float(np.mean(y ** 2 * (1 + 10 * y))), rel=1e-5)
  assert weighted > plain
  with pytest.raises(ValueError, match="foreground_weight"):
    losses.heatmap_loss("weighted_mse", foreground_weight=0.0)


def test_adaptive_wing_zero_at_target_and_smooth_at_theta():
  y = _targets()
  awing = losses.heatmap_loss("awing", heatmap_scale=2.0)
  assert float(awing(y, 2.0 * y)) == pytest.approx(0.0, abs=1e-6)
  assert float(awing(y, 2.0 * y + 0.3)) > 0.0
  # The two pieces meet at |d| = theta (continuity), for any target value.
  loss = losses.AdaptiveWingLoss(map_weight=0.0)
  y0 = np.full((1, 1, 1, 1), 0.4, np.float32)
  below = float(loss(y0, y0 + 0.5 - 1e-4))
  above = float(loss(y0, y0 + 0.5 + 1e-4))
  assert below == pytest.approx(above, abs=1e-2)
  with pytest.raises(ValueError, match="Unknown loss"):
    losses.heatmap_loss("l1")


def test_masked_segmentation_loss_ignores_unlabelled_examples():
  probs = np.full((2, 4, 4, 3), 1.0 / 3.0, np.float32)
  labels = np.zeros((2, 4, 4), np.int32)
  labels[1] = -1
  per_example = losses.MaskedSegmentationLoss()(labels, probs)
  # Mean over the batch: example 0 contributes log(3), example 1 (no mask) 0.
  assert float(per_example) == pytest.approx(math.log(3.0) / 2, rel=1e-5)


@pytest.mark.parametrize("name", config.HEATMAP_LOSSES)
def test_landmarks_in_cells_are_rendered_by_the_codec_inside_the_loss(name):
  """The pipeline hands the losses cells; rendering them in the loss is the host's old targets."""
  import keras  # pylint: disable=import-outside-toplevel
  from aop_tf import codec as codec_lib  # pylint: disable=import-outside-toplevel
  codec = codec_lib.HeatmapCodec(input_size=64, heatmap_size=16, sigma_cells=1.5)
  cells = np.random.default_rng(0).uniform(2, 13, (2, 3, 2)).astype("float32")
  maps = codec.render(cells).numpy()
  pred = np.random.default_rng(1).uniform(0.01, 1, maps.shape).astype("float32")
  loss = losses.heatmap_loss(name, heatmap_scale=2.0, codec=codec)
  assert float(loss(cells, pred)) == pytest.approx(float(loss(maps, pred)), rel=1e-6)
  assert float(loss(cells, pred)) != pytest.approx(float(loss(cells + 1.0, pred)), rel=1e-3)
  again = keras.losses.deserialize(keras.losses.serialize(loss))  # a checkpoint's compile=True
  assert again.codec == codec
  assert float(again(cells, pred)) == pytest.approx(float(loss(cells, pred)), rel=1e-6)
  with pytest.raises(ValueError, match="need a codec"):
    losses.heatmap_loss(name)(cells, pred)
