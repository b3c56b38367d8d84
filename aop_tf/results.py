"""One per-image result layout: the rows `predict`, `evaluate` and the viewer write and read.

A row is a dict; the same quantity has the same column everywhere:

  filename, source, frame, time_s, width, height      what was measured (`frames.Frame`)
  PS1_x, PS1_y, PS2_x, PS2_y, FH1_x, FH1_y            predicted points, (x, y) in the frame's pixels
  aop_deg, aop_spread_deg, aop_uncertainty_deg        predicted AoP; an ensemble's member spread;
                                                      the '+/-' (`aop_uncertainty_deg` below)
  quality_score_deg, aop_low_deg, aop_high_deg        where the model card holds a fitted quality
                                                      model (`aop_tf.quality`): the expected AoP
                                                      error and the 90 % interval
  PS1_confidence, PS2_confidence, FH1_confidence      heatmap peaks
  ps_length_mm                                        symphysis length, where a pixel spacing is known
  low_confidence, flag_reason, degenerate             the flag and why it fired
  gt_PS1_x, ..., aop_gt_deg, err_PS1_px, err_PS1_512, mre_px, mre_512, aop_error_deg
                                                      evaluation only: labels and errors

`filename` is the file for a still image and `clip.mp4#12` for frame 12 of a clip (as IUGC label
CSVs name frames). Writers are atomic (`files.atomic_write`). NaN is written as `nan` in CSV and
`null` in JSON.
"""

import csv
import json
import math

import numpy as np

from aop_tf import LANDMARK_NAMES
from aop_tf.io import files

POINT_COLUMNS = tuple(f"{n}_{a}" for n in LANDMARK_NAMES for a in ("x", "y"))
CONFIDENCE_COLUMNS = tuple(f"{n}_confidence" for n in LANDMARK_NAMES)
PREDICTION_COLUMNS = (("filename", "source", "frame", "time_s", "width", "height") +
                      POINT_COLUMNS +
                      ("aop_deg", "aop_spread_deg", "aop_uncertainty_deg",
                       "quality_score_deg", "aop_low_deg", "aop_high_deg") +
                      CONFIDENCE_COLUMNS +
                      ("ps_length_mm", "low_confidence", "flag_reason", "degenerate"))
LABEL_COLUMNS = (tuple(f"gt_{c}" for c in POINT_COLUMNS) + ("aop_gt_deg",) +
                 tuple(f"err_{n}_{u}" for n in LANDMARK_NAMES for u in ("px", "512")) +
                 ("mre_px", "mre_512", "aop_error_deg"))
EVALUATION_COLUMNS = PREDICTION_COLUMNS + LABEL_COLUMNS
# Columns of per_image.csv files written before this layout, read under their new names.
OLD_NAMES = {**{f"pred_{c}": c for c in POINT_COLUMNS},
             **{f"conf_{n}": f"{n}_confidence" for n in LANDMARK_NAMES},
             "aop_pred_deg": "aop_deg"}


def aop_uncertainty_deg(spread_deg, floor_deg):
  """The '+/-' of an AoP, degrees: `sqrt(spread^2 + floor^2)` (the floor a model card measured);
  the spread alone without a floor, the floor alone for a single model (spread NaN)."""
  spread = float(spread_deg)
  if floor_deg is None:
    return spread
  if not math.isfinite(spread):
    return float(floor_deg)
  return math.hypot(spread, float(floor_deg))


def flag_reason(confidence, landmarks, aop, min_confidence):
  """Why a row is flagged low confidence ('' if it is not): non-finite output, an undefined AoP, or
  the landmarks whose heatmap peak is under `min_confidence`, e.g. `low peak: FH1 0.41 < 0.69`."""
  if not (np.all(np.isfinite(confidence)) and np.all(np.isfinite(landmarks))):
    return "the model gave non-finite output"
  if not math.isfinite(aop):
    return "AoP undefined (PS1 on PS2 or FH1)"
  low = [f"{name} {c:.3f}" for name, c in zip(LANDMARK_NAMES, confidence) if c < min_confidence]
  return f"low peak: {', '.join(low)} < {min_confidence:g}" if low else ""


def ps_length_mm(landmarks, spacing_mm):
  """Distance PS1-PS2 in mm with `spacing_mm` `(column, row)` mm per pixel; NaN without one."""
  if not spacing_mm:
    return math.nan
  delta = (np.asarray(landmarks[0], np.float64) - landmarks[1]) * np.asarray(spacing_mm)
  return float(np.hypot(*delta))


def prediction_row(frame, landmarks, aop, confidence, spread, min_confidence,
                   uncertainty_floor=None, quality=None):
  """The row of one predicted frame.

  Args:
    frame: the `frames.Frame` predicted (its `source`, `index`, `time_s`, `size_px`, spacing).
    landmarks: [3, 2] `(x, y)` in the frame's pixels (`size_px`).
    aop: degrees (NaN: undefined).
    confidence: [3] heatmap peaks.
    spread: an ensemble's member spread, degrees (NaN for one model).
    min_confidence: peaks under this flag the row.
    uncertainty_floor: degrees, the model card's (None: the spread alone).
    quality: None, or `(score_deg, low_deg, high_deg, threshold_deg)` of the card's fitted quality
      model (`aop_tf.quality`): the row gets them, and the flag fires on the score instead of the
      peak (`min_confidence` then unused).
  """
  landmarks = np.asarray(landmarks, np.float64)
  confidence = np.asarray(confidence, np.float64)
  width, height = frame.size_px
  row = {"filename": frame.name, "source": frame.source,
         "frame": int(frame.index) if frame.in_clip else "",
         "time_s": float(frame.time_s), "width": int(width), "height": int(height)}
  for k, name in enumerate(LANDMARK_NAMES):
    row[f"{name}_x"], row[f"{name}_y"] = float(landmarks[k, 0]), float(landmarks[k, 1])
  row["aop_deg"] = float(aop)
  row["aop_spread_deg"] = float(spread)
  row["aop_uncertainty_deg"] = aop_uncertainty_deg(spread, uncertainty_floor)
  for k, name in enumerate(LANDMARK_NAMES):
    row[f"{name}_confidence"] = float(confidence[k])
  score, low, high, threshold = quality or (math.nan, math.nan, math.nan, None)
  row["quality_score_deg"], row["aop_low_deg"], row["aop_high_deg"] = (
      float(score), float(low), float(high))
  row["ps_length_mm"] = ps_length_mm(landmarks, frame.pixel_spacing_mm)
  if quality is None:
    reason = flag_reason(confidence, landmarks, float(aop), min_confidence)
  else:
    reason = flag_reason(confidence, landmarks, float(aop), -math.inf) or (
        f"expected AoP error {score:.1f} deg >= {threshold:.1f}" if score >= threshold else "")
  row["low_confidence"] = bool(reason)
  row["flag_reason"] = reason
  row["degenerate"] = not math.isfinite(float(aop))
  return row


def _cell(value, decimals):
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, float):
    return f"{value:.{decimals}f}" if math.isfinite(value) else "nan"
  return value


def write_csv(path, rows, columns=None, decimals=3):
  """Writes rows as CSV atomically; `columns` default: `PREDICTION_COLUMNS`, plus the label
  columns where the rows have them, plus any other keys in first-seen order."""
  if columns is None:
    columns = list(PREDICTION_COLUMNS)
    if rows and "aop_gt_deg" in rows[0]:
      columns += LABEL_COLUMNS
    for row in rows:
      columns += [k for k in row if k not in columns]

  def write(tmp):
    with open(tmp, "w", newline="") as f:
      writer = csv.DictWriter(f, columns, extrasaction="ignore", restval="")
      writer.writeheader()
      for row in rows:
        writer.writerow({k: _cell(v, decimals) for k, v in row.items()})

  files.atomic_write(path, write)


def json_safe(value):
  """`value` with non-finite floats as None and numpy scalars as Python ones (JSON has no NaN)."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_json(path, payload):
  """Writes `payload` (rows inside a dict) as indented JSON atomically, NaN as null."""
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(json_safe(payload), f, indent=2)
      f.write("\n")

  files.atomic_write(path, write)


def read_csv(path):
  """A per-image CSV back as columns: `filename`, `source`, `flag_reason` lists of str, every
  other column float64 [N] (empty or `nan` cells as NaN); old column names (`pred_PS1_x`,
  `conf_PS1`, `aop_pred_deg`) are read under the current ones."""
  text = files.read_bounded(path, files.MAX_TEXT_BYTES, "per-image CSV").decode("utf-8")
  rows = list(csv.DictReader(text.splitlines()))
  columns = {}
  for key in (rows[0] if rows else ()):
    name = OLD_NAMES.get(key, key)
    values = [row[key] for row in rows]
    if name in ("filename", "source", "flag_reason"):
      columns[name] = values
    else:
      columns[name] = np.array([float(v) if v not in ("", None) else np.nan for v in values])
  return columns
