"""Which predictions are most worth a person's check: the one ranking behind `predict --select`
and the viewer's review queue.

Most worth checking first: predictions a pseudo-label filter rejects (`aop_tf.pseudo`: a low peak,
an implausible symphysis length or AoP, FH1 on the wrong side), then the lowest heatmap peak, i.e.
where the model is least sure of itself (uncertainty sampling); ties by name. A NaN peak counts as
the lowest.
"""

import math

import numpy as np

from aop_tf import pseudo


def review_key(kept, min_confidence, name):
  """Sort key of one prediction: rejected before kept, then the lowest peak, then the name."""
  peak = float(min_confidence)
  return (bool(kept), peak if math.isfinite(peak) else -math.inf, str(name))


def rank_for_review(records, name_key="Filename"):
  """`records` (dicts with `kept`, `min_confidence` and `name_key`) sorted most worth checking
  first (see the module docstring); a new list, the records unchanged."""
  return sorted(records, key=lambda r: review_key(r["kept"], r["min_confidence"], r[name_key]))


def filter_verdicts(landmarks_px, confidence, size_px, semi):
  """`(kept, min_confidence)` of a batch of predictions, as `rank_for_review` needs them.

  Args:
    landmarks_px: float [B, 3, 2] `(x, y)` original pixels, PS1, PS2, FH1.
    confidence: float [B, 3] peak / heatmap_scale (NaN allowed: it fails the filter).
    size_px: float [B, 2] `(width, height)` of each image.
    semi: a `config.SemiSpec` (the pseudo-label filters' thresholds).

  Returns:
    `kept` bool numpy [B] and `min_confidence` float numpy [B] (NaN where a peak is NaN).
  """
  confidence = np.asarray(confidence, np.float32).reshape(-1, 3)
  if not len(confidence):
    return np.zeros((0,), bool), np.zeros((0,), np.float32)
  verdicts = pseudo.verdicts(np.asarray(landmarks_px, np.float32).reshape(-1, 3, 2),
                             np.nan_to_num(confidence, nan=-1.0),
                             np.asarray(size_px, np.float32).reshape(-1, 2), semi)
  return np.asarray(verdicts["kept"]), np.min(confidence, axis=1)
