"""Heatmap primitives in cells: Gaussian rendering, peak finding, soft-argmax.

Heatmaps are float32 `[..., H, W, K]` (channels last, K = 3 landmarks PS1, PS2, FH1). Points on a
heatmap are in cells, `(x, y)`, cell centres at integers (see `aop_tf.geometry`). Plain TF, so the
training targets, evaluation, the SavedModel signatures and TFLite share it. `aop_tf.codec` puts
these together with the pixel <-> cell mapping; nothing else calls them to encode or decode.
"""

import math

import tensorflow as tf


def gaussian_heatmaps(points_cells, heatmap_size_cells, sigma_cells):
  """Renders one unnormalised Gaussian per point, peak 1 at the (sub-cell) point.

  Args:
    points_cells: [..., K, 2] float `(x, y)` in cells; points off the grid give partial or empty maps.
    heatmap_size_cells: `(width, height)` python ints.
    sigma_cells: Gaussian standard deviation in cells (python float or scalar tensor).

  Returns:
    float32 [..., H, W, K].
  """
  width, height = int(heatmap_size_cells[0]), int(heatmap_size_cells[1])
  points = tf.cast(tf.convert_to_tensor(points_cells), tf.float32)
  sigma = tf.cast(sigma_cells, tf.float32)
  xs = tf.range(width, dtype=tf.float32)
  ys = tf.range(height, dtype=tf.float32)
  gx = tf.exp(-tf.square(xs - points[..., 0:1]) / (2.0 * sigma * sigma))  # [..., K, W]
  gy = tf.exp(-tf.square(ys - points[..., 1:2]) / (2.0 * sigma * sigma))  # [..., K, H]
  maps = gy[..., :, None] * gx[..., None, :]  # [..., K, H, W]
  rank = len(maps.shape)
  perm = list(range(rank - 3)) + [rank - 2, rank - 1, rank - 3]
  return tf.transpose(maps, perm)


def gaussian_kernel(sigma_cells, radius=None):
  """Normalised 1-D Gaussian kernel of `2 * radius + 1` taps (radius defaults to ceil(3 sigma))."""
  if radius is None:
    radius = max(1, int(math.ceil(3.0 * sigma_cells)))
  taps = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-tf.square(taps) / (2.0 * float(sigma_cells) ** 2))
  return kernel / tf.reduce_sum(kernel)


def _blur(heatmaps, sigma_cells):
  """Separable Gaussian blur of [B, H, W, K] heatmaps, per channel, 'SAME' size."""
  channels = heatmaps.shape[-1]
  k1 = gaussian_kernel(sigma_cells)
  taps = k1.shape[0]
  kx = tf.tile(tf.reshape(k1, [1, taps, 1, 1]), [1, 1, channels, 1])
  ky = tf.tile(tf.reshape(k1, [taps, 1, 1, 1]), [1, 1, channels, 1])
  out = tf.nn.depthwise_conv2d(heatmaps, kx, strides=[1, 1, 1, 1], padding="SAME")
  return tf.nn.depthwise_conv2d(out, ky, strides=[1, 1, 1, 1], padding="SAME")


def decode_heatmaps(heatmaps, method="dark", blur_sigma_cells=0.0):
  """Finds each heatmap's peak, with optional sub-cell refinement.

  `argmax` returns the centre of the hottest cell. `dark` (Zhang et al., CVPR 2020) refines it with
  one Newton step on the log-heatmap, `offset = -Hessian^-1 * gradient` from central differences
  (exact for a noise-free Gaussian), optionally after a Gaussian blur of `blur_sigma_cells` that
  suppresses noise in network outputs. The offset is kept within one cell; where the log-heatmap is
  not locally concave, and in the border cells (which lack a neighbour on one side, as MMPose's
  `refine_keypoints_dark` skips them), the argmax is kept.

  Args:
    heatmaps: float [B, H, W, K].
    method: "argmax" or "dark" (`codec.DECODE_METHODS`).
    blur_sigma_cells: sigma of the pre-blur for `dark`, in cells; 0 disables it.

  Returns:
    points_cells: float32 [B, K, 2] `(x, y)` in cells.
    peak: float32 [B, K], the maximum of each raw heatmap (a confidence).
  """
  if method not in ("argmax", "dark"):
    raise ValueError(f"Unknown decode method {method!r}; expected argmax or dark.")
  heatmaps = tf.cast(heatmaps, tf.float32)
  shape = tf.shape(heatmaps)
  height, width = shape[1], shape[2]
  flat = tf.transpose(tf.reshape(heatmaps, [shape[0], height * width, shape[3]]), [0, 2, 1])
  index = tf.argmax(flat, axis=-1, output_type=tf.int32)  # [B, K]
  peak = tf.reduce_max(flat, axis=-1)
  ix = index % width
  iy = index // width
  points = tf.stack([tf.cast(ix, tf.float32), tf.cast(iy, tf.float32)], axis=-1)
  if method == "argmax":
    return points, peak

  maps = heatmaps
  if blur_sigma_cells and blur_sigma_cells > 0:
    maps = _blur(maps, blur_sigma_cells)
  log_maps = tf.math.log(tf.maximum(maps, 1e-10))
  # The padding only keeps the gathers below in range: border cells are not refined (`interior`),
  # since a padded neighbour there turns the Newton step into a fixed -0.5 cell shift.
  padded = tf.pad(log_maps, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
  pw = width + 2
  flat_log = tf.transpose(tf.reshape(padded, [shape[0], (height + 2) * pw, shape[3]]), [0, 2, 1])

  def at(dx, dy):
    return tf.gather(flat_log, (iy + 1 + dy) * pw + (ix + 1 + dx), batch_dims=2)

  centre = at(0, 0)
  gx = 0.5 * (at(1, 0) - at(-1, 0))
  gy = 0.5 * (at(0, 1) - at(0, -1))
  hxx = at(1, 0) - 2.0 * centre + at(-1, 0)
  hyy = at(0, 1) - 2.0 * centre + at(0, -1)
  hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
  det = hxx * hyy - hxy * hxy
  interior = tf.logical_and(tf.logical_and(ix >= 1, ix <= width - 2),
                            tf.logical_and(iy >= 1, iy <= height - 2))
  concave = tf.logical_and(tf.logical_and(det > 1e-12, hxx < 0.0), interior)
  safe_det = tf.where(concave, det, tf.ones_like(det))
  ox = -(hyy * gx - hxy * gy) / safe_det
  oy = -(hxx * gy - hxy * gx) / safe_det
  offset = tf.stack([ox, oy], axis=-1)
  offset = tf.where(concave[..., None], tf.clip_by_value(offset, -1.0, 1.0), tf.zeros_like(offset))
  return points + offset, peak


def soft_argmax(heatmaps):
  """Expected cell position of each heatmap taken as a distribution (its values / their sum).

  Differentiable (the coordinate and AoP losses train through it); cells, `(x, y)`, cell centres
  at integers. Negative values are not expected (softmax outputs, Gaussian targets).

  Args:
    heatmaps: float [B, R, R, K].

  Returns:
    float32 [B, K, 2].
  """
  heatmaps = tf.cast(heatmaps, tf.float32)
  prob = heatmaps / tf.maximum(tf.reduce_sum(heatmaps, axis=[1, 2], keepdims=True), 1e-12)
  shape = tf.shape(heatmaps)
  ys = tf.range(shape[1], dtype=tf.float32)
  xs = tf.range(shape[2], dtype=tf.float32)
  x = tf.reduce_sum(tf.reduce_sum(prob, axis=1) * xs[None, :, None], axis=1)  # [B, K]
  y = tf.reduce_sum(tf.reduce_sum(prob, axis=2) * ys[None, :, None], axis=1)
  return tf.stack([x, y], axis=-1)
