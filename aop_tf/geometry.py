"""Coordinate mappings and the Angle of Progression: the one implementation of each.

Conventions: points are `(x, y)` = (column, row), pixel centres at integers, origin at the top-left
corner's pixel centre, so a grid of `S` pixels spans `[-0.5, S - 0.5]`. Sizes are `(width, height)`.

Every function takes numpy arrays, Python numbers or TF tensors, broadcasts, and computes in
float32 with the same formula on either backend (`backend`): numpy arrays in, numpy float32 out;
any TF tensor in, float32 tensors out (TF ops only, so training, the exported SavedModel and TFLite
run this code too). TensorFlow is imported only when a tensor is passed: inference on a `.tflite`
model runs without it.
"""

import functools
import math
import sys
import types

import numpy as np

# Landmark indices in the [..., 3, 2] layout.
PS1, PS2, FH1 = 0, 1, 2

# The official IUGC images are 512x512; the paper reports pixel errors in that space.
REFERENCE_SIZE_PX = 512.0

_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32

# The operations the formulas use, on numpy float32 arrays. `is_zero` counts subnormal values as
# zero, as TF's CPU kernels do (they flush subnormal results), so both backends agree.
NUMPY = types.SimpleNamespace(
    name="numpy", f32=lambda x: np.asarray(x, np.float32), atan2=np.arctan2, abs=np.abs,
    all=np.all, logical_and=np.logical_and, logical_or=np.logical_or, isnan=np.isnan,
    is_zero=lambda x: np.abs(x) < _TINY, where=np.where, full_like=np.full_like,
    ones_like=np.ones_like, norm=lambda x, axis: np.linalg.norm(x, axis=axis))


@functools.lru_cache(maxsize=None)
def _tensorflow():
  """The same operations as `NUMPY`, on float32 TF tensors."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return types.SimpleNamespace(
      name="tensorflow", f32=lambda x: tf.cast(tf.convert_to_tensor(x), tf.float32),
      atan2=tf.atan2, abs=tf.abs, all=tf.reduce_all, logical_and=tf.logical_and,
      logical_or=tf.logical_or, isnan=tf.math.is_nan, is_zero=lambda x: tf.equal(x, 0.0),
      where=tf.where, full_like=lambda x, value: tf.fill(tf.shape(x), value),
      ones_like=tf.ones_like, norm=lambda x, axis: tf.norm(x, axis=axis))


def backend(*arrays):
  """The operations for `arrays`: TF's if any is a TF tensor (TensorFlow is already imported
  then), else numpy's (`NUMPY`). Both have `f32`, `atan2`, `abs`, `all`, `logical_and`,
  `logical_or`, `isnan`, `is_zero`, `where`, `full_like`, `ones_like` and `norm`."""
  tf = sys.modules.get("tensorflow")
  if tf is not None and any(tf.is_tensor(a) for a in arrays):
    return _tensorflow()
  return NUMPY


def rescale_points(points, from_size, to_size):
  """Maps points between two grids that cover the same field of view.

  Args:
    points: [..., 2] `(x, y)` on the `from` grid (pixel or cell centres at integers).
    from_size: `(width, height)` of the `from` grid, broadcastable to `points`.
    to_size: `(width, height)` of the `to` grid, broadcastable to `points`.

  Returns:
    float32 [..., 2]: `(p + 0.5) * to / from - 0.5`, exact for any sub-pixel point.
  """
  xp = backend(points, from_size, to_size)
  points, from_size, to_size = xp.f32(points), xp.f32(from_size), xp.f32(to_size)
  return (points + 0.5) * (to_size / from_size) - 0.5


def pixel_to_cell(points_px, image_size_px, heatmap_size_cells):
  """Image pixels -> heatmap cells (float, sub-cell). Sizes are `(width, height)`."""
  return rescale_points(points_px, image_size_px, heatmap_size_cells)


def cell_to_pixel(points_cells, heatmap_size_cells, image_size_px):
  """Heatmap cells -> image pixels: cell `i` maps to `(i + 0.5) * S / R - 0.5`."""
  return rescale_points(points_cells, heatmap_size_cells, image_size_px)


def to_512_scale(image_size_px):
  """Per-axis factor `(512 / width, 512 / height)` that turns pixel distances into 512 space."""
  return REFERENCE_SIZE_PX / backend(image_size_px).f32(image_size_px)


def angle_deg(vertex, a, b):
  """Angle at `vertex` between `vertex->a` and `vertex->b`, in degrees, in [0, 180].

  Uses atan2(|cross|, dot), which is exact near 0 and 180 degrees and converts to TFLite (acos does
  not). Returns NaN where either ray has zero length (coincident points, to float32 precision).

  Args:
    vertex, a, b: [..., 2] `(x, y)` points, broadcastable.

  Returns:
    float32 [...] degrees.
  """
  xp = backend(vertex, a, b)
  vertex, a, b = xp.f32(vertex), xp.f32(a), xp.f32(b)
  u = a - vertex
  v = b - vertex
  cross = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
  dot = u[..., 0] * v[..., 0] + u[..., 1] * v[..., 1]
  angle = xp.atan2(xp.abs(cross), dot) * (180.0 / math.pi)
  degenerate = xp.logical_or(xp.all(xp.is_zero(u), axis=-1), xp.all(xp.is_zero(v), axis=-1))
  return xp.where(degenerate, xp.full_like(angle, math.nan), angle)


def aop_deg(landmarks):
  """Angle of Progression: the angle at PS1 between PS1->PS2 and PS1->FH1, in degrees.

  Args:
    landmarks: [..., 3, 2] `(x, y)` in any one pixel space, order PS1, PS2, FH1. AoP depends on
      the space when it is not isotropic, so pass original-image pixels.

  Returns:
    float32 [...] degrees; NaN where PS1 coincides with PS2 or FH1.
  """
  landmarks = backend(landmarks).f32(landmarks)
  return angle_deg(landmarks[..., PS1, :], landmarks[..., PS2, :], landmarks[..., FH1, :])


def is_degenerate(landmarks):
  """True where the AoP of `landmarks` [..., 3, 2] is undefined (coincident points)."""
  return backend(landmarks).isnan(aop_deg(landmarks))
