"""FH1 as the IUGC rule defines it: the fetal-head point where the tangent from PS1 touches the head.

FH1 is the head point q that maximises the angle PS2-PS1-q, so the AoP is that maximum. One
implementation serves both places that apply the rule: the labels derived from segmentation masks
(`data_prep.masks`, candidates = the head contour's pixels) and the decoder
(`codec.HeatmapCodec`, candidates = the cells of the predicted head map). Plain TF ops (shared by
evaluation, the SavedModel and TFLite); the angle is `geometry.angle_deg`.
"""

import tensorflow as tf

from aop_tf import geometry

HEAD_CLASS = 2  # segmentation classes: 0 background, 1 pubic symphysis, 2 fetal head


def tangent_point(ps1_px, ps2_px, candidates_px, valid):
  """The candidate q of maximal angle PS2-PS1-q; ties go to the q nearest PS1, then the first.

  Args:
    ps1_px, ps2_px: float [B, 2] `(x, y)`, pixels.
    candidates_px: float [B, N, 2] `(x, y)` head points, same pixels.
    valid: bool [B, N], which candidates are head. A candidate on PS1 (no angle) never wins.

  Returns:
    fh1_px: float32 [B, 2] (PS1 where no candidate is valid).
    found: bool [B], False where no candidate is valid (the caller keeps its own FH1 there).
  """
  ps1 = tf.cast(ps1_px, tf.float32)
  points = tf.cast(candidates_px, tf.float32)
  angle = geometry.angle_deg(ps1[:, None, :], tf.cast(ps2_px, tf.float32)[:, None, :],
                             points)  # [B, N], NaN at q == PS1
  head = tf.logical_and(tf.cast(valid, tf.bool), tf.logical_not(tf.math.is_nan(angle)))
  score = tf.where(head, angle, tf.fill(tf.shape(angle), -1.0))
  best = tf.logical_and(head, tf.equal(score, tf.reduce_max(score, axis=-1, keepdims=True)))
  dist2 = tf.reduce_sum(tf.square(points - ps1[:, None, :]), axis=-1)
  index = tf.argmin(tf.where(best, dist2, tf.fill(tf.shape(dist2), float("inf"))), axis=-1,
                    output_type=tf.int32)  # argmin takes the first of equal values
  found = tf.reduce_any(head, axis=-1)
  fh1 = tf.gather(points, index, batch_dims=1)
  return tf.where(found[:, None], fh1, ps1), found
