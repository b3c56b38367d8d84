"""Where the AoP error comes from: the geometry of an evaluation's per-image predictions.

  python -m aop_tf.evaluate --model=runs/cpu_psfhs --checkpoint=latest --data_dir=data/psfhs \
      --split=val                          # writes runs/cpu_psfhs/eval_val_latest_heatmap/
  python -m benchmarks.error_analysis --eval_dir=runs/cpu_psfhs/eval_val_latest_heatmap \
      --out=benchmarks/results/error_analysis_cpu.json

Reads the evaluation's `per_image.csv` (original pixels) and writes, per image set: the direction
errors of the two rays of the AoP (PS1->PS2 and PS1->FH1, degrees, signed -> mean absolute and their
correlation), the pubic-symphysis length and midpoint errors (pixels), and the mean signed AoP
error. With the raw PSFHS masks (`--psfhs_dir`) it also measures how far the labelled PS direction
(the farthest-apart contour pair, the IUGC rule) is from the symphysis mask's principal axis: the
part of the PS1->PS2 direction that the mask's overall shape does not fix; and how sensitive the
rule is: the landmarks the rule finds on the true masks after they are downsampled to R x R cells
(area) and upsampled back (bilinear, argmax), as a segmentation head at that resolution would see
them at best (`--rule_resolutions`).
"""

import csv
import json
import os

from absl import app, flags
import numpy as np

from aop_tf import LANDMARK_NAMES
from aop_tf import results

flags.DEFINE_string("eval_dir", None, "Folder with per_image.csv from `python -m aop_tf.evaluate`.")
flags.DEFINE_string("psfhs_dir", None, "Raw PSFHS folder (masks/ and <split>.csv); default "
                    "$AOP_PSFHS_DIR or ../shared/data/psfhs; skipped if absent.")
flags.DEFINE_string("split", "val", "PSFHS split whose masks are measured.")
flags.DEFINE_list("rule_resolutions", ["64", "128"], "Mask resolutions (cells) for the rule's "
                  "sensitivity; empty to skip.")
flags.DEFINE_string("out", None, "Output JSON.")
FLAGS = flags.FLAGS


def _wrap(deg, period=360.0):
  """Signed angle difference folded into [-period / 2, period / 2)."""
  return (np.asarray(deg) + period / 2) % period - period / 2


def _direction_deg(vectors):
  return np.degrees(np.arctan2(vectors[..., 1], vectors[..., 0]))


def prediction_geometry(rows):
  """Ray-direction, PS length/midpoint and signed AoP errors of per_image.csv rows."""
  def points(prefix, name):
    return np.array([[float(r[f"{prefix}_{name}_x"]), float(r[f"{prefix}_{name}_y"])]
                     for r in rows])
  gt = {k: points("gt", k) for k in LANDMARK_NAMES}
  pred = {k: np.array([[float(r[f"{k}_x"]), float(r[f"{k}_y"])] for r in rows])
          for k in LANDMARK_NAMES}
  ray_ps = _wrap(_direction_deg(pred["PS2"] - pred["PS1"]) - _direction_deg(gt["PS2"] - gt["PS1"]))
  ray_fh = _wrap(_direction_deg(pred["FH1"] - pred["PS1"]) - _direction_deg(gt["FH1"] - gt["PS1"]))
  length = np.linalg.norm(pred["PS2"] - pred["PS1"], axis=1)
  length_gt = np.linalg.norm(gt["PS2"] - gt["PS1"], axis=1)
  mid = np.linalg.norm((pred["PS1"] + pred["PS2"] - gt["PS1"] - gt["PS2"]) / 2, axis=1)
  aop = np.array([float(r["aop_deg"]) - float(r["aop_gt_deg"]) for r in rows])
  return {
      "images": len(rows),
      "ray_ps1_ps2_direction_error_deg": float(np.mean(np.abs(ray_ps))),
      "ray_ps1_fh1_direction_error_deg": float(np.mean(np.abs(ray_fh))),
      "ray_error_correlation": (float(np.corrcoef(ray_ps, ray_fh)[0, 1])
                                if np.std(ray_ps) > 0 and np.std(ray_fh) > 0 else None),
      "ps_length_gt_px": float(np.mean(length_gt)),
      "ps_length_error_px": float(np.mean(np.abs(length - length_gt))),
      "ps_midpoint_error_px": float(np.mean(mid)),
      "aop_error_signed_mean_deg": float(np.nanmean(aop)),
      "aop_error_mean_deg": float(np.nanmean(np.abs(aop))),
  }


def principal_axis_deg(binary):
  """Direction (degrees, modulo 180) of the major principal axis of a binary mask's pixels."""
  ys, xs = np.nonzero(binary)
  cov = np.cov(np.stack([xs, ys]).astype(np.float64))
  _, vectors = np.linalg.eigh(cov)
  return float(_direction_deg(vectors[:, 1]))


def label_rule_spread(masks, points):
  """|labelled PS1->PS2 direction - PS mask principal axis|, degrees (mod 180), over masks."""
  from data_prep import masks as masks_lib  # pylint: disable=import-outside-toplevel
  labelled = _direction_deg(points[:, 1] - points[:, 0])
  axes = np.array([principal_axis_deg(m == masks_lib.PS_LABEL) for m in masks])
  diffs = np.abs(_wrap(labelled - axes, 180.0))
  return {"images": len(masks), "mean_deg": float(np.mean(diffs)),
          "median_deg": float(np.median(diffs)), "p90_deg": float(np.percentile(diffs, 90))}


def _read_split(psfhs_dir, split):
  """(masks uint8 [N, H, W], landmarks float32 [N, 3, 2]) of a raw PSFHS split."""
  import cv2  # pylint: disable=import-outside-toplevel
  from aop_tf.io import points as points_lib  # pylint: disable=import-outside-toplevel
  with open(os.path.join(psfhs_dir, f"{split}.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  masks = np.stack([cv2.imread(os.path.join(psfhs_dir, "masks", r["Filename"]),
                               cv2.IMREAD_GRAYSCALE) for r in rows])
  points = np.array([[points_lib.parse_point(r[k]) for k in LANDMARK_NAMES] for r in rows],
                    np.float32)
  return masks, points


def rule_sensitivity(masks, points, resolutions):
  """Errors of the IUGC rule on the true masks seen at `resolutions` cells (pixels, degrees)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from aop_tf import geometry  # pylint: disable=import-outside-toplevel
  from data_prep import masks as masks_lib  # pylint: disable=import-outside-toplevel
  one_hot = np.eye(int(masks.max()) + 1, dtype=np.float32)[masks]
  size = masks.shape[1:3]
  aop_true = geometry.aop_deg(tf.constant(points)).numpy()
  out = {}
  for cells in resolutions:
    coarse = tf.image.resize(one_hot, [cells, cells], "area")
    back = tf.image.resize(coarse, size, "bilinear").numpy().argmax(-1).astype(np.uint8)
    found = np.stack([masks_lib.landmarks_from_mask(m) for m in back])
    err = np.linalg.norm(found - points, axis=-1)
    aop = np.abs(geometry.aop_deg(tf.constant(found)).numpy() - aop_true)
    out[str(cells)] = {"mre_px": {n: float(e) for n, e in zip(LANDMARK_NAMES, err.mean(0))},
                       "mre_px_mean": float(err.mean()), "aop_error_deg": float(np.nanmean(aop))}
  return out


def main(argv):
  del argv
  if not FLAGS.eval_dir or not FLAGS.out:
    raise app.UsageError("--eval_dir and --out are required.")
  per_image = os.path.join(FLAGS.eval_dir, "per_image.csv")
  if not os.path.exists(per_image):
    raise app.UsageError(f"No {per_image}: run `python -m aop_tf.evaluate` first.")
  with open(per_image, newline="") as f:
    # Files written before the one layout name the predictions pred_PS1_x, aop_pred_deg.
    rows = [{results.OLD_NAMES.get(k, k): v for k, v in r.items()} for r in csv.DictReader(f)]
  result = {"eval_dir": FLAGS.eval_dir, "predictions": prediction_geometry(rows)}
  from data_prep import build  # pylint: disable=import-outside-toplevel
  psfhs = FLAGS.psfhs_dir or build.default_psfhs_dir()
  if os.path.isdir(os.path.join(psfhs, "masks")):
    masks, points = _read_split(psfhs, FLAGS.split)
    result["label_direction_vs_mask_axis"] = label_rule_spread(masks, points)
    if FLAGS.rule_resolutions:
      result["rule_on_true_masks_at_resolution"] = rule_sensitivity(
          masks, points, [int(r) for r in FLAGS.rule_resolutions])
  else:
    print(f"PSFHS masks not found at {psfhs}: the label-rule spread is skipped.")
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  print(json.dumps(result, indent=2))
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
