"""How far off is this AoP likely to be: a per-image quality score and a 90 % interval.

From what the model already computes for one image (no extra model pass):

  - per landmark: the heatmap peak, its entropy, the ratio of the second peak to the first, and
    the spread of the map (the standard deviation of its probability around its mean, cells);
  - the AoP's sensitivity to that spread: `sqrt(sum_k |dAoP/dp_k|^2 s_k^2)`, degrees, the spread
    of each landmark carried through the AoP formula (its gradient, by finite differences);
  - geometry: symphysis length and PS1-FH1 distance (512 space), the AoP itself, and whether FH1
    lies on the head's side of PS1->PS2 (as the pseudo-label filter asks);
  - an ensemble's member spread where there is one (0 otherwise).

A linear model on standardised features predicts `log(|AoP error| + 1)`; the score is its
`exp(...) - 1`, the expected error in degrees. The interval is normalised conformal prediction:
`aop +/- q * (score + 1)`, with `q` the conformal 90 % quantile of `|error| / (score + 1)` on
out-of-fold predictions (`benchmarks.quality` fits both on PSFHS train, never on val). The fitted
numbers live in the model card (`quality` section) as plain lists, so this module needs numpy only.
Coordinates: `(x, y)` pixels; heatmap cells as `aop_tf.geometry` maps them.
"""

import math

import numpy as np

from aop_tf import geometry

FEATURES = (
    "peak_PS1", "peak_PS2", "peak_FH1",
    "entropy_PS1", "entropy_PS2", "entropy_FH1",
    "second_peak_PS1", "second_peak_PS2", "second_peak_FH1",
    "spread_PS1_cells", "spread_PS2_cells", "spread_FH1_cells",
    "aop_sensitivity_deg", "ps_length_512", "ps1_fh1_512", "aop_deg", "fh1_head_side",
    "ensemble_spread_deg",
)
_SECOND_PEAK_RADIUS_CELLS = 6  # local maxima this close to the top peak are the same peak


def _map_stats(maps):
  """maps [B, R, R, K] -> entropy, second-peak ratio, spread (cells), each [B, K]."""
  maps = np.maximum(np.asarray(maps, np.float64), 0.0)
  batch, rows, cols, k = maps.shape
  total = np.maximum(maps.sum(axis=(1, 2), keepdims=True), 1e-12)
  prob = maps / total
  entropy = -np.sum(prob * np.log(np.maximum(prob, 1e-12)), axis=(1, 2))
  ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float64)
  mx = np.einsum("bhwk,hw->bk", prob, xs)
  my = np.einsum("bhwk,hw->bk", prob, ys)
  var = (np.einsum("bhwk,hw->bk", prob, xs ** 2) - mx ** 2 +
         np.einsum("bhwk,hw->bk", prob, ys ** 2) - my ** 2)
  spread = np.sqrt(np.maximum(var, 0.0))
  flat = maps.reshape(batch, rows * cols, k)
  top = flat.argmax(axis=1)
  ty, tx = np.divmod(top, cols)
  far = ((ys[None, :, :, None] - ty[:, None, None, :]) ** 2 +
         (xs[None, :, :, None] - tx[:, None, None, :]) ** 2) > _SECOND_PEAK_RADIUS_CELLS ** 2
  padded = np.pad(maps, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
  neighbours = np.stack([padded[:, 1 + dy:rows + 1 + dy, 1 + dx:cols + 1 + dx]
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
  local_max = maps >= neighbours.max(axis=0)
  second = np.where(far & local_max, maps, 0.0).max(axis=(1, 2))
  ratio = second / np.maximum(flat.max(axis=1), 1e-12)
  return entropy, ratio, spread


def aop_sensitivity_deg(landmarks, spread_px, step_px=0.5):
  """`sqrt(sum_k |dAoP/dp_k|^2 s_k^2)`, degrees [B]: landmark spreads `spread_px` [B, 3] carried
  through the AoP (central differences of `geometry.aop_deg` with `step_px`)."""
  landmarks = np.asarray(landmarks, np.float64)
  total = np.zeros(len(landmarks))
  for k in range(3):
    for axis in range(2):
      delta = np.zeros_like(landmarks)
      delta[:, k, axis] = step_px
      grad = (np.asarray(geometry.aop_deg(landmarks + delta), np.float64) -
              np.asarray(geometry.aop_deg(landmarks - delta), np.float64)) / (2 * step_px)
      total += (np.nan_to_num(grad) * spread_px[:, k]) ** 2
  return np.sqrt(total)


def features(heatmaps, landmarks, aop_deg, confidence, size_px, ensemble_spread_deg=None):
  """The quality features [B, len(FEATURES)] of a batch of predictions.

  Args:
    heatmaps: [B, R, R, 3] the model's maps over its square input (any scale).
    landmarks: [B, 3, 2] `(x, y)` original pixels.
    aop_deg: [B] degrees (NaN where undefined).
    confidence: [B, 3] heatmap peaks.
    size_px: [B, 2] `(width, height)` of each original image.
    ensemble_spread_deg: [B] or None (a single model: 0).
  """
  landmarks = np.asarray(landmarks, np.float64)
  size = np.asarray(size_px, np.float64).reshape(-1, 2)
  cells = np.asarray(heatmaps).shape[1]
  entropy, second, spread_cells = _map_stats(heatmaps)
  # One cell is size / R pixels along each axis; the mean of the two scales a spread to pixels.
  spread_px = spread_cells * (size.mean(axis=1, keepdims=True) / cells)
  scale512 = geometry.REFERENCE_SIZE_PX / size  # [B, 2]
  ps = (landmarks[:, 0] - landmarks[:, 1]) * scale512
  fh = (landmarks[:, 2] - landmarks[:, 0]) * scale512
  cross = ((landmarks[:, 1, 0] - landmarks[:, 0, 0]) * (landmarks[:, 2, 1] - landmarks[:, 0, 1]) -
           (landmarks[:, 1, 1] - landmarks[:, 0, 1]) * (landmarks[:, 2, 0] - landmarks[:, 0, 0]))
  spread = (np.zeros(len(landmarks)) if ensemble_spread_deg is None
            else np.nan_to_num(np.asarray(ensemble_spread_deg, np.float64)))
  columns = [*np.asarray(confidence, np.float64).T, *entropy.T, *second.T, *spread_cells.T,
             aop_sensitivity_deg(landmarks, spread_px), np.hypot(*ps.T), np.hypot(*fh.T),
             np.nan_to_num(np.asarray(aop_deg, np.float64), nan=0.0),
             (cross < 0).astype(np.float64), spread]
  return np.nan_to_num(np.stack(columns, axis=1), nan=0.0, posinf=0.0, neginf=0.0)


class QualityModel:
  """The fitted score and interval of a model card's `quality` section.

  Args:
    fitted: dict with `features` (names, in `FEATURES`), `mean`, `scale`, `coef` (lists),
      `intercept`, `interval_q` (the conformal quantile), `coverage` (0.9), and `flag_score_deg`
      (the score above which a prediction is flagged).
  """

  def __init__(self, fitted):
    self.fitted = dict(fitted)
    self._columns = [FEATURES.index(name) for name in fitted["features"]]
    self._mean = np.asarray(fitted["mean"], np.float64)
    self._scale = np.asarray(fitted["scale"], np.float64)
    self._coef = np.asarray(fitted["coef"], np.float64)

  def score(self, feature_rows):
    """The expected AoP error, degrees [B], of `features` rows [B, len(FEATURES)]."""
    z = (np.asarray(feature_rows, np.float64)[:, self._columns] - self._mean) / self._scale
    return np.expm1(np.clip(z @ self._coef + float(self.fitted["intercept"]), 0.0, 6.0))

  def interval(self, aop_deg, score_deg):
    """`(low, high)` degrees [B]: the conformal interval `aop +/- q (score + 1)`, kept inside the
    angles an AoP can take, 0-180."""
    half = float(self.fitted["interval_q"]) * (np.asarray(score_deg, np.float64) + 1.0)
    aop = np.asarray(aop_deg, np.float64)
    return np.maximum(aop - half, 0.0), np.minimum(aop + half, 180.0)

  def flagged(self, score_deg):
    """bool [B]: the score is at or above the card's flag threshold."""
    return np.asarray(score_deg, np.float64) >= float(self.fitted["flag_score_deg"])


def model_of(fitted):
  """The `QualityModel` of a card's fitted `quality` section (`zoo.quality_fit`), or None."""
  return QualityModel(fitted) if fitted else None


def per_frame(model, out, sizes_px):
  """Per image `(score_deg, low_deg, high_deg, threshold_deg)` of one predicted batch (what
  `results.prediction_row` takes as `quality`), or None each where there is no `model` or the
  predictor gives no heatmaps.

  Args:
    model: a `QualityModel`, or None.
    out: the predictor's outputs: `heatmaps`, `landmarks`, `aop_deg`, `confidence` (and an
      ensemble's `aop_spread_deg`), points in the pixels of the images predicted.
    sizes_px: [B, 2] `(width, height)` of those images.
  """
  if model is None or "heatmaps" not in out:
    return [None] * len(sizes_px)
  score = model.score(features(out["heatmaps"], out["landmarks"], out["aop_deg"],
                               out["confidence"], sizes_px, out.get("aop_spread_deg")))
  low, high = model.interval(out["aop_deg"], score)
  threshold = float(model.fitted["flag_score_deg"])
  return [(s, lo, hi, threshold) for s, lo, hi in zip(score, low, high)]


def describe_interval(aop, low, high, coverage=0.9):
  """`127.6 deg (90 %: 119-136)`; `undefined` for a NaN AoP."""
  if not math.isfinite(aop):
    return "undefined"
  return f"{aop:.1f} deg ({100 * coverage:.0f} %: {low:.0f}-{high:.0f})"
