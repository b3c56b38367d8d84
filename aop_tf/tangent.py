"""FH1 as the IUGC rule defines it: the tangent point from PS1 to the fetal-head region.

FH1 is the fetal-head point q that maximises the angle PS2-PS1-q (the tangent from PS1 touches
the head there), so the AoP is that maximum. Given a predicted head probability map, this finds q
over the map's cells above a threshold. The AoP then depends on the direction of the tangent, which
a segmentation fixes more robustly than a heatmap fixes the sliding tangent point. Plain TF ops
(shared by evaluation, the SavedModel and TFLite); the angle is `geometry.angle_deg`.
"""

import tensorflow as tf

from aop_tf import geometry

HEAD_CLASS = 2  # segmentation classes: 0 background, 1 pubic symphysis, 2 fetal head


def tangent_point(ps1_px, ps2_px, head_prob, image_size_px, threshold=0.5):
  """The head point of maximal angle PS2-PS1-q.

  Args:
    ps1_px, ps2_px: float [B, 2] `(x, y)` original-image pixels.
    head_prob: float [B, h, w] fetal-head probability on a grid of cells covering the whole image
      (cell centres at integers, `geometry.cell_to_pixel` maps them); upsample a coarse map first
      (bilinear) for sub-cell boundaries.
    image_size_px: float [B, 2] or [2] `(width, height)`.
    threshold: probability above which a cell is head.

  Returns:
    fh1_px: float32 [B, 2] original pixels (PS1 where no cell is head).
    found: bool [B], False where no cell is head (the caller keeps its own FH1 there).
  """
  head_prob = tf.cast(head_prob, tf.float32)
  shape = tf.shape(head_prob)
  h, w = shape[1], shape[2]
  xs, ys = tf.meshgrid(tf.range(w, dtype=tf.float32), tf.range(h, dtype=tf.float32))
  cells = tf.reshape(tf.stack([xs, ys], axis=-1), [1, -1, 2])  # [1, h*w, 2]
  size = tf.cast(tf.convert_to_tensor(image_size_px), tf.float32)
  size = size[:, None, :] if len(size.shape) == 2 else size
  grid = tf.cast(tf.stack([w, h]), tf.float32)
  points = geometry.cell_to_pixel(cells, grid, size)  # [B or 1, h*w, 2]
  points = tf.broadcast_to(points, tf.stack([shape[0], h * w, 2]))
  ps1 = tf.cast(ps1_px, tf.float32)[:, None, :]
  ps2 = tf.cast(ps2_px, tf.float32)[:, None, :]
  angle = geometry.angle_deg(ps1, ps2, points)  # [B, h*w], NaN at q == PS1
  head = tf.logical_and(tf.reshape(head_prob, [shape[0], -1]) > threshold,
                        tf.logical_not(tf.math.is_nan(angle)))
  score = tf.where(head, angle, tf.fill(tf.shape(angle), -1.0))
  index = tf.argmax(score, axis=-1, output_type=tf.int32)
  fh1 = tf.gather(points, index, batch_dims=1)
  found = tf.reduce_any(head, axis=-1)
  return tf.where(found[:, None], fh1, tf.cast(ps1_px, tf.float32)), found
