"""Landmark and AoP metrics: per-image errors and the summary report.

Points are `(x, y)` in original-image pixels, order PS1, PS2, FH1; sizes are `(width, height)`.
Errors come in two spaces: original pixels (`_px`) and the 512x512 space the paper reports in
(`_512`: x scaled by 512 / width, y by 512 / height, via `geometry.to_512_scale`). The AoP is
`geometry.aop_deg`.

Typical use (predictions from any `aop_tf.predictor`):
  errors = metrics.per_image_errors(pred_px, gt_px, size_px)
  summary = metrics.report(errors)
"""

import math

import numpy as np

from aop_tf import LANDMARK_NAMES
from aop_tf import geometry

# The clinical AoP threshold: >= 120 deg goes with spontaneous vaginal delivery.
AOP_THRESHOLD_DEG = 120.0
# Success detection radii, pixels of the 512x512 space.
SDR_RADII_512 = (2.0, 4.0, 8.0)


def steady_ms_per_image(batch_s, batch_n):
  """Model milliseconds per image without the first batch (tracing, warm-up), if there are more.

  Args:
    batch_s: seconds of each batch, in order.
    batch_n: images of each batch.
  """
  if len(batch_s) > 1:
    batch_s, batch_n = batch_s[1:], batch_n[1:]
  n = sum(batch_n)
  return 1000.0 * sum(batch_s) / n if n else None


def per_image_errors(pred_px, gt_px, size_px):
  """Per-image, per-landmark errors and the AoP error.

  Args:
    pred_px: [N,3,2] predicted `(x, y)`, original pixels.
    gt_px: [N,3,2] ground truth, original pixels.
    size_px: [N,2] or [2] `(width, height)` of each original image.

  Returns:
    dict of numpy arrays:
      `radial_px` float32 [N,3] Euclidean error, original pixels;
      `radial_512` [N,3] the same after scaling x by 512/width and y by 512/height;
      `abs_px` [N,3,2] and `abs_512` [N,3,2] absolute `(dx, dy)`;
      `aop_pred_deg`, `aop_gt_deg` [N] (NaN where undefined);
      `aop_error_deg` [N] `|pred - gt|`, NaN where either AoP is undefined;
      `aop_error_by_landmark_deg` [N,3]: the AoP error when only that landmark is predicted
        (the other two from the ground truth): how much of the AoP error each landmark causes;
      `degenerate` bool [N]: predicted AoP undefined (PS1 coincides with PS2 or FH1);
      `gt_degenerate` bool [N]: ground-truth AoP undefined (a labelling problem).
  """
  pred = np.asarray(pred_px, np.float32)
  gt = np.asarray(gt_px, np.float32)
  if pred.shape != gt.shape or pred.shape[-2:] != (3, 2):
    raise ValueError(f"pred_px {pred.shape} and gt_px {gt.shape} must both be [N, 3, 2].")
  size = np.broadcast_to(np.asarray(size_px, np.float32), pred.shape[:-2] + (2,))
  abs_px = np.abs(pred - gt)
  scale = geometry.to_512_scale(size)[..., None, :]  # [N, 1, 2]
  abs_512 = abs_px * scale
  aop_pred = geometry.aop_deg(pred) if len(pred) else np.zeros((0,), np.float32)
  aop_gt = geometry.aop_deg(gt) if len(gt) else np.zeros((0,), np.float32)
  by_landmark = np.zeros(pred.shape[:-1], np.float32)
  for k in range(3):
    if len(pred):
      one = gt.copy()
      one[:, k] = pred[:, k]
      by_landmark[:, k] = np.abs(geometry.aop_deg(one) - aop_gt)
  return {
      "radial_px": np.sqrt(np.sum(np.square(abs_px), axis=-1)),
      "radial_512": np.sqrt(np.sum(np.square(abs_512), axis=-1)),
      "abs_px": abs_px,
      "abs_512": abs_512.astype(np.float32),
      "aop_pred_deg": aop_pred,
      "aop_gt_deg": aop_gt,
      "aop_error_deg": np.abs(aop_pred - aop_gt),
      "aop_error_by_landmark_deg": by_landmark,
      "degenerate": np.isnan(aop_pred),
      "gt_degenerate": np.isnan(aop_gt),
  }


def _num(x):
  """Python float for JSON; None for NaN/inf (JSON has no NaN)."""
  x = float(x)
  return x if math.isfinite(x) else None


def _mean_finite(values):
  """Mean of the finite values, None where there are none."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  return _num(np.mean(values)) if values.size else None


def _stats(values):
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return {"mean": None, "median": None, "sd": None, "p90": None}
  return {"mean": _num(np.mean(values)), "median": _num(np.median(values)),
          "sd": _num(np.std(values)), "p90": _num(np.percentile(values, 90))}


def _per_landmark(values):
  """values [N,3] -> {"PS1", "PS2", "FH1": mean over images, "mean": over all, "sd": over all}."""
  values = np.asarray(values, np.float64)
  out = {}
  for k, name in enumerate(LANDMARK_NAMES):
    out[name] = _num(np.mean(values[:, k])) if len(values) else None
  out["mean"] = _num(np.mean(values)) if values.size else None
  out["sd"] = _num(np.std(values)) if values.size else None
  return out


def _per_landmark_abs(abs_values):
  """abs [N,3,2] -> per landmark mean of |dx|,|dy| together, overall mean, and per axis."""
  abs_values = np.asarray(abs_values, np.float64)
  out = _per_landmark(np.mean(abs_values, axis=-1) if abs_values.size
                      else np.zeros((0, 3)))
  out["x"] = _num(np.mean(abs_values[..., 0])) if abs_values.size else None
  out["y"] = _num(np.mean(abs_values[..., 1])) if abs_values.size else None
  return out


def report(errors):
  """Summarises `per_image_errors` into a JSON-able dict.

  Keys: `n_images`; `mre_px`, `mre_512` (mean radial error per landmark `PS1`, `PS2`, `FH1`, over
  all `mean` and its `sd`); `mae_px`, `mae_512` (mean absolute coordinate error, the same keys plus
  per axis `x`, `y`); `sdr_512` (share of landmarks within 2, 4, 8 px of 512 space, keys "2", "4",
  "8"); `aop_error_deg` (`mean`, `median`, `sd`, `p90`, `n`); `aop_error_by_landmark_deg` (mean
  AoP error, degrees, with only `PS1`, `PS2` or `FH1` predicted); `aop_agreement_120` (share of images
  whose predicted AoP is on the same side of 120 deg as the ground truth, `>= 120` counting as
  above); `n_degenerate` (predicted AoP undefined; those images are left out of the AoP statistics,
  not of the landmark errors); `n_gt_degenerate` (ground-truth AoP undefined, also left out).
  Undefined values (no images) are None.
  """
  radial_px = np.asarray(errors["radial_px"])
  n = int(radial_px.shape[0])
  degenerate = np.asarray(errors["degenerate"], bool)
  gt_degenerate = np.asarray(errors.get("gt_degenerate", np.zeros(n, bool)), bool)
  valid = ~degenerate & ~gt_degenerate
  aop_pred = np.asarray(errors["aop_pred_deg"], np.float64)[valid]
  aop_gt = np.asarray(errors["aop_gt_deg"], np.float64)[valid]
  aop_error = np.asarray(errors["aop_error_deg"], np.float64)[valid]
  radial_512 = np.asarray(errors["radial_512"], np.float64)

  by_landmark = np.asarray(errors["aop_error_by_landmark_deg"], np.float64)[valid]
  by_landmark = {name: _mean_finite(by_landmark[:, k]) for k, name in enumerate(LANDMARK_NAMES)}
  aop_stats = _stats(aop_error)
  aop_stats["n"] = int(valid.sum())
  agree = (aop_pred >= AOP_THRESHOLD_DEG) == (aop_gt >= AOP_THRESHOLD_DEG)
  sdr = {f"{r:g}": (_num(np.mean(radial_512 <= r)) if radial_512.size else None)
         for r in SDR_RADII_512}
  return {
      "n_images": n,
      "mre_px": _per_landmark(radial_px),
      "mre_512": _per_landmark(radial_512),
      "mae_px": _per_landmark_abs(errors["abs_px"]),
      "mae_512": _per_landmark_abs(errors["abs_512"]),
      "sdr_512": sdr,
      "aop_error_deg": aop_stats,
      "aop_error_by_landmark_deg": by_landmark,
      "aop_agreement_120": _num(np.mean(agree)) if agree.size else None,
      "n_degenerate": int(degenerate.sum()),
      "n_gt_degenerate": int(gt_degenerate.sum()),
  }


def summary_table(summary):
  """A few lines of text with the headline numbers of a `report` dict."""
  def fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)
  lines = [f"images: {summary['n_images']}   degenerate predictions: {summary['n_degenerate']}",
           f"{'':10s}" + "".join(f"{name:>9s}" for name in LANDMARK_NAMES + ("mean",))]
  for key in ("mre_px", "mre_512", "mae_px", "mae_512"):
    row = summary[key]
    lines.append(f"{key:10s}" + "".join(f"{fmt(row[name]):>9s}"
                                        for name in LANDMARK_NAMES + ("mean",)))
  sdr = summary.get("sdr_512", {})
  if sdr:
    lines.append("SDR 512: " + "  ".join(f"<={k}px {fmt(v, '.1%')}" for k, v in sdr.items()))
  aop = summary["aop_error_deg"]
  lines.append(f"AoP error deg: mean {fmt(aop['mean'])}  median {fmt(aop['median'])}  "
               f"sd {fmt(aop['sd'])}  p90 {fmt(aop['p90'])}   "
               f"agreement at 120: {fmt(summary['aop_agreement_120'], '.1%')}")
  by_landmark = summary.get("aop_error_by_landmark_deg")
  if by_landmark:
    lines.append("AoP error deg with only one landmark predicted: " + "  ".join(
        f"{name} {fmt(by_landmark[name])}" for name in LANDMARK_NAMES))
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Does a confidence score find the bad predictions?


def auroc(scores, positives):
  """Area under the ROC curve of `scores` (higher = more suspect) for `positives` (bool): the
  chance that a random positive scores above a random negative, ties counting half. NaN when
  either class is empty."""
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives, bool)
  pos, neg = scores[positives], scores[~positives]
  if not len(pos) or not len(neg):
    return math.nan
  above = (pos[:, None] > neg[None, :]).mean()
  ties = (pos[:, None] == neg[None, :]).mean()
  return float(above + 0.5 * ties)


def threshold_for_recall(scores, positives, recall=0.5):
  """The highest threshold `t` such that flagging `scores >= t` catches at least `recall` of the
  positives (None without positives)."""
  pos = np.sort(np.asarray(scores, np.float64)[np.asarray(positives, bool)])[::-1]
  if not len(pos):
    return None
  return float(pos[max(0, math.ceil(recall * len(pos)) - 1)])


def flag_summary(scores, errors, threshold, bad_deg=10.0):
  """What flagging `scores >= threshold` does on images with AoP `errors` (deg): the share of
  images flagged, the share of the > `bad_deg` errors caught (None without any), mean error
  flagged vs not (JSON-ready: no NaN)."""
  scores, errors = np.asarray(scores, np.float64), np.asarray(errors, np.float64)
  flagged, bad = scores >= threshold, errors > bad_deg
  return {"threshold": float(threshold), "flagged_share": float(flagged.mean()),
          "bad_caught_share": float(flagged[bad].mean()) if bad.any() else None,
          "mean_error_flagged_deg": _mean_finite(errors[flagged]),
          "mean_error_unflagged_deg": _mean_finite(errors[~flagged]),
          "n_bad": int(bad.sum()), "bad_deg": bad_deg}
