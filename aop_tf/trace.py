"""The AoP of a clip over time: a robust smoothed trace, its summary, a plot and a contact sheet.

Clinically the AoP changes within a recording (rest vs. pushing), so a clip gives a trace, not one
number. The raw per-frame AoPs (`results` rows of `predict`) are smoothed by a running median over
the confident frames inside a window (`smooth`): a flagged frame (low confidence, undefined AoP)
neither enters the median nor shifts it, and a lone outlier among confident ones is voted down.
The summary names the frames and times of the largest, median and smallest smoothed AoP.
Times are seconds from the clip's start (`frames.Frame.time_s`), frame numbers 0-based.
"""

import math
import os

import cv2
import numpy as np

from aop_tf import results
from aop_tf.io import frames as frames_lib

DEFAULT_WINDOW = 9  # frames: 0.3 s at 30 frames/s
PLOT_SIZE = (960, 420)  # (width, height) px


def smooth(aop_deg, keep, window=DEFAULT_WINDOW):
  """Running median of `aop_deg` [N] over the frames with `keep` [N] True within +/- window // 2;
  NaN where no kept, finite frame lies in the window. float64 [N], degrees."""
  aop = np.asarray(aop_deg, np.float64)
  usable = np.asarray(keep, bool) & np.isfinite(aop)
  half = max(0, int(window) // 2)
  out = np.full(aop.shape, np.nan)
  for i in range(len(aop)):
    lo, hi = max(0, i - half), min(len(aop), i + half + 1)
    values = aop[lo:hi][usable[lo:hi]]
    if values.size:
      out[i] = float(np.median(values))
  return out


def _at(rows, smoothed, index):
  row = rows[index]
  return {"aop_deg": float(smoothed[index]), "frame": int(row["frame"]),
          "time_s": float(row["time_s"]), "filename": row["filename"]}


def summarise(rows, window=DEFAULT_WINDOW):
  """The trace of one clip's rows (`results.prediction_row`, in frame order) as a dict:
  `frames`, `time_s`, `aop_raw_deg`, `aop_smoothed_deg`, `aop_uncertainty_deg`, `flagged` (per
  frame); `max`, `median`, `min` of the smoothed trace with their frame, time and filename; the
  share of low-confidence frames; the smoother's window."""
  aop = np.array([r["aop_deg"] for r in rows], np.float64)
  flagged = np.array([bool(r["low_confidence"]) for r in rows])
  smoothed = smooth(aop, ~flagged, window)
  if not np.any(np.isfinite(smoothed)):  # every frame flagged: summarise the raw trace instead
    smoothed = smooth(aop, np.ones_like(flagged), window)
  finite = np.flatnonzero(np.isfinite(smoothed))
  key = {}
  if finite.size:
    order = finite[np.argsort(smoothed[finite], kind="stable")]
    key = {"max": _at(rows, smoothed, order[-1]), "median": _at(rows, smoothed,
                                                                 order[len(order) // 2]),
           "min": _at(rows, smoothed, order[0])}
  nan = {"aop_deg": math.nan, "frame": None, "time_s": math.nan, "filename": None}
  return {
      "source": rows[0]["source"] if rows else None,
      "n_frames": len(rows),
      "smooth_window_frames": int(window),
      "low_confidence_share": float(np.mean(flagged)) if rows else math.nan,
      "aop_deg": {k: key.get(k, nan)["aop_deg"] for k in ("max", "median", "min")},
      "key_frames": {k: key.get(k, nan) for k in ("max", "median", "min")},
      "frames": [int(r["frame"]) for r in rows],
      "time_s": [float(r["time_s"]) for r in rows],
      "aop_raw_deg": aop.tolist(),
      "aop_smoothed_deg": smoothed.tolist(),
      "aop_uncertainty_deg": [float(r["aop_uncertainty_deg"]) for r in rows],
      "flagged": flagged.astype(int).tolist(),
  }


def _axis_values(summary):
  """x values of the plot: seconds where every frame has a time, else frame numbers."""
  times = np.array(summary["time_s"], np.float64)
  if times.size and np.all(np.isfinite(times)):
    return times, "time (s)"
  return np.array(summary["frames"], np.float64), "frame"


def plot(summary, size=PLOT_SIZE):
  """AoP against time: raw frames (grey dots), flagged frames (red crosses), the smoothed trace
  (blue) with its uncertainty band (light blue, +/- `aop_uncertainty_deg`) and the 120 deg line.
  Returns uint8 RGB [H, W, 3]."""
  width, height = size
  left, right, top, bottom = 70, 20, 40, 50
  canvas = np.full((height, width, 3), 255, np.uint8)
  x, x_label = _axis_values(summary)
  raw = np.array(summary["aop_raw_deg"], np.float64)
  smooth_deg = np.array(summary["aop_smoothed_deg"], np.float64)
  band = np.nan_to_num(np.array(summary["aop_uncertainty_deg"], np.float64), nan=0.0)
  values = np.concatenate([raw, smooth_deg - band, smooth_deg + band, [90.0, 150.0]])
  values = values[np.isfinite(values)]
  lo, hi = math.floor(values.min() / 10) * 10, math.ceil(values.max() / 10) * 10
  x0, x1 = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
  x1 = x1 if x1 > x0 else x0 + 1.0

  def to_px(xv, yv):
    px = left + (np.asarray(xv) - x0) / (x1 - x0) * (width - left - right)
    py = top + (hi - np.asarray(yv)) / max(hi - lo, 1e-9) * (height - top - bottom)
    return px, py

  for tick in range(int(lo), int(hi) + 1, 10):
    _, py = to_px(x0, tick)
    cv2.line(canvas, (left, int(py)), (width - right, int(py)), (230, 230, 230), 1)
    cv2.putText(canvas, f"{tick}", (8, int(py) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (80, 80, 80))
  _, py = to_px(x0, 120.0)
  cv2.line(canvas, (left, int(py)), (width - right, int(py)), (120, 200, 120), 1)
  ok = np.isfinite(smooth_deg)
  if ok.any():
    px, upper = to_px(x[ok], smooth_deg[ok] + band[ok])
    _, lower = to_px(x[ok], smooth_deg[ok] - band[ok])
    polygon = np.concatenate([np.stack([px, upper], -1), np.stack([px, lower], -1)[::-1]])
    cv2.fillPoly(canvas, [polygon.astype(np.int32)], (205, 225, 250))
    px, py = to_px(x[ok], smooth_deg[ok])
    cv2.polylines(canvas, [np.stack([px, py], -1).astype(np.int32)], False, (30, 90, 200), 2,
                  cv2.LINE_AA)
  flagged = np.array(summary["flagged"], bool)
  for xv, yv, bad in zip(x, raw, flagged):
    if not math.isfinite(yv):
      continue
    px, py = (int(v) for v in to_px(xv, yv))
    if bad:
      cv2.drawMarker(canvas, (px, py), (220, 30, 30), cv2.MARKER_TILTED_CROSS, 8, 2)
    else:
      cv2.circle(canvas, (px, py), 2, (110, 110, 110), -1, cv2.LINE_AA)
  cv2.rectangle(canvas, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
  title = (f"AoP over time: {os.path.basename(str(summary['source']))}  (blue: smoothed, "
           f"{summary['smooth_window_frames']}-frame median of confident frames; red x: flagged)")
  cv2.putText(canvas, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
  cv2.putText(canvas, f"{x_label}   ({x0:g} .. {x1:g})", (left, height - 15),
              cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
  cv2.putText(canvas, "AoP (deg)", (4, top - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
  return canvas


def contact_sheet(summary, rows, max_pixels=None, tile_px=320):
  """Overlays of the key frames (largest, median, smallest smoothed AoP) side by side, re-read
  from the clip. Returns uint8 RGB [H, W, 3], or None when no key frame could be read."""
  from aop_tf import visualize  # pylint: disable=import-outside-toplevel
  by_frame = {int(r["frame"]): r for r in rows}
  tiles = []
  kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
  with frames_lib.open_source(summary["source"], **kwargs) as source:
    for label in ("max", "median", "min"):
      key = summary["key_frames"][label]
      if key["frame"] is None:
        continue
      row = by_frame[key["frame"]]
      image = source.frame(key["frame"]).image
      pred = np.array([[row[f"{n}_x"], row[f"{n}_y"]] for n in ("PS1", "PS2", "FH1")])
      title = f"{label}: frame {key['frame']}" + (
          f", {key['time_s']:.2f} s" if math.isfinite(key["time_s"]) else "")
      tile = visualize.overlay(image, pred=pred, aop_pred=row["aop_deg"],
                               aop_pred_spread=row["aop_uncertainty_deg"], title=title,
                               min_size=tile_px)
      tiles.append(cv2.resize(tile, (tile_px, int(tile.shape[0] * tile_px / tile.shape[1]))))
  if not tiles:
    return None
  height = max(t.shape[0] for t in tiles)
  return np.concatenate([np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles],
                        axis=1)


def write_summary(stem, source, rows, window=DEFAULT_WINDOW, max_pixels=None):
  """Writes `<stem>.json` (`summarise`), `<stem>_trace.png` (`plot`) and `<stem>_frames.png`
  (`contact_sheet`) for one clip; returns the summary."""
  from aop_tf import visualize  # pylint: disable=import-outside-toplevel
  rows = sorted(rows, key=lambda r: int(r["frame"]))
  summary = summarise(rows, window)
  summary["source"] = source
  results.write_json(stem + ".json", summary)
  visualize.save_png(stem + "_trace.png", plot(summary))
  try:
    sheet = contact_sheet(summary, rows, max_pixels)
  except ValueError as e:  # the clip changed or broke since: the trace stands
    print(f"[predict] warning: no contact sheet for {source} ({e})")
    sheet = None
  if sheet is not None:
    visualize.save_png(stem + "_frames.png", sheet)
  return summary
