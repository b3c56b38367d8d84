"""Tests of the shared math: aop_tf/geometry.py (mappings, AoP) and aop_tf/heatmap.py (encode/decode).

Hand-worked cases pin the conventions (pixel centres at integers, `(x, y)`, sizes `(width,
height)`); hypothesis property tests check round trips and the invariances of the AoP.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_tf import config, geometry, heatmap, pseudo

FAST = settings(max_examples=40, deadline=None)


# --- geometry: hand-worked ---------------------------------------------------------------------


def test_rescale_points_hand_worked():
  # Pixel centres at integers: the grid edge -0.5 maps to -0.5, the far edge S - 0.5 to T - 0.5.
  np.testing.assert_allclose(geometry.rescale_points([[-0.5, -0.5], [255.5, 127.5]], (256, 128),
                                                     (512, 64)), [[-0.5, -0.5], [511.5, 63.5]])
  # Pixel 0 of 256 -> (0 + 0.5) * 64 / 256 - 0.5 = -0.375 cells; pixel 2 -> 0.125.
  np.testing.assert_allclose(geometry.pixel_to_cell([[0.0, 2.0]], (256, 256), (64, 64)),
                             [[-0.375, 0.125]])
  # Non-square: x and y scale separately.
  np.testing.assert_allclose(geometry.rescale_points([10.0, 10.0], (100, 50), (200, 200)),
                             [20.5, 41.5])


@pytest.mark.parametrize("cells,pixels", [(64, 256), (64, 512), (48, 256), (128, 100)])
def test_cell_to_pixel_formula(cells, pixels):
  i = np.arange(cells, dtype=np.float32)
  points = np.stack([i, i[::-1]], axis=-1)
  expected = (points + 0.5) * pixels / cells - 0.5
  np.testing.assert_allclose(geometry.cell_to_pixel(points, (cells, cells), (pixels, pixels)),
                             expected, rtol=1e-6, atol=1e-4)
  # Cell 0 of 64 over 256 px is centred on pixel 1.5 (it covers pixels 0..3).
  assert float(geometry.cell_to_pixel([0.0, 0.0], (64, 64), (256, 256))[0]) == 1.5


def test_to_512_scale():
  np.testing.assert_allclose(geometry.to_512_scale([256, 1024]), [2.0, 0.5])


def test_aop_hand_worked():
  ps1 = [10.0, 10.0]
  right = [[ps1, [20.0, 10.0], [10.0, 30.0]]]  # 90 degrees
  straight = [[ps1, [0.0, 10.0], [25.0, 10.0]]]  # 180 degrees
  same_ray = [[ps1, [13.0, 14.0], [16.0, 18.0]]]  # 0 degrees
  obtuse = [[[0.0, 0.0], [-1.0, 0.0], [1.0, 1.0]]]  # 135 degrees
  got = [float(geometry.aop_deg(np.array(x, np.float32))[0])
         for x in (right, straight, same_ray, obtuse)]
  np.testing.assert_allclose(got, [90.0, 180.0, 0.0, 135.0], atol=1e-5)
  # The vertex is PS1 (index 0): 63.43 deg here, where the angle at PS2 would be 90.
  assert float(geometry.aop_deg([[20.0, 10.0], [10.0, 10.0], [10.0, 30.0]])) == pytest.approx(
      math.degrees(math.atan2(20.0, 10.0)), abs=1e-4)


def test_aop_nan_when_degenerate():
  degenerate = np.array([[[5.0, 5.0], [5.0, 5.0], [9.0, 1.0]],   # PS2 on PS1
                         [[5.0, 5.0], [1.0, 2.0], [5.0, 5.0]],   # FH1 on PS1
                         [[1.0, 2.0], [3.0, 4.0], [3.0, 4.0]]],  # PS2 on FH1: defined, 0 deg
                        np.float32)
  aop = geometry.aop_deg(degenerate)
  assert np.isnan(aop[0]) and np.isnan(aop[1]) and aop[2] == pytest.approx(0.0)
  np.testing.assert_array_equal(geometry.is_degenerate(degenerate), [True, True, False])


# --- geometry: properties ----------------------------------------------------------------------

coord = st.floats(-50.0, 600.0, allow_nan=False, width=32)
size = st.integers(8, 1024)


@FAST
@given(x=coord, y=coord, w=size, h=size, rw=size, rh=size)
def test_mapping_round_trip(x, y, w, h, rw, rh):
  cells = geometry.pixel_to_cell([x, y], (w, h), (rw, rh))
  back = geometry.cell_to_pixel(cells, (rw, rh), (w, h))
  np.testing.assert_allclose(back, [x, y], atol=1e-4 * max(1.0, abs(x), abs(y)) * max(
      1.0, w / rw, h / rh))


def _triangles():
  point = st.tuples(st.floats(-300.0, 300.0, width=32), st.floats(-300.0, 300.0, width=32))
  return st.tuples(point, point, point).map(lambda t: np.array(t, np.float32)).filter(
      lambda p: np.linalg.norm(p[1] - p[0]) > 1.0 and np.linalg.norm(p[2] - p[0]) > 1.0)


@FAST
@given(points=_triangles(), angle=st.floats(-math.pi, math.pi), scale=st.floats(0.1, 10.0),
       shift=st.tuples(st.floats(-500.0, 500.0), st.floats(-500.0, 500.0)))
def test_aop_invariant_under_similarity(points, angle, scale, shift):
  rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
  moved = (scale * points.astype(np.float64) @ rotation.T + np.array(shift)).astype(np.float32)
  before, after = float(geometry.aop_deg(points)), float(geometry.aop_deg(moved))
  assert after == pytest.approx(before, abs=0.02)
  mirrored = points * np.array([-1.0, 1.0], np.float32)  # unsigned angle: mirror-invariant too
  assert float(geometry.aop_deg(mirrored)) == pytest.approx(before, abs=1e-3)


@FAST
@given(points=st.lists(st.floats(-1e3, 1e3, width=32), min_size=6, max_size=6),
       as_tensor=st.booleans())
def test_aop_in_range_or_nan_only_when_degenerate(points, as_tensor):
  landmarks = np.array(points, np.float32).reshape(3, 2)
  aop = float(geometry.aop_deg(tf.constant(landmarks) if as_tensor else landmarks))
  # Coincident to float32 precision: TF's CPU kernels flush subnormal differences to zero, so
  # points closer than the smallest normal float32 (1.2e-38) count as the same point.
  tiny = np.finfo(np.float32).tiny
  coincident = (np.all(np.abs(landmarks[0] - landmarks[1]) < tiny)
                or np.all(np.abs(landmarks[0] - landmarks[2]) < tiny))
  if coincident:
    assert math.isnan(aop)
  else:
    assert 0.0 <= aop <= 180.0



# --- geometry: one formula, two backends -------------------------------------------------------

# Multiples of 1/16 are exact in float32, so differences of points are 0 or >= 1/16 (no subnormal
# values, which TF's kernels flush and numpy keeps).
_grid = st.integers(-8000, 8000).map(lambda v: v / 16.0)


@FAST
@given(points=st.lists(_grid, min_size=24, max_size=24), collapse=st.integers(0, 3),
       sizes=st.lists(st.integers(1, 4096), min_size=8, max_size=8))
def test_numpy_and_tensorflow_give_the_same_results(points, collapse, sizes):
  landmarks = np.array(points, np.float32).reshape(4, 3, 2)
  landmarks[collapse, collapse % 3] = landmarks[collapse, 0]  # some PS1 coincides with PS2/FH1
  size = np.array(sizes, np.float32).reshape(4, 2)
  pairs = [(geometry.aop_deg, (landmarks,)), (geometry.is_degenerate, (landmarks,)),
           (geometry.angle_deg, (landmarks[:, 1], landmarks[:, 0], landmarks[:, 2])),
           (geometry.rescale_points, (landmarks, size[:, None], (64, 48))),
           (geometry.to_512_scale, (size,))]
  for fn, args in pairs:
    got = fn(*args)
    want = fn(*[tf.constant(a) if isinstance(a, np.ndarray) else a for a in args])
    assert isinstance(got, np.ndarray) and tf.is_tensor(want), fn.__name__
    assert got.dtype == want.dtype.as_numpy_dtype, fn.__name__
    if got.dtype == bool:
      np.testing.assert_array_equal(got, want.numpy(), err_msg=fn.__name__)
    else:
      np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-4, err_msg=fn.__name__)
  semi = config.SemiSpec()
  confidence = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(4, 3)
  by_numpy = pseudo.verdicts(landmarks, confidence, size, semi)
  by_tf = pseudo.verdicts(tf.constant(landmarks), confidence, size, semi)
  for name, verdict in by_numpy.items():
    np.testing.assert_array_equal(verdict, by_tf[name].numpy(), err_msg=name)


# --- heatmaps: encoding ------------------------------------------------------------------------


def test_gaussian_heatmaps_shape_and_peak():
  points = np.array([[[3.0, 5.0], [10.0, 2.0], [7.0, 7.0]],
                     [[0.0, 0.0], [15.0, 11.0], [8.0, 4.0]]], np.float32)
  maps = heatmap.gaussian_heatmaps(points, (16, 12), 1.5).numpy()
  assert maps.shape == (2, 12, 16, 3) and maps.dtype == np.float32
  for b in range(2):
    for k in range(3):
      x, y = points[b, k].astype(int)
      assert maps[b, y, x, k] == pytest.approx(1.0)
      assert maps[b, ..., k].max() == pytest.approx(1.0)
  # One cell away along x: exp(-1 / (2 sigma^2)).
  assert maps[0, 5, 4, 0] == pytest.approx(math.exp(-1.0 / (2 * 1.5 ** 2)), rel=1e-5)


# --- heatmaps: peak decoding (round trips through pixels: tests/test_codec.py) -------------------


def test_dark_refines_a_sub_cell_peak_exactly():
  maps = heatmap.gaussian_heatmaps([[[10.3, 7.6], [4.0, 4.0], [2.75, 11.2]]], (16, 14), 1.5)
  cells, peak = heatmap.decode_heatmaps(maps, "dark")
  np.testing.assert_allclose(cells[0], [[10.3, 7.6], [4.0, 4.0], [2.75, 11.2]], atol=1e-3)
  argmax, _ = heatmap.decode_heatmaps(maps, "argmax")
  np.testing.assert_array_equal(argmax[0], [[10.0, 8.0], [4.0, 4.0], [3.0, 11.0]])
  assert peak.numpy().min() > 0.9


@pytest.mark.parametrize("point", [[0.3, 6.2], [15.2, 6.0], [7.1, 0.4], [6.6, 13.3], [0.2, 13.1]])
def test_dark_keeps_the_argmax_in_border_cells(point):
  # A peak in a border cell has no neighbour on one side. Refining it with padded neighbours
  # turned the Newton step into a fixed -0.5 cell shift (SYMMETRIC padding: gradient = second
  # derivative); the border cell itself is the better answer.
  maps = heatmap.gaussian_heatmaps([[point]], (16, 14), 1.5)
  cells, _ = heatmap.decode_heatmaps(maps, "dark")
  argmax, _ = heatmap.decode_heatmaps(maps, "argmax")
  np.testing.assert_array_equal(cells, argmax)
  assert np.all(np.abs(cells[0, 0] - np.asarray(point)) <= 0.5)


def test_decode_rejects_unknown_method():
  with pytest.raises(ValueError, match="Unknown decode method"):
    heatmap.decode_heatmaps(tf.zeros([1, 4, 4, 3]), "softargmax")
