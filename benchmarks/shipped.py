"""The shipped model measured as shipped: its TFLite file on PSFHS val.

  python -m benchmarks.shipped                       # --model=psfhs, data/psfhs (built if missing)

Measures, on the installed `aop_tf/models/<name>/model.tflite`:
- accuracy per landmark and the AoP error either side of 120 deg (`aop_tf.evaluate`);
- TFLite latency at batch 1 with 1 and 2 threads (median over the val images, 3 rounds);
- whether the confidence means something: the AUROC (with a bootstrap 95 % interval) of each
  score for an AoP error > 10 deg, the card's flag (flagged vs unflagged error), and a reliability
  plot (error by score quintile);
- why the scores stay weak: the correlation of the signed AoP errors of the ensemble's members
  (their `eval_val_latest_heatmap/per_image.csv`, written by `benchmarks.accuracy`), i.e. how much
  of the error every member shares and no disagreement between them can see.

`--compare_tflite` times other exports of the same ensemble beside it (latency per format).
Writes `benchmarks/results/shipped_<name>.json`, `shipped_<name>_reliability.png` and, with
`--worst_png`, a montage of the worst val cases (docs/models.md shows it).
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import accuracy

REPO_ROOT = accuracy.REPO_ROOT
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results")
BAD_DEG = 10.0

flags.DEFINE_string("model", "psfhs", "Shipped model name (aop_tf/models/<name>).")
# --dataset_dir (data/psfhs, built from --psfhs_dir if missing) comes from benchmarks.accuracy.
flags.DEFINE_string("runs_dir", os.path.join(REPO_ROOT, "runs"), "Where the member runs are "
                    "(for the error correlation; skipped where absent).")
flags.DEFINE_integer("worst", 6, "Worst val cases (by AoP error) in the montage.")
flags.DEFINE_string("worst_png", None, "Write the worst cases' montage here (e.g. "
                    "docs/models_worst_cases.png).")
flags.DEFINE_list("compare_tflite", [], "Other TFLite files of the same model to time beside "
                  "it (e.g. the float32 and dynamic-range exports of runs/zoo_psfhs).")
flags.DEFINE_integer("bootstrap", 2000, "Bootstrap resamples for the AUROC intervals.")
FLAGS = flags.FLAGS


def side_of_120(columns):
  """AoP error and agreement for images whose labelled AoP is below / at or above 120 deg
  (`columns`: `evaluate.read_per_image`)."""
  gt, pred, err = columns["aop_gt_deg"], columns["aop_deg"], columns["aop_error_deg"]
  out = {}
  for name, mask in (("below_120", gt < 120), ("at_or_above_120", gt >= 120)):
    same = (pred[mask] >= 120) == (gt[mask] >= 120)
    out[name] = {"n": int(mask.sum()), "aop_error_mean_deg": float(np.nanmean(err[mask])),
                 "aop_error_median_deg": float(np.nanmedian(err[mask])),
                 "same_side_share": float(same.mean())}
  return out


def latency(tflite, images, rounds=3):
  """Median ms per image at batch 1 for 1 and 2 TFLite threads."""
  from aop_tf import predictor  # pylint: disable=import-outside-toplevel
  out = {}
  for threads in (1, 2):
    lite = predictor.TFLitePredictor(tflite, num_threads=threads)
    for image in images[:3]:
      lite.predict([image])
    seconds = []
    for _ in range(rounds):
      for image in images:
        start = time.perf_counter()
        lite.predict([image])
        seconds.append(time.perf_counter() - start)
    out[f"threads_{threads}_ms_median"] = round(1e3 * statistics.median(seconds), 2)
    out[f"threads_{threads}_ms_p90"] = round(1e3 * float(np.percentile(seconds, 90)), 2)
  out["n_calls"] = rounds * len(images)
  out["load_avg"] = [round(v, 2) for v in os.getloadavg()]
  return out


def confidence(columns, card_flag, n_boot, seed=0):
  """AUROC (with bootstrap 95 % interval) of each score, the card's flag, reliability bins."""
  from aop_tf import metrics  # pylint: disable=import-outside-toplevel
  err = columns["aop_error_deg"]
  lowest = np.min(np.stack([columns[f"{n}_confidence"] for n in ("PS1", "PS2", "FH1")]), axis=0)
  scores = {"aop_spread_deg": columns["aop_spread_deg"], "one_minus_min_confidence": 1 - lowest,
            "one_minus_fh1_confidence": 1 - columns["FH1_confidence"]}
  bad = err > BAD_DEG
  rng = np.random.default_rng(seed)
  out = {"n_images": len(err), "n_bad": int(bad.sum()), "bad_deg": BAD_DEG, "scores": {}}
  for name, score in scores.items():
    boots = []
    for _ in range(n_boot):
      i = rng.integers(0, len(err), len(err))
      boots.append(metrics.auroc(score[i], bad[i]))
    quintiles = np.quantile(score, np.linspace(0, 1, 6))
    bins = []
    for lo, hi in zip(quintiles[:-1], quintiles[1:]):
      m = (score >= lo) & (score <= hi)
      bins.append({"score_mean": float(score[m].mean()), "n": int(m.sum()),
                   "aop_error_mean_deg": float(err[m].mean()),
                   "aop_error_rms_deg": float(np.sqrt(np.mean(err[m] ** 2))),
                   "bad_share": float(bad[m].mean())})
    out["scores"][name] = {"auroc": metrics.auroc(score, bad),
                           "auroc_95": [float(np.nanpercentile(boots, 2.5)),
                                        float(np.nanpercentile(boots, 97.5))],
                           "quintile_bins": bins}
  if card_flag.get("min_confidence") is not None:
    out["card_flag"] = dict(metrics.flag_summary(1 - lowest, err,
                                                 1 - card_flag["min_confidence"] + 1e-9),
                            min_confidence=card_flag["min_confidence"])
  return out


def member_error_correlation(runs_dir, members, shipped):
  """Signed AoP errors of each member run on val: their correlations and the shared part
  (`shipped`: the shipped file's `evaluate.read_per_image` columns)."""
  from aop_tf import evaluate  # pylint: disable=import-outside-toplevel
  signed = []
  gt = shipped["aop_gt_deg"]
  for member in members:
    path = os.path.join(runs_dir, member["run"], "eval_val_latest_heatmap", "per_image.csv")
    if not os.path.isfile(path):
      return {"skipped": f"{path} not found (python -m benchmarks.accuracy writes it)"}
    columns = evaluate.read_per_image(path)
    if columns["filename"] != shipped["filename"]:
      return {"skipped": f"{path} holds other images"}
    signed.append(columns["aop_deg"] - gt)
  signed = np.stack(signed)
  corr = np.corrcoef(signed)
  shared = signed.mean(axis=0)
  return {"members": [m["run"] for m in members],
          "correlation": np.round(corr, 3).tolist(),
          "mean_offdiagonal_correlation": float(corr[~np.eye(len(corr), dtype=bool)].mean()),
          "shared_error_sd_deg": float(np.std(shared)),
          "member_specific_error_sd_deg": float(np.std(signed - shared))}


def reliability_png(conf, path):
  """Two panels: AoP error by quintile of the ensemble spread, and of 1 - min confidence."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  spread = conf["scores"]["aop_spread_deg"]
  x = [b["score_mean"] for b in spread["quintile_bins"]]
  axes[0].plot(x, [b["aop_error_rms_deg"] for b in spread["quintile_bins"]], "o-",
               label="observed RMS AoP error")
  top = max(max(x), 1.0)
  axes[0].plot([0, top], [0, top], "k--", lw=1, label="calibrated (error = spread)")
  axes[0].set_xlabel("ensemble AoP spread (deg), quintile mean")
  axes[0].set_ylabel("AoP error (deg)")
  axes[0].set_title(f"spread: AUROC {spread['auroc']:.2f} for error > {BAD_DEG:.0f} deg")
  axes[0].legend(fontsize=8)
  conf_score = conf["scores"]["one_minus_min_confidence"]
  x = [1 - b["score_mean"] for b in conf_score["quintile_bins"]]
  axes[1].plot(x, [100 * b["bad_share"] for b in conf_score["quintile_bins"]], "o-")
  axes[1].axhline(100 * conf["n_bad"] / conf["n_images"], color="k", ls="--", lw=1,
                  label="all images")
  if "card_flag" in conf:
    axes[1].axvline(conf["card_flag"]["min_confidence"], color="r", lw=1, label="flag threshold")
  axes[1].set_xlabel("lowest heatmap peak confidence, quintile mean")
  axes[1].set_ylabel(f"% of images with AoP error > {BAD_DEG:.0f} deg")
  axes[1].set_title(f"confidence: AUROC {conf_score['auroc']:.2f}")
  axes[1].legend(fontsize=8)
  fig.suptitle(f"Shipped model on PSFHS val ({conf['n_images']} images, {conf['n_bad']} with AoP "
               f"error > {BAD_DEG:.0f} deg), 5 equal-count bins")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def worst_montage(eval_dir, path):
  """The worst-case overlays `aop_tf.evaluate` wrote, side by side (3 per row, 256 px each)."""
  import cv2  # pylint: disable=import-outside-toplevel
  folder = os.path.join(eval_dir, "overlays")
  names = sorted(n for n in os.listdir(folder) if n.endswith(".png") and "heatmap" not in n)
  tiles = []
  for name in names:
    image = cv2.imread(os.path.join(folder, name))
    tiles.append(cv2.resize(image, (384, 384), interpolation=cv2.INTER_AREA))
  while len(tiles) % 3:
    tiles.append(np.zeros_like(tiles[0]))
  rows = [np.concatenate(tiles[i:i + 3], axis=1) for i in range(0, len(tiles), 3)]
  cv2.imwrite(path, np.concatenate(rows, axis=0), [cv2.IMWRITE_PNG_COMPRESSION, 9])
  return names


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  # pylint: disable=import-outside-toplevel
  from aop_tf import evaluate, model_dir as model_dir_lib, zoo
  folder = zoo.resolve(FLAGS.model)
  if folder is None:
    raise app.UsageError(f"no shipped model {FLAGS.model!r}; shipped: {zoo.names()}")
  card = zoo.card_of(folder)
  tflite = os.path.join(folder, "model.tflite")
  accuracy.ensure_dataset(FLAGS.dataset_dir, FLAGS.psfhs_dir)
  eval_dir = os.path.join(FLAGS.runs_dir, f"{FLAGS.model}_eval_val_shipped")
  report = evaluate.evaluate(tflite, data_dir=FLAGS.dataset_dir, split="val", output_dir=eval_dir,
                             overlays=FLAGS.worst, overlay_order="worst", progress=False,
                             verbose=True)
  columns = evaluate.read_per_image(os.path.join(eval_dir, evaluate.PER_IMAGE_FILE))
  images = [ex["image"] for ex in evaluate.open_source(FLAGS.dataset_dir, "val")]
  result = {
      "model": FLAGS.model, "file": os.path.relpath(tflite, REPO_ROOT),
      "tflite_bytes": os.path.getsize(tflite),
      "command": " ".join(["python -m benchmarks.shipped"] + sys.argv[1:]),
      "val": {k: report[k] for k in ("n_images", "mre_px", "mre_512", "mae_512", "sdr_512",
                                     "aop_error_deg", "aop_agreement_120",
                                     "aop_error_by_landmark_deg")},
      "aop_by_side_of_120": side_of_120(columns),
      "latency_batch1": latency(tflite, images),
      "latency_batch1_compared": {os.path.relpath(path, REPO_ROOT): dict(
          latency(path, images), tflite_bytes=os.path.getsize(path))
                                  for path in FLAGS.compare_tflite},
      "confidence": confidence(columns, card.get("flag", {}), FLAGS.bootstrap),
      "member_error_correlation": member_error_correlation(FLAGS.runs_dir,
                                                           card.get("members", []), columns),
  }
  os.makedirs(RESULTS, exist_ok=True)
  png = os.path.join(RESULTS, f"shipped_{FLAGS.model}_reliability.png")
  reliability_png(result["confidence"], png)
  if FLAGS.worst_png:
    result["worst_cases"] = worst_montage(eval_dir, FLAGS.worst_png)
  out = os.path.join(RESULTS, f"shipped_{FLAGS.model}.json")
  model_dir_lib.write_json(out, result)
  lat, conf = result["latency_batch1"], result["confidence"]
  print(f"{FLAGS.model}: val MRE {report['mre_512']['mean']:.2f} (512 space), AoP error "
        f"{report['aop_error_deg']['mean']:.2f} deg; TFLite batch 1: "
        f"{lat['threads_2_ms_median']} ms (2 threads), {lat['threads_1_ms_median']} ms (1)")
  for name, score in conf["scores"].items():
    print(f"  AUROC for AoP error > {BAD_DEG:.0f} deg, {name}: {score['auroc']:.3f} "
          f"(95 % {score['auroc_95'][0]:.2f}-{score['auroc_95'][1]:.2f})")
  print(f"wrote {out}, {png}")


if __name__ == "__main__":
  app.run(main)
