"""The quality score and the 90 % interval: fitted on out-of-fold train predictions, scored on val
once.

  python -m benchmarks.oof --stage=predict      # OOF features (needs runs/oof_f<k>)
  python -m benchmarks.quality --fit            # fit on OOF -> benchmarks/results/quality_fit.json
  python -m benchmarks.quality --ceiling        # why the AUROC stops where it does -> quality_ceiling.json
  python -m benchmarks.quality --score_val      # the shipped model on val, once -> quality_val.json

Fit (OOF only): ridge regression of `log(|AoP error| + 1)` on the standardised features of
`aop_tf.quality` (alpha fixed at 1 beforehand); its cross-validated AUROC over the k folds (each
fold scored by a fit on the others) says how well it ranks bad AoPs before val is touched; the
flag threshold is the highest score catching >= 50 % of the > 10 deg OOF errors; the interval
quantile is the conformal 90 % quantile of |error| / (score + 1) over all OOF images.
Ceiling (OOF and train labels only): near-identical neighbouring train frames (`label_noise`'s
pairs, mean grey-level difference below a bound) show how far two labels of the same anatomy
differ; from their spread, the AoP label noise sd `s`. The bad OOF errors whose near-identical
neighbour's label the prediction matches within 10 deg are the share label noise alone explains.
An oracle that knew the model's own error `m` exactly (observed error = m + label noise, m with
the OOF errors' shape and variance less `s^2`) ranks `|m + noise| > 10` with the AUROC written,
the best any score computed from the image and the model could reach.
Val (once per shipped model): AUROC with a 95 % bootstrap interval resampled by 40-file block, the
share flagged, the coverage overall and per third of interval width, signed bias and Bland-Altman
limits, the 2x2 table either side of 120 deg and the error by AoP range.
"""

import csv
import datetime
import json
import math
import os

from absl import app
from absl import flags
import numpy as np

from aop_tf import LANDMARK_NAMES
from aop_tf import metrics
from aop_tf import quality

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
OOF_CSV = os.path.join(RESULTS, "oof_features.csv")
FIT_JSON = os.path.join(RESULTS, "quality_fit.json")
BAD_DEG, COVERAGE, ALPHA = 10.0, 0.9, 1.0
FIRST_FILE, BLOCK = 3744, 40

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined on demand: other benchmarks own flags of the same names)."""
  flags.DEFINE_bool("fit", False, "Fit the score and interval on the OOF features.")
  flags.DEFINE_bool("ceiling", False, "Measure the AUROC's ceiling from label noise (OOF, train).")
  flags.DEFINE_bool("score_val", False, "Score the shipped model on PSFHS val (once).")
  flags.DEFINE_string("model", "psfhs", "Shipped model scored on val.")
  flags.DEFINE_integer("bootstrap", 2000, "Block-bootstrap resamples.")


def _psfhs_rows(psfhs_dir, split):
  from aop_tf.io import points  # pylint: disable=import-outside-toplevel
  with open(os.path.join(psfhs_dir, f"{split}.csv"), encoding="utf-8-sig") as f:
    return {r["Filename"]: np.array([points.parse_point(r[k]) for k in LANDMARK_NAMES])
            for r in csv.DictReader(f)}


def predict_features(model, names, psfhs_dir, labels):
  """Runs `model` (a predictor) on PSFHS images; rows of features, AoP and error per image."""
  from aop_tf import geometry  # pylint: disable=import-outside-toplevel
  from aop_tf.io import frames  # pylint: disable=import-outside-toplevel
  rows = []
  for start in range(0, len(names), 16):
    batch = names[start:start + 16]
    images = [frames.read_still(os.path.join(psfhs_dir, "images", n))[0] for n in batch]
    out = model.predict(images)
    size = np.array([[im.shape[1], im.shape[0]] for im in images], np.float64)
    feats = quality.features(out["heatmaps"], out["landmarks"], out["aop_deg"],
                             out["confidence"], size, out.get("aop_spread_deg"))
    gt_aop = np.asarray(geometry.aop_deg(np.stack([labels[n] for n in batch])), np.float64)
    for i, name in enumerate(batch):
      row = {"filename": name, "aop_deg": float(out["aop_deg"][i]), "aop_gt_deg": gt_aop[i]}
      row["aop_error_deg"] = abs(row["aop_deg"] - row["aop_gt_deg"])
      row.update(zip(quality.FEATURES, feats[i].tolist()))
      rows.append(row)
  return rows


def write_oof_predictions(folds, psfhs_dir):
  """Each fold's last checkpoint predicts its held-out images: `OOF_CSV`."""
  from aop_tf import predictor  # pylint: disable=import-outside-toplevel
  labels = _psfhs_rows(psfhs_dir, "train")
  rows = []
  for fold, names in sorted(folds.items()):
    model = predictor.load(os.path.join(REPO, "runs", f"oof_f{fold}"), checkpoint="latest")
    for row in predict_features(model, names, psfhs_dir, labels):
      rows.append({"fold": fold, **row})
    print(f"fold {fold}: {len(names)} images predicted", flush=True)
  _write_csv(OOF_CSV, rows)
  print(f"wrote {OOF_CSV}")


def _write_csv(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _read_csv(path):
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return {k: (np.array([r[k] for r in rows]) if k == "filename" else
              np.array([float(r[k]) for r in rows])) for k in rows[0]}


def _fit(x, y):
  """Ridge regression on standardised x: (mean, scale, coef, intercept)."""
  from sklearn.linear_model import Ridge  # pylint: disable=import-outside-toplevel
  mean, scale = x.mean(axis=0), x.std(axis=0)
  scale = np.where(scale > 1e-9, scale, 1.0)
  model = Ridge(alpha=ALPHA).fit((x - mean) / scale, y)
  return mean, scale, model.coef_, float(model.intercept_)


def _model(mean, scale, coef, intercept, q=1.0, threshold=math.inf):
  return quality.QualityModel({"features": list(quality.FEATURES), "mean": mean.tolist(),
                               "scale": scale.tolist(), "coef": np.asarray(coef).tolist(),
                               "intercept": intercept, "interval_q": q,
                               "flag_score_deg": threshold, "coverage": COVERAGE})


def conformal_quantile(ratios, coverage=COVERAGE):
  """The `ceil((n + 1) coverage) / n` empirical quantile of `ratios` (split conformal)."""
  ratios = np.sort(np.asarray(ratios, np.float64))
  k = min(len(ratios), math.ceil((len(ratios) + 1) * coverage))
  return float(ratios[k - 1])


def fit(oof):
  """The fitted `quality` dict of the card and the OOF figures behind it."""
  x = np.stack([oof[name] for name in quality.FEATURES], 1)
  err = oof["aop_error_deg"]
  ok = np.isfinite(err)
  x, err, folds = x[ok], err[ok], oof["fold"][ok]
  y = np.log1p(err)
  cross_score = np.zeros_like(err)
  for fold in np.unique(folds):
    inside = folds != fold
    cross_score[~inside] = _model(*_fit(x[inside], y[inside])).score(x[~inside])
  mean, scale, coef, intercept = _fit(x, y)
  score = _model(mean, scale, coef, intercept).score(x)
  bad = err > BAD_DEG
  threshold = metrics.threshold_for_recall(score, bad, 0.5)
  q = conformal_quantile(err / (score + 1.0))
  fitted = {"features": list(quality.FEATURES), "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": np.asarray(coef).tolist(), "intercept": intercept, "interval_q": q,
            "coverage": COVERAGE, "flag_score_deg": threshold, "bad_deg": BAD_DEG,
            "target": "log(|AoP error| + 1), ridge alpha 1 on standardised features",
            "chosen_on": f"out-of-fold predictions on PSFHS train ({len(err)} images, "
                          f"{len(np.unique(folds))} folds of whole 40-file blocks)"}
  low, high = _model(mean, scale, coef, intercept, q).interval(np.zeros_like(err), score)
  oof_figures = {
      "n": int(len(err)), "n_bad": int(bad.sum()),
      "auroc_cross_fitted": metrics.auroc(cross_score, bad),
      "auroc_in_sample": metrics.auroc(score, bad),
      "flagged_share": float(np.mean(score >= threshold)),
      "bad_caught_share": float(np.mean(score[bad] >= threshold)) if bad.any() else None,
      "coverage": float(np.mean(err <= high)),
      "aop_error_mean_deg": float(err.mean()),
      "auroc_min_peak": metrics.auroc(-np.min(x[:, :3], axis=1), bad),
  }
  return fitted, oof_figures


def near_identical_pairs(psfhs_dir, mad_below):
  """Neighbouring train frames nearly the same image: [(a, b, mad)], MAD < `mad_below` (0..255)."""
  import cv2  # pylint: disable=import-outside-toplevel
  from benchmarks import label_noise  # pylint: disable=import-outside-toplevel
  names = sorted(_psfhs_rows(psfhs_dir, "train"))
  out = []
  for a, b in label_noise.neighbour_pairs(names):
    image_a, image_b = (cv2.imread(os.path.join(psfhs_dir, "images", n), cv2.IMREAD_GRAYSCALE)
                        for n in (a, b))
    mad = float(np.abs(image_a.astype(np.float32) - image_b).mean())
    if mad < mad_below:
      out.append((a, b, mad))
  return out


def oracle_auroc(signed_errors, noise_sd=None, pair_diffs=None, bad_deg=BAD_DEG, draws=200,
                 seed=0):
  """AUROC of an oracle knowing the model's own error `m` for `|m + n| > bad_deg`.

  `m` keeps the shape of `signed_errors` (observed = m + label noise), scaled to variance
  `var(observed) - var(n)`. The noise `n` is N(0, noise_sd^2), or, with `pair_diffs` (label
  differences of near-identical pairs, each `n_a - n_b`), drawn as `+-|d| / sqrt(2)`: the pairs'
  own heavy tails. Mean over `draws` Monte-Carlo draws.
  """
  e = np.asarray(signed_errors, np.float64)
  centred = e - e.mean()
  var = centred.var()
  rng = np.random.default_rng(seed)
  if pair_diffs is not None:
    half = np.abs(np.asarray(pair_diffs, np.float64)) / math.sqrt(2.0)
    noise_var = float(np.mean(half ** 2))
  else:
    noise_var = noise_sd ** 2
  k = math.sqrt(max(var - noise_var, 0.0) / var)
  values = []
  for _ in range(draws):
    m = e.mean() + k * rng.permutation(centred)
    if pair_diffs is not None:
      noise = rng.choice(half, len(m)) * rng.choice([-1.0, 1.0], len(m))
    else:
      noise = rng.normal(0.0, noise_sd, len(m))
    observed = m + noise
    values.append(metrics.auroc(np.abs(m), np.abs(observed) > bad_deg))
  return float(np.mean(values))


def ceiling(oof, psfhs_dir, mad_bounds=(5.0, 6.0, 8.0)):
  """Label noise and the oracle's AUROC, per near-identical bound (OOF and train labels only)."""
  labels = _psfhs_rows(psfhs_dir, "train")
  from aop_tf import geometry  # pylint: disable=import-outside-toplevel
  label_aop = {n: float(geometry.aop_deg(p[None].astype(np.float32))[0]) for n, p in labels.items()}
  pred = dict(zip(oof["filename"], oof["aop_deg"]))
  signed = oof["aop_deg"] - oof["aop_gt_deg"]
  out = {"oof_n": int(len(signed)), "oof_bad": int(np.sum(np.abs(signed) > BAD_DEG)),
         "auroc_fitted_cross": None, "by_mad_bound": []}
  pairs_all = near_identical_pairs(psfhs_dir, max(mad_bounds))
  for bound in mad_bounds:
    pairs = [(a, b) for a, b, mad in pairs_all if mad < bound]
    diff = np.array([label_aop[a] - label_aop[b] for a, b in pairs])
    # Two labels of one anatomy differ by n_a - n_b ~ N(0, 2 s^2): the robust sd from the median.
    noise_sd = float(np.median(np.abs(diff)) / (0.6744897501960817 * math.sqrt(2.0)))
    explained, bad_with_pair = 0, 0
    for a, b in pairs:
      for own, other in ((a, b), (b, a)):
        if abs(pred[own] - label_aop[own]) > BAD_DEG:
          bad_with_pair += 1
          explained += abs(pred[own] - label_aop[other]) <= BAD_DEG
    out["by_mad_bound"].append({
        "mad_below": bound, "pairs": len(pairs),
        "label_aop_diff_abs_median_deg": float(np.median(np.abs(diff))),
        "pairs_labels_differ_over_10_deg_share": float(np.mean(np.abs(diff) > BAD_DEG)),
        "label_noise_sd_deg": noise_sd,
        "noise_alone_share_of_errors_over_10": float(
            2 * (1 - _normal_cdf(BAD_DEG / noise_sd))),
        "bad_oof_images_in_pairs": bad_with_pair,
        "bad_matched_by_neighbour_label_share": (explained / bad_with_pair) if bad_with_pair
                                                else None,
        "oracle_auroc_gaussian_noise": oracle_auroc(signed, noise_sd=noise_sd),
        "label_noise_rms_from_pairs_deg": float(np.sqrt(np.mean(diff ** 2) / 2.0)),
        "oracle_auroc_pair_noise": oracle_auroc(signed, pair_diffs=diff),
    })
  return out


def _normal_cdf(z):
  return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _blocks(names):
  return np.array([(int(os.path.basename(n)[:5]) - FIRST_FILE) // BLOCK for n in names])


def block_bootstrap(names, statistic, n_boot, seed=0):
  """95 % interval of `statistic(indices)` over resamples of whole 40-file blocks."""
  blocks = _blocks(names)
  members = {b: np.flatnonzero(blocks == b) for b in np.unique(blocks)}
  keys = np.array(sorted(members))
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(n_boot):
    idx = np.concatenate([members[b] for b in rng.choice(keys, len(keys))])
    value = statistic(idx)
    if value is not None and math.isfinite(value):
      values.append(value)
  return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def agreement(pred, gt):
  """Signed bias, Bland-Altman limits, the 2x2 table either side of 120 deg, error by range."""
  diff = pred - gt
  bias, sd = float(np.mean(diff)), float(np.std(diff, ddof=1))
  table = {f"pred_{p}_label_{g}": int(np.sum(((pred >= 120) == (p == "ge120")) &
                                              ((gt >= 120) == (g == "ge120"))))
           for p in ("lt120", "ge120") for g in ("lt120", "ge120")}
  ranges = {}
  for lo, hi in ((0, 100), (100, 120), (120, 140), (140, 200)):
    inside = (gt >= lo) & (gt < hi)
    ranges[f"{lo}-{hi}"] = {"n": int(inside.sum()),
                            "abs_error_mean_deg": float(np.mean(np.abs(diff[inside])))
                            if inside.any() else None,
                            "bias_deg": float(np.mean(diff[inside])) if inside.any() else None}
  return {"bias_deg": bias, "sd_deg": sd, "limits_of_agreement_deg": [bias - 1.96 * sd,
                                                                      bias + 1.96 * sd],
          "table_120": table, "by_label_range": ranges}


def score_val(model_name, fitted, psfhs_dir, n_boot):
  """The shipped model on val with the fitted score and interval: the figures of the card."""
  from aop_tf import predictor, zoo  # pylint: disable=import-outside-toplevel
  labels = _psfhs_rows(psfhs_dir, "val")
  names = sorted(labels)
  rows = predict_features(predictor.load(zoo.resolve(model_name) or model_name,
                                         num_interpreters=2), names, psfhs_dir, labels)
  x = np.array([[r[f] for f in quality.FEATURES] for r in rows])
  err = np.array([r["aop_error_deg"] for r in rows])
  pred = np.array([r["aop_deg"] for r in rows])
  gt = np.array([r["aop_gt_deg"] for r in rows])
  model = quality.QualityModel(fitted)
  score = model.score(x)
  low, high = model.interval(pred, score)
  covered = (gt >= low) & (gt <= high)
  width = high - low
  terciles = np.quantile(width, [1 / 3, 2 / 3])
  which = np.digitize(width, terciles)
  bad = err > BAD_DEG
  flagged = model.flagged(score)
  return {
      "n": len(rows), "n_bad": int(bad.sum()),
      "auroc": metrics.auroc(score, bad),
      "auroc_95ci_block_bootstrap": block_bootstrap(
          names, lambda i: metrics.auroc(score[i], bad[i]), n_boot),
      "flagged_share": float(flagged.mean()),
      "bad_caught_share": float(flagged[bad].mean()) if bad.any() else None,
      "coverage": float(covered.mean()),
      "coverage_95ci_block_bootstrap": block_bootstrap(names, lambda i: covered[i].mean(),
                                                       n_boot),
      "coverage_by_width_third": [float(covered[which == t].mean()) for t in range(3)],
      "width_mean_deg": float(width.mean()),
      "agreement": agreement(pred, gt),
      "rows": [{"filename": n, "aop_deg": p, "aop_gt_deg": g, "score_deg": s, "low": lo,
                "high": hi} for n, p, g, s, lo, hi in zip(names, pred, gt, score, low, high)],
  }


def bland_altman_png(path, val):
  """The Bland-Altman plot of val (matplotlib, benchmarks only)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  pred = np.array([r["aop_deg"] for r in val["rows"]])
  gt = np.array([r["aop_gt_deg"] for r in val["rows"]])
  agree = val["agreement"]
  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
  ax.scatter((pred + gt) / 2, pred - gt, s=10, alpha=0.6)
  for y, style in ((agree["bias_deg"], "-"), *((v, "--") for v in
                                               agree["limits_of_agreement_deg"])):
    ax.axhline(y, color="k", linestyle=style, linewidth=1)
  ax.set_xlabel("mean of predicted and labelled AoP (deg)")
  ax.set_ylabel("predicted - labelled AoP (deg)")
  lo, hi = agree["limits_of_agreement_deg"]
  ax.set_title(f"PSFHS val (n={val['n']}): bias {agree['bias_deg']:+.1f} deg, "
               f"limits {lo:+.1f} / {hi:+.1f}")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main(argv):
  del argv
  from data_prep import build  # pylint: disable=import-outside-toplevel
  stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  if FLAGS.fit:
    fitted, figures = fit(_read_csv(OOF_CSV))
    with open(FIT_JSON, "w") as f:
      json.dump({"created": stamp, "command": "python -m benchmarks.quality --fit",
                 "fitted": fitted, "oof": figures}, f, indent=2)
      f.write("\n")
    print(json.dumps(figures, indent=1))
  if FLAGS.ceiling:
    result = ceiling(_read_csv(OOF_CSV), build.default_psfhs_dir())
    with open(FIT_JSON) as f:
      result["auroc_fitted_cross"] = json.load(f)["oof"]["auroc_cross_fitted"]
    with open(os.path.join(RESULTS, "quality_ceiling.json"), "w") as f:
      json.dump({"created": stamp, "command": "python -m benchmarks.quality --ceiling",
                 "ceiling": result}, f, indent=2)
      f.write("\n")
    print(json.dumps(result, indent=1))
  if FLAGS.score_val:
    with open(FIT_JSON) as f:
      fitted = json.load(f)["fitted"]
    val = score_val(FLAGS.model, fitted, build.default_psfhs_dir(), FLAGS.bootstrap)
    path = os.path.join(RESULTS, f"quality_val_{FLAGS.model}.json")
    with open(path, "w") as f:
      json.dump({"created": stamp, "command": f"python -m benchmarks.quality --score_val "
                 f"--model={FLAGS.model}", "val": val}, f, indent=2)
      f.write("\n")
    bland_altman_png(os.path.join(REPO, "docs", f"bland_altman_{FLAGS.model}.png"), val)
    print(json.dumps({k: v for k, v in val.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
  define_flags()
  app.run(main)
