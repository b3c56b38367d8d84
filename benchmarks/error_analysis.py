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
part of the PS1->PS2 direction that the mask's overall shape does not fix.
"""

import csv
import json
import os

from absl import app, flags
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PS_LABEL = 1

flags.DEFINE_string("eval_dir", None, "Folder with per_image.csv from `python -m aop_tf.evaluate`.")
flags.DEFINE_string("psfhs_dir", None, "Raw PSFHS folder (masks/ and <split>.csv); default "
                    "$AOP_PSFHS_DIR or ../shared/data/psfhs; skipped if absent.")
flags.DEFINE_string("split", "val", "PSFHS split whose masks are measured.")
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
  gt = {k: points("gt", k) for k in ("PS1", "PS2", "FH1")}
  pred = {k: points("pred", k) for k in ("PS1", "PS2", "FH1")}
  ray_ps = _wrap(_direction_deg(pred["PS2"] - pred["PS1"]) - _direction_deg(gt["PS2"] - gt["PS1"]))
  ray_fh = _wrap(_direction_deg(pred["FH1"] - pred["PS1"]) - _direction_deg(gt["FH1"] - gt["PS1"]))
  length = np.linalg.norm(pred["PS2"] - pred["PS1"], axis=1)
  length_gt = np.linalg.norm(gt["PS2"] - gt["PS1"], axis=1)
  mid = np.linalg.norm((pred["PS1"] + pred["PS2"] - gt["PS1"] - gt["PS2"]) / 2, axis=1)
  aop = np.array([float(r["aop_pred_deg"]) - float(r["aop_gt_deg"]) for r in rows])
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


def label_rule_spread(psfhs_dir, split):
  """|labelled PS1->PS2 direction - PS mask principal axis|, degrees (mod 180), over a split."""
  import cv2  # pylint: disable=import-outside-toplevel
  with open(os.path.join(psfhs_dir, f"{split}.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  diffs = []
  for row in rows:
    mask = cv2.imread(os.path.join(psfhs_dir, "masks", row["Filename"]), cv2.IMREAD_GRAYSCALE)
    ps1, ps2 = (np.array([float(v) for v in row[k].strip("()").split(",")]) for k in ("PS1", "PS2"))
    labelled = _direction_deg(ps2 - ps1)
    diffs.append(_wrap(labelled - principal_axis_deg(mask == PS_LABEL), 180.0))
  diffs = np.abs(np.array(diffs))
  return {"images": len(rows), "mean_deg": float(np.mean(diffs)),
          "median_deg": float(np.median(diffs)), "p90_deg": float(np.percentile(diffs, 90))}


def main(argv):
  del argv
  if not FLAGS.eval_dir or not FLAGS.out:
    raise app.UsageError("--eval_dir and --out are required.")
  per_image = os.path.join(FLAGS.eval_dir, "per_image.csv")
  if not os.path.exists(per_image):
    raise app.UsageError(f"No {per_image}: run `python -m aop_tf.evaluate` first.")
  with open(per_image, newline="") as f:
    rows = list(csv.DictReader(f))
  result = {"eval_dir": FLAGS.eval_dir, "predictions": prediction_geometry(rows)}
  psfhs = FLAGS.psfhs_dir or os.environ.get(
      "AOP_PSFHS_DIR", os.path.join(REPO_ROOT, "..", "shared", "data", "psfhs"))
  if os.path.isdir(os.path.join(psfhs, "masks")):
    result["label_direction_vs_mask_axis"] = label_rule_spread(psfhs, FLAGS.split)
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
