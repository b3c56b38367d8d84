"""Coordinate mappings and the Angle of Progression: the one implementation of each.

Conventions: points are `(x, y)` = (column, row), pixel centres at integers, origin at the top-left
corner's pixel centre, so a grid of `S` pixels spans `[-0.5, S - 0.5]`. Sizes are `(width, height)`.
Every function takes numpy arrays or tensors, broadcasts, and returns float32 tensors; it is plain TF
so that training, evaluation, the exported SavedModel and TFLite run the same code.
"""

import math

import tensorflow as tf

# Landmark indices in the [..., 3, 2] layout.
PS1, PS2, FH1 = 0, 1, 2

# The official IUGC images are 512x512; the paper reports pixel errors in that space.
REFERENCE_SIZE_PX = 512.0


def _f32(x):
  return tf.cast(tf.convert_to_tensor(x), tf.float32)


def rescale_points(points, from_size, to_size):
  """Maps points between two grids that cover the same field of view.

  Args:
    points: [..., 2] `(x, y)` on the `from` grid (pixel or cell centres at integers).
    from_size: `(width, height)` of the `from` grid, broadcastable to `points`.
    to_size: `(width, height)` of the `to` grid, broadcastable to `points`.

  Returns:
    float32 [..., 2]: `(p + 0.5) * to / from - 0.5`, exact for any sub-pixel point.
  """
  points, from_size, to_size = _f32(points), _f32(from_size), _f32(to_size)
  return (points + 0.5) * (to_size / from_size) - 0.5


def pixel_to_cell(points_px, image_size_px, heatmap_size_cells):
  """Image pixels -> heatmap cells (float, sub-cell). Sizes are `(width, height)`."""
  return rescale_points(points_px, image_size_px, heatmap_size_cells)


def cell_to_pixel(points_cells, heatmap_size_cells, image_size_px):
  """Heatmap cells -> image pixels: cell `i` maps to `(i + 0.5) * S / R - 0.5`."""
  return rescale_points(points_cells, heatmap_size_cells, image_size_px)


def to_512_scale(image_size_px):
  """Per-axis factor `(512 / width, 512 / height)` that turns pixel distances into 512 space."""
  return REFERENCE_SIZE_PX / _f32(image_size_px)


def angle_deg(vertex, a, b):
  """Angle at `vertex` between `vertex->a` and `vertex->b`, in degrees, in [0, 180].

  Uses atan2(|cross|, dot), which is exact near 0 and 180 degrees and converts to TFLite (acos does
  not). Returns NaN where either ray has zero length (coincident points).

  Args:
    vertex, a, b: [..., 2] `(x, y)` points, broadcastable.

  Returns:
    float32 [...] degrees.
  """
  vertex, a, b = _f32(vertex), _f32(a), _f32(b)
  u = a - vertex
  v = b - vertex
  cross = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
  dot = u[..., 0] * v[..., 0] + u[..., 1] * v[..., 1]
  angle = tf.atan2(tf.abs(cross), dot) * (180.0 / math.pi)
  degenerate = tf.logical_or(
      tf.reduce_all(tf.equal(u, 0.0), axis=-1), tf.reduce_all(tf.equal(v, 0.0), axis=-1))
  return tf.where(degenerate, tf.fill(tf.shape(angle), math.nan), angle)


def aop_deg(landmarks):
  """Angle of Progression: the angle at PS1 between PS1->PS2 and PS1->FH1, in degrees.

  Args:
    landmarks: [..., 3, 2] `(x, y)` in any one pixel space, order PS1, PS2, FH1. AoP depends on
      the space when it is not isotropic, so pass original-image pixels.

  Returns:
    float32 [...] degrees; NaN where PS1 coincides with PS2 or FH1.
  """
  landmarks = _f32(landmarks)
  return angle_deg(landmarks[..., PS1, :], landmarks[..., PS2, :], landmarks[..., FH1, :])


def is_degenerate(landmarks):
  """True where the AoP of `landmarks` [..., 3, 2] is undefined (coincident points)."""
  return tf.math.is_nan(aop_deg(landmarks))
