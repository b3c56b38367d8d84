"""How consistent are the labels? Neighbouring frames of one recording, compared.

  python -m benchmarks.label_noise \
      --predictions=runs/bf16_44/eval_val_latest_heatmap/per_image.csv \
      --out=benchmarks/results/label_noise.json --figure=benchmarks/results/label_noise.png

PSFHS files with consecutive numbers are often consecutive frames of one recording, each with its
own mask and so its own landmarks (the IUGC rule applied to that mask). Where two such frames are
nearly the same image (mean absolute grey-level difference `MAD` below a threshold, 0..255 scale),
the anatomy and the true landmarks barely move; how far the labels still move is annotation (and
rule) noise. Per split and MAD threshold this writes the pairs' mean landmark displacement (pixels
of the 256x256 images and 512 space) and mean |AoP change| of the labels, and, with
`--predictions` (an evaluation's per_image.csv), the same for the model's predictions on the pairs
it predicted. Identical images (MAD 0) are listed with their label differences.

Reading it: if each frame's AoP label carries independent noise of sd `s` and the true AoP does not
change within a pair, the labels of a pair differ by `2 s / sqrt(pi)` on average, and even a
perfect predictor is off by `s * sqrt(2 / pi)` = that mean difference / sqrt(2) on average (the
median-based figure assumes the same and is less sensitive to the few pairs that did move). Real
motion within a pair also moves the labels, so on pairs that are not identical this over-estimates
the noise; annotators copying a mask between frames under-estimates it.
"""

import csv
import json
import os

from absl import app, flags
import numpy as np

from aop_tf import LANDMARK_NAMES

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined on demand: other benchmarks own flags of the same names)."""
  flags.DEFINE_string("psfhs_dir", None, "Raw PSFHS folder (images/ and <split>.csv); default "
                      "$AOP_PSFHS_DIR or ../shared/data/psfhs.")
  flags.DEFINE_list("splits", ["train", "val"], "PSFHS splits to measure.")
  flags.DEFINE_list("mad_thresholds", ["3", "5", "6", "8", "10", "1000"],
                    "Upper MAD bounds (grey levels) of the pair groups; 1000 takes every pair.")
  flags.DEFINE_string("predictions", None, "Optional per_image.csv of `python -m aop_tf.evaluate`.")
  flags.DEFINE_string("out", None, "Output JSON.")
  flags.DEFINE_string("figure", None, "Optional PNG: the most similar pairs, each frame's labels "
                      "drawn on it beside its neighbour's.")
  flags.DEFINE_integer("figure_pairs", 3, "Pairs in --figure.")


def neighbour_pairs(filenames):
  """Pairs `(a, b)` of files with consecutive numbers (`00012.png`, `00013.png`), in order."""
  def number(name):
    digits = os.path.splitext(os.path.basename(name))[0]
    return int(digits) if digits.isdigit() else None
  by_number = {number(n): n for n in filenames if number(n) is not None}
  return [(by_number[k], by_number[k + 1]) for k in sorted(by_number) if k + 1 in by_number]


# Independent N(0, s^2) noise per frame: |change| has median 0.6745 * sqrt(2) * s, and a perfect
# predictor's mean |error| is s * sqrt(2 / pi).
_MEDIAN_TO_FLOOR = np.sqrt(2.0 / np.pi) / (0.6744897501960817 * np.sqrt(2.0))


def _per_landmark(values):
  return {k: round(float(v), 3) for k, v in zip(LANDMARK_NAMES, values)}


def pair_statistics(mad, label_moves, label_aop_change, pred_moves=None, pred_aop_change=None,
                    thresholds=(1000.0,), scale_512=2.0):
  """Groups pairs by MAD < threshold and averages how far labels (and predictions) move.

  Args:
    mad: [P] mean absolute grey-level difference of each pair's images.
    label_moves: [P, 3] distance between the two frames' labels per landmark, pixels.
    label_aop_change: [P] signed AoP difference of the two labels, degrees.
    pred_moves, pred_aop_change: the same for predictions (NaN where a frame was not predicted).
    thresholds: MAD upper bounds.
    scale_512: factor from image pixels to 512 space.

  Returns:
    list of dicts, one per threshold.
  """
  groups = []
  for threshold in thresholds:
    keep = mad < threshold
    n = int(keep.sum())
    group = {"mad_below": float(threshold), "pairs": n}
    if n:
      moves = label_moves[keep]
      change = np.abs(label_aop_change[keep])
      group.update({
          "label_move_px": _per_landmark(moves.mean(0)),
          "label_move_512": _per_landmark(scale_512 * moves.mean(0)),
          "label_aop_change_mean_deg": float(change.mean()),
          "label_aop_change_median_deg": float(np.median(change)),
          # Mean |error| of a perfect predictor if all of the change were independent Gaussian
          # noise, from the mean |change| and (robust to a few moving pairs) from the median.
          "implied_floor_aop_error_deg": float(change.mean() / np.sqrt(2.0)),
          "implied_floor_from_median_deg": float(np.median(change) * _MEDIAN_TO_FLOOR),
      })
    if pred_moves is not None and n:
      both = keep & np.isfinite(pred_aop_change)
      if both.any():
        group.update({
            "predicted_pairs": int(both.sum()),
            "pred_move_px": _per_landmark(pred_moves[both].mean(0)),
            "pred_aop_change_mean_deg": float(np.abs(pred_aop_change[both]).mean()),
            "label_aop_change_mean_deg_same_pairs": float(np.abs(label_aop_change[both]).mean()),
        })
    groups.append(group)
  return groups


def _read_labels(psfhs_dir, split):
  from aop_tf.io import points as points_lib  # pylint: disable=import-outside-toplevel
  with open(os.path.join(psfhs_dir, f"{split}.csv"), newline="") as f:
    return {r["Filename"]: np.array([points_lib.parse_point(r[k]) for k in LANDMARK_NAMES],
                                    np.float32) for r in csv.DictReader(f)}


def _read_predictions(path):
  from aop_tf import results  # pylint: disable=import-outside-toplevel
  columns = results.read_csv(path)
  points = np.stack([np.stack([columns[f"{k}_x"], columns[f"{k}_y"]], -1)
                     for k in LANDMARK_NAMES], 1).astype(np.float32)
  return dict(zip(columns["filename"], points))


def _aop(points):
  from aop_tf import geometry  # pylint: disable=import-outside-toplevel
  return geometry.aop_deg(np.asarray(points, np.float32))


def measure_split(psfhs_dir, split, predictions, thresholds):
  """Statistics of one split's neighbour pairs, plus the pairs themselves for the figure."""
  import cv2  # pylint: disable=import-outside-toplevel
  labels = _read_labels(psfhs_dir, split)
  pairs = neighbour_pairs(sorted(labels))
  images = {n: cv2.imread(os.path.join(psfhs_dir, "images", n), cv2.IMREAD_GRAYSCALE)
            for pair in pairs for n in pair}
  mad = np.array([np.abs(images[a].astype(np.float32) - images[b]).mean() for a, b in pairs])
  first = np.stack([labels[a] for a, _ in pairs])
  second = np.stack([labels[b] for _, b in pairs])
  label_moves = np.linalg.norm(first - second, axis=-1)
  label_change = _aop(first) - _aop(second)
  pred_moves = pred_change = None
  if predictions is not None:
    nan = np.full((3, 2), np.nan, np.float32)
    pa = np.stack([predictions.get(a, nan) for a, _ in pairs])
    pb = np.stack([predictions.get(b, nan) for _, b in pairs])
    pred_moves = np.linalg.norm(pa - pb, axis=-1)
    pred_change = _aop(pa) - _aop(pb)
  scale = 512.0 / max(next(iter(images.values())).shape)
  result = {
      "images": len(labels), "neighbour_pairs": len(pairs),
      "mad_quantiles_10_25_50": np.percentile(mad, [10, 25, 50]).round(3).tolist(),
      "groups": pair_statistics(mad, label_moves, label_change, pred_moves, pred_change,
                                thresholds, scale),
      "identical_image_pairs": [
          {"files": [a, b], "label_move_px": _per_landmark(m),
           "label_aop_change_deg": float(c)}
          for (a, b), d, m, c in zip(pairs, mad, label_moves, label_change) if d == 0.0],
  }
  order = np.argsort(mad, kind="stable")
  closest = [(float(mad[i]), pairs[i][0], pairs[i][1], images[pairs[i][0]], images[pairs[i][1]],
              labels[pairs[i][0]], labels[pairs[i][1]]) for i in order]
  return result, closest


def pair_figure(closest, count):
  """RGB rows: each frame with its own labels (green) and its neighbour's (orange)."""
  from aop_tf import visualize  # pylint: disable=import-outside-toplevel
  rows = []
  for mad, a, b, image_a, image_b, labels_a, labels_b in closest[:count]:
    tiles = [visualize.overlay(img, pred=other, gt=own, names=(f"{name} label",
                                                               f"{neighbour} label"),
                               title=f"{name} and its neighbour {neighbour}: MAD {mad:.1f}")
             for name, neighbour, img, own, other in ((a, b, image_a, labels_a, labels_b),
                                                      (b, a, image_b, labels_b, labels_a))]
    rows.append(np.concatenate(tiles, axis=1))
  return np.concatenate(rows, axis=0)


def main(argv):
  del argv
  from data_prep import build  # pylint: disable=import-outside-toplevel
  psfhs = FLAGS.psfhs_dir or build.default_psfhs_dir()
  if not os.path.isdir(psfhs):
    raise app.UsageError(f"PSFHS not found at {psfhs}: pass --psfhs_dir or set AOP_PSFHS_DIR.")
  thresholds = [float(t) for t in FLAGS.mad_thresholds]
  predictions = _read_predictions(FLAGS.predictions) if FLAGS.predictions else None
  report = {"psfhs_dir": psfhs, "predictions": FLAGS.predictions, "splits": {}}
  closest = []
  for split in FLAGS.splits:
    report["splits"][split], pairs = measure_split(psfhs, split, predictions, thresholds)
    closest += pairs
    for group in report["splits"][split]["groups"]:
      line = (f"{split} MAD<{group['mad_below']:g}: {group['pairs']} pairs")
      if group["pairs"]:
        line += (f", labels move {group['label_move_512']} (512), AoP "
                 f"{group['label_aop_change_mean_deg']:.2f} deg (floor "
                 f"{group['implied_floor_aop_error_deg']:.2f}, from the median "
                 f"{group['implied_floor_from_median_deg']:.2f})")
      if "pred_aop_change_mean_deg" in group:
        line += (f"; predictions on {group['predicted_pairs']} of them: AoP "
                 f"{group['pred_aop_change_mean_deg']:.2f} deg vs labels "
                 f"{group['label_aop_change_mean_deg_same_pairs']:.2f}")
      print(line)
    for pair in report["splits"][split]["identical_image_pairs"]:
      print(f"{split} identical images {pair['files']}: labels move {pair['label_move_px']} px, "
            f"AoP {pair['label_aop_change_deg']:+.2f} deg")
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
      json.dump(report, f, indent=2)
    print(f"-> {FLAGS.out}")
  if FLAGS.figure and closest:
    from aop_tf import visualize  # pylint: disable=import-outside-toplevel
    closest.sort(key=lambda c: c[0])
    visualize.save_png(FLAGS.figure, pair_figure(closest, FLAGS.figure_pairs))
    print(f"-> {FLAGS.figure}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
