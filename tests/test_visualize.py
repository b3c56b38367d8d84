"""Tests for aop_tf.visualize: shapes, dtypes, and that things are drawn where expected."""

import cv2
import numpy as np
import pytest

from aop_tf import geometry
from aop_tf import heatmap
from aop_tf import visualize

GT = np.array([[150.0, 40.0], [60.0, 50.0], [170.0, 160.0]], np.float32)


def _mapped(points, from_size, to_size):
  return np.round(geometry.rescale_points(points, from_size, to_size)).astype(int)


def test_overlay_upscales_and_draws_points_in_their_colours():
  image = np.zeros((256, 200), np.uint8)  # H=256, W=200: factor ceil(512 / 200) = 3.
  pred = GT + 20.0
  out = visualize.overlay(image, pred=pred, gt=GT, title="t")
  assert out.shape == (768, 600, 3) and out.dtype == np.uint8
  for points, color in ((GT, visualize.GT_COLOR), (pred, visualize.PRED_COLOR)):
    for x, y in _mapped(points, (200, 256), (600, 768)):
      np.testing.assert_allclose(out[y, x], color, atol=40)
  # Something is drawn half-way along the PS1->PS2 ray; the far corner stays black.
  mid = _mapped((GT[0] + GT[1]) / 2, (200, 256), (600, 768))
  assert out[mid[1] - 2:mid[1] + 3, mid[0] - 2:mid[0] + 3].max() > 100
  assert out[-40:, -40:].max() == 0


def test_overlay_inputs_and_degenerate_points():
  rgb = np.full((600, 520, 3), 80, np.uint8)
  out = visualize.overlay(rgb)  # big enough: not upscaled, nothing drawn
  np.testing.assert_array_equal(out, rgb)
  floats = np.full((64, 64, 1), 100.7, np.float32)
  degenerate = np.array([[10, 10], [10, 10], [20, 30]], np.float32)
  out = visualize.overlay(floats, pred=degenerate, gt=[[10, 10], [0, 10], [10, 20]],
                          aop_gt=90.0)
  assert out.shape == (512, 512, 3) and out.dtype == np.uint8
  out = visualize.overlay(floats, pred=np.full((3, 2), np.nan, np.float32))
  assert out.shape == (512, 512, 3)
  with pytest.raises(ValueError, match="image"):
    visualize.overlay(np.zeros((4, 4, 2)))


def test_heatmap_panel_shape_and_hot_spots():
  image = np.random.default_rng(0).integers(0, 255, (256, 256, 1), np.uint8)
  cells = geometry.pixel_to_cell(GT, (256, 256), (64, 64))
  maps = heatmap.gaussian_heatmaps(cells, (64, 64), 2.0).numpy()
  panel = visualize.heatmap_panel(image, maps)
  assert panel.shape == (256, 1024, 3) and panel.dtype == np.uint8
  for k, (x, y) in enumerate(np.round(GT).astype(int)):
    tile = panel[:, 256 * (k + 1):256 * (k + 2)].astype(int)
    # The gray image adds the same to R and B; the colormap is red at the peak, blue far away.
    assert tile[y, x, 0] - tile[y, x, 2] > 60
    assert tile[250, 5, 0] - tile[250, 5, 2] < -60


def test_save_png_round_trip(tmp_path):
  rgb = np.zeros((10, 12, 3), np.uint8)
  rgb[..., 0] = 200  # red in RGB
  path = tmp_path / "sub" / "a.png"
  visualize.save_png(str(path), rgb)
  back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
  np.testing.assert_array_equal(back, rgb)
