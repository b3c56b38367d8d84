"""Evaluates a trained or exported landmark model: JSON report, per-image CSV and pictures.

  python -m aop_tf.evaluate --model=runs/cpu --data_dir=data/masks --split=val
  python -m aop_tf.evaluate --model=saved_models/cpu --images_dir=IMGS --labels_csv=labels.csv

Evaluation = a predictor (`aop_tf.predictor`: a training directory, a SavedModel or a `.tflite`
file, each run on the original images with its own resize and decoder) + a data source
(`aop_tf.sources`: a built TFDS dataset split, or a folder of images with an IUGC-format CSV) +
the metrics of `aop_tf.metrics`. `--decode_method` / `--decode_blur_sigma` / `--fh1_method`
override the model's decoding (an export's heatmaps are then decoded again). A `.tflite` model on
images with a CSV runs without TensorFlow; a dataset split, a SavedModel and a training directory
need it.

Writes to `--output_dir` (default `<model>/eval_<split or csv name>`):
  report.json     `metrics.report` plus model, data, decode settings and inference ms/image
  per_image.csv   one row per image: GT and predicted points, errors (px and 512 space), AoP
  overlays/       `NNNN_<name>.png` landmark/AoP overlays and `NNNN_<name>_heatmaps.png` panels
"""

import datetime
from importlib import metadata
import math
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
from tqdm import tqdm

import aop_tf
from aop_tf import LANDMARK_NAMES
from aop_tf import cli
from aop_tf import codec as codec_lib
from aop_tf import metrics
from aop_tf import predictor as predictor_lib
from aop_tf import quality
from aop_tf import results
from aop_tf import sources
from aop_tf import visualize
from aop_tf import zoo
from aop_tf.io import files
from aop_tf.io import frames as frames_lib

REPORT_FILE = "report.json"
PER_IMAGE_FILE = "per_image.csv"
OVERLAY_DIR = "overlays"
OVERLAY_ORDERS = ("file", "worst")


def open_source(data_dir=None, split="val", images_dir=None, labels_csv=None, progress=False):
  """The `sources` object of the arguments: a dataset split, or images with a labels CSV."""
  if (data_dir is None) == (images_dir is None and labels_csv is None):
    raise ValueError("Pass either --data_dir (with --split) or --images_dir with --labels_csv.")
  if data_dir is None and (images_dir is None or labels_csv is None):
    raise ValueError("--images_dir and --labels_csv go together; pass both.")
  if data_dir is not None:
    return sources.TfdsSource(data_dir, split)
  return sources.CsvSource(images_dir, labels_csv, progress=progress)


def predict_source(predictor, source, batch_size=16, keep_heatmaps=False, progress=False):
  """Runs a predictor over every example of a source, in order.

  Returns:
    preds: dict of numpy arrays: `pred_px` float32 [N,3,2], `gt_px` [N,3,2], `size_px` [N,2],
      `confidence` [N,3], `aop_spread_deg` [N] (an ensemble's spread of member AoPs, degrees; NaN
      for one model), `filename` object [N] of str, and `heatmaps` [N,R,R,3] when
      `keep_heatmaps`.
    timing: `batch_s`, `batch_n` (seconds and images of each model call) and `total_s`.
  """
  keys = ("pred_px", "gt_px", "size_px", "confidence", "aop_spread_deg", "filename") + (
      ("heatmaps",) if keep_heatmaps else ())
  parts = {k: [] for k in keys}
  timing = {"batch_s": [], "batch_n": []}
  start = time.perf_counter()
  with tqdm(total=len(source), unit="img", desc="predict", disable=not progress,
            dynamic_ncols=True) as bar:
    for batch in predictor_lib.chunks(source, batch_size):
      t0 = time.perf_counter()
      out = predictor.predict([ex["image"] for ex in batch])
      timing["batch_s"].append(time.perf_counter() - t0)
      timing["batch_n"].append(len(batch))
      parts["pred_px"].append(out["landmarks"])
      parts["confidence"].append(out["confidence"])
      parts["aop_spread_deg"].append(out["aop_spread_deg"])
      parts["gt_px"].append(np.stack([ex["landmarks"] for ex in batch]))
      parts["size_px"].append(np.array([[ex["image"].shape[1], ex["image"].shape[0]]
                                        for ex in batch], np.float32))
      parts["filename"].extend(ex["filename"] for ex in batch)
      if keep_heatmaps:
        parts["heatmaps"].append(out["heatmaps"])
      bar.update(len(batch))
  timing["total_s"] = time.perf_counter() - start
  preds = {k: np.concatenate(v).astype(np.float32) for k, v in parts.items() if k != "filename"}
  preds["filename"] = np.array(parts["filename"], dtype=object)
  return preds, timing


# ---------------------------------------------------------------------------------------------
# Outputs.


def per_image_rows(preds, errors, min_confidence=0.3, uncertainty_floor=None, quality_fit=None):
  """Rows of `per_image.csv` in the one layout (`results`): the prediction columns of `predict`
  (points in original pixels; the flag and its reason from the card's fitted quality model
  `quality_fit` where there is one and `preds` kept the heatmaps, else at `min_confidence`) plus
  the labels and the errors (px and 512 space)."""
  fitted = quality.per_frame(
      quality.model_of(quality_fit),
      {k: preds[k] for k in ("heatmaps", "confidence", "aop_spread_deg") if k in preds} |
      {"landmarks": preds["pred_px"], "aop_deg": errors["aop_pred_deg"]}, preds["size_px"])
  rows = []
  for i, filename in enumerate(preds["filename"]):
    source, index = frames_lib.split_frame_name(filename)
    frame = frames_lib.Frame(None, source, index or 0, math.nan,
                             tuple(int(v) for v in preds["size_px"][i]), None, index is not None)
    row = results.prediction_row(frame, preds["pred_px"][i], errors["aop_pred_deg"][i],
                                 preds["confidence"][i], preds["aop_spread_deg"][i],
                                 min_confidence, uncertainty_floor, fitted[i])
    row["filename"] = filename
    for k, name in enumerate(LANDMARK_NAMES):
      row[f"gt_{name}_x"], row[f"gt_{name}_y"] = (float(v) for v in preds["gt_px"][i, k])
    row["aop_gt_deg"] = float(errors["aop_gt_deg"][i])
    for k, name in enumerate(LANDMARK_NAMES):
      row[f"err_{name}_px"] = float(errors["radial_px"][i, k])
      row[f"err_{name}_512"] = float(errors["radial_512"][i, k])
    row["mre_px"] = float(np.mean(errors["radial_px"][i]))
    row["mre_512"] = float(np.mean(errors["radial_512"][i]))
    row["aop_error_deg"] = float(errors["aop_error_deg"][i])
    row["degenerate"] = bool(errors["degenerate"][i])
    rows.append(row)
  return rows


def write_csv(path, rows):
  """Writes `per_image_rows` (`results.EVALUATION_COLUMNS`, 4 decimals) atomically."""
  results.write_csv(path, rows, list(results.EVALUATION_COLUMNS), decimals=4)


def read_per_image(path):
  """`per_image.csv` back as columns (`results.read_csv`: `filename` a list of str, numbers as
  float64 [N] with NaN where empty; older column names read under the current ones)."""
  return results.read_csv(path)


def _overlay_name(index, filename):
  stem = os.path.splitext(filename.replace("\\", "/"))[0].replace("/", "__")
  return f"{index:04d}_{stem}"


def write_overlays(folder, examples, preds, errors, indices, progress=False):
  """Overlay (and, with heatmaps in `preds`, heatmap panel) PNGs of the examples at `indices`.

  Args:
    examples: iterable of original examples in dataset order (only `indices` are drawn).
    indices: dataset positions to draw; files are numbered by position.

  Returns:
    Number of overlays written.
  """
  wanted = set(int(i) for i in indices)
  written = 0
  with tqdm(total=len(wanted), unit="img", desc="overlays", disable=not progress,
            dynamic_ncols=True) as bar:
    for i, ex in enumerate(examples):
      if not wanted:
        break
      if i not in wanted:
        continue
      wanted.discard(i)
      if ex["filename"] != preds["filename"][i]:
        raise RuntimeError(f"Overlay {i}: image {ex['filename']} does not match prediction "
                           f"{preds['filename'][i]}; the data changed during evaluation.")
      title = (f"{ex['filename']}  MRE {np.mean(errors['radial_px'][i]):.2f} px "
               f"({np.mean(errors['radial_512'][i]):.2f} @512)")
      picture = visualize.overlay(ex["image"], pred=preds["pred_px"][i], gt=preds["gt_px"][i],
                                  aop_pred=errors["aop_pred_deg"][i],
                                  aop_gt=errors["aop_gt_deg"][i], title=title)
      name = _overlay_name(i, ex["filename"])
      visualize.save_png(os.path.join(folder, name + ".png"), picture)
      if "heatmaps" in preds:
        panel = visualize.heatmap_panel(ex["image"], preds["heatmaps"][i])
        visualize.save_png(os.path.join(folder, name + "_heatmaps.png"), panel)
      written += 1
      bar.update(1)
  return written


def overlay_indices(errors, count, order="file"):
  """Which images get pictures: the first `count` (-1 all, 0 none) in file order or worst first."""
  n = len(errors["radial_px"])
  count = n if count < 0 else min(int(count), n)
  if order not in OVERLAY_ORDERS:
    raise ValueError(f"Unknown overlay order {order!r}; expected one of {OVERLAY_ORDERS}.")
  if order == "worst":
    return np.argsort(-np.mean(errors["radial_px"], axis=-1), kind="stable")[:count]
  return np.arange(count)


# ---------------------------------------------------------------------------------------------
# The evaluation.


def _default_output_dir(model, source):
  if not os.path.exists(model):  # a shipped model: never write into the package
    return os.path.join("runs", f"{model}_eval_{source.name}")
  folder = model if os.path.isdir(model) else os.path.dirname(os.path.abspath(model))
  return os.path.join(folder, f"eval_{source.name}")


def _versions(predictor):
  """The versions of what ran the model: TensorFlow where it was loaded, LiteRT for TFLite."""
  tf = sys.modules.get("tensorflow")
  out = {"aop_tf": aop_tf.__version__, "python": sys.version.split()[0],
         "tensorflow": getattr(tf, "__version__", None)}
  if predictor.kind == "tflite":
    try:
      out["ai_edge_litert"] = metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
      out["ai_edge_litert"] = None
  return out


def _result(summary, predictor, source, batch_size, timing):
  """report.json: the metrics summary plus what was evaluated and how fast."""
  n = summary["n_images"]
  model_info = predictor.describe()
  decode = model_info.pop("decode")
  return dict(summary, **{
      "model": model_info,
      "data": source.describe(),
      "decode": decode,
      "batch_size": int(batch_size),
      "inference_ms_per_image": metrics.steady_ms_per_image(timing["batch_s"], timing["batch_n"]),
      "inference_ms_per_image_incl_first_batch": (1000.0 * sum(timing["batch_s"]) / n
                                                  if n else None),
      "wall_s": timing["total_s"],
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "versions": _versions(predictor),
  })


def evaluate(model, checkpoint=None, data_dir=None, split="val", images_dir=None,
             labels_csv=None, output_dir=None, decode_method=None, blur_sigma_cells=None,
             fh1_method=None, overlays=16, overlay_order="file", batch_size=16, progress=True,
             verbose=True, trust_model=False):
  """Runs a model over one dataset and writes report.json, per_image.csv and overlays.

  Args:
    model: a training directory, an exported SavedModel folder, a `.tflite` file or the name of
      a shipped model (`aop_tf.zoo`).
    checkpoint: training directory only: which `<checkpoint>.keras` (default: the first of
      best_val_mre, best_val_loss, latest).
    data_dir, split: a built TFDS dataset and its split; or
    images_dir, labels_csv: a folder of images and an IUGC-format CSV naming them.
    output_dir: default `<model>/eval_<split>` (or `eval_<csv name>`); for a shipped model
      `runs/<name>_eval_<split>`.
    decode_method, blur_sigma_cells, fh1_method: override the model's decoding (None: keep it).
    overlays: number of overlay + heatmap panel PNGs (0 none, -1 all).
    overlay_order: "file" (first in file order) or "worst" (largest mean radial error first).
    batch_size: images per batch.
    progress, verbose: progress bars; printed summary.
    trust_model: run a SavedModel whose graph holds ops no aop_tf export holds.

  Returns:
    The report dict written to report.json.
  """
  if batch_size < 1:
    raise ValueError(f"--batch_size {batch_size} must be >= 1.")
  if overlay_order not in OVERLAY_ORDERS:
    raise ValueError(f"Unknown overlay order {overlay_order!r}; expected one of {OVERLAY_ORDERS}.")
  if zoo.resolve(model) is None:
    shipped = ", ".join(zoo.names()) or "none installed"
    raise FileNotFoundError(f"--model={model} does not exist; pass a training directory, an "
                            f"export folder, a .tflite file or a shipped model ({shipped}).")
  source = open_source(data_dir, split, images_dir, labels_csv, progress)
  predictor = predictor_lib.load(model, checkpoint, decode={
      "decode_method": decode_method, "blur_sigma_cells": blur_sigma_cells,
      "fh1_method": fh1_method}, trust_model=trust_model)
  output_dir = output_dir or _default_output_dir(model, source)
  if verbose:
    print(f"[evaluate] {predictor.kind} model {model} on {len(source)} images "
          f"({source.describe()}) -> {output_dir}", flush=True)
  quality_fit = zoo.quality_fit(model)
  preds, timing = predict_source(predictor, source, batch_size,
                                 keep_heatmaps=overlays != 0 or quality_fit is not None,
                                 progress=progress)
  errors = metrics.per_image_errors(preds["pred_px"], preds["gt_px"], preds["size_px"])
  result = _result(metrics.report(errors), predictor, source, batch_size, timing)
  os.makedirs(output_dir, exist_ok=True)
  write_csv(os.path.join(output_dir, PER_IMAGE_FILE), per_image_rows(
      preds, errors, zoo.flag_min_confidence(model), zoo.uncertainty_floor_deg(model),
      quality_fit))
  indices = overlay_indices(errors, overlays, overlay_order)
  result["n_overlays"] = (write_overlays(os.path.join(output_dir, OVERLAY_DIR), source, preds,
                                         errors, indices, progress=progress)
                          if len(indices) else 0)
  files.write_json(os.path.join(output_dir, REPORT_FILE), result)
  if verbose:
    print(metrics.summary_table(result))
    ms = result["inference_ms_per_image"]
    print(f"inference: {'n/a' if ms is None else f'{ms:.1f}'} ms/image (batch {batch_size}); "
          f"wrote {os.path.join(output_dir, REPORT_FILE)}, {PER_IMAGE_FILE}"
          + (f", {result['n_overlays']} overlays" if result["n_overlays"] else ""), flush=True)
  return result


# ---------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("model", None, "Training directory (config.json + *.keras), exported "
                      "SavedModel folder (saved_model.pb), .tflite file or shipped model name "
                      "(psfhs).")
  flags.DEFINE_string("checkpoint", None, "Training directory: which <name>.keras (e.g. "
                      "best_val_mre, latest, epoch_0050); default the best that exists "
                      "(model_dir.CHECKPOINTS).")
  flags.DEFINE_string("data_dir", None, "Built TFDS dataset (python -m data_prep.build).")
  flags.DEFINE_string("split", "val", "Split of --data_dir.")
  flags.DEFINE_string("images_dir", None, "Folder of images named by --labels_csv.")
  flags.DEFINE_string("labels_csv", None, "IUGC-format CSV (Filename,PS1,PS2,FH1,...).")
  flags.DEFINE_string("output_dir", None, "Where to write; default <model>/eval_<split>.")
  flags.DEFINE_enum("decode_method", None, list(codec_lib.DECODE_METHODS),
                    "Heatmap decoder; default the model's.")
  flags.DEFINE_float("decode_blur_sigma", None, "DARK pre-blur sigma, cells; default the "
                     "model's.")
  flags.DEFINE_enum("fh1_method", None, list(codec_lib.FH1_METHODS),
                    "FH1 from its heatmap or the head tangent; default the model's.")
  flags.DEFINE_integer("overlays", 16, "Overlay + heatmap panel PNGs to write (0 none, -1 all).")
  flags.DEFINE_enum("overlay_order", "file", list(OVERLAY_ORDERS),
                    "Which images get overlays: first in file order, or worst first.")
  flags.DEFINE_integer("batch_size", 16, "Images per batch.")
  flags.DEFINE_boolean("trust_model", False, "Run a SavedModel even if its graph holds ops no "
                       "aop_tf export holds (file I/O, py_func, ...); refused otherwise.")
  flags.mark_flag_as_required("model")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # TFDS logs every dataset it opens at INFO.
  evaluate(FLAGS.model, checkpoint=FLAGS.checkpoint, data_dir=FLAGS.data_dir, split=FLAGS.split,
           images_dir=FLAGS.images_dir, labels_csv=FLAGS.labels_csv,
           output_dir=FLAGS.output_dir, decode_method=FLAGS.decode_method,
           blur_sigma_cells=FLAGS.decode_blur_sigma, fh1_method=FLAGS.fh1_method,
           overlays=FLAGS.overlays,
           overlay_order=FLAGS.overlay_order, batch_size=FLAGS.batch_size,
           trust_model=FLAGS.trust_model)


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "evaluate")
