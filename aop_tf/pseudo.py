"""Which predicted landmarks may serve as labels: the pseudo-label filters, one implementation.

The teacher of semi-supervised training (`aop_tf.semi`) and `aop_tf.predict` (pseudo-label CSVs for
self-training and annotators) both judge landmarks here. A verdict needs all of:

  confident   every landmark's peak / heatmap_scale >= `pseudo_min_confidence`
  ps_length   |PS1 - PS2| in 512 space within `pseudo_ps_length_512`
  aop         the AoP within `pseudo_aop_range_deg`
  head_side   FH1 on the side of PS1->PS2 where the head lies: cross(PS2 - PS1, FH1 - PS1) < 0 in
              image coordinates (y down), as in 836 of 838 PSFHS train labels (checked only with
              `pseudo_head_side`)

Landmarks are `(x, y)` in original-image pixels, order PS1, PS2, FH1. The same code judges numpy
batches (predict) and TF tensors (the teacher's training step), through `geometry.backend`.
"""

from aop_tf import geometry

# `--pseudo_landmarks`: which of the teacher's landmarks (indices into PS1, PS2, FH1) train the
# student. FH1 slides along the head contour and is the teacher's weakest (issue 16, seed 42: the
# mean teacher made FH1 2.5 px worse while PS1/PS2 improved).
LANDMARK_SETS = {"all": (0, 1, 2), "symphysis": (0, 1)}

VERDICTS = ("confident", "ps_length", "aop", "head_side")


def _within(xp, values, bounds):
  """values in [lo, hi]; NaN is not."""
  return xp.logical_and(values >= bounds[0], values <= bounds[1])


def verdicts(landmarks_px, confidence, size_px, semi):
  """The filters' verdicts on a batch of predicted landmarks.

  Args:
    landmarks_px: float [B, 3, 2] original pixels.
    confidence: float [B, 3] peak / heatmap_scale.
    size_px: float [B, 2] `(width, height)` of each original image.
    semi: a `config.SemiSpec` (the `pseudo_*` knobs).

  Returns:
    dict of bool [B]: each of `VERDICTS`, and `kept` (all of them); numpy arrays for numpy
    inputs, tensors when any input is a tensor.
  """
  xp = geometry.backend(landmarks_px, confidence, size_px)
  points, confidence, size = xp.f32(landmarks_px), xp.f32(confidence), xp.f32(size_px)
  out = {"confident": xp.all(confidence >= semi.pseudo_min_confidence, axis=-1)}
  ps = (points[:, 0] - points[:, 1]) * geometry.to_512_scale(size)
  out["ps_length"] = _within(xp, xp.norm(ps, axis=-1), semi.pseudo_ps_length_512)
  out["aop"] = _within(xp, geometry.aop_deg(points), semi.pseudo_aop_range_deg)
  u, v = points[:, 1] - points[:, 0], points[:, 2] - points[:, 0]
  clockwise = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0] < 0.0
  out["head_side"] = clockwise if semi.pseudo_head_side else xp.ones_like(clockwise)
  kept = out["confident"]
  for name in VERDICTS[1:]:
    kept = xp.logical_and(kept, out[name])
  out["kept"] = kept
  return out
