"""Evaluates a trained or exported landmark model: JSON report, per-image CSV and pictures.

  python -m aop_tf.evaluate --model=runs/cpu --data_dir=data/masks --split=val
  python -m aop_tf.evaluate --model=saved_models/cpu --images_dir=IMGS --labels_csv=labels.csv

`--model` is a training directory (`config.json` + `*.keras`, decoded with its `config.json`
settings unless `--decode_method` / `--decode_blur_sigma` say otherwise) or an exported SavedModel
folder (`saved_model.pb`; its `serve_images` signature is run on the original images, so the export's
own resize and decoder are what is measured). Data is a built TFDS dataset (`--data_dir`,
`--split`) or a folder of images with an IUGC-format CSV (`--images_dir`, `--labels_csv`).

Writes to `--output_dir` (default `<model>/eval_<split or csv name>`):
  report.json     `metrics.report` plus model, data, decode settings and inference ms/image
  per_image.csv   one row per image: GT and predicted points, errors (px and 512 space), AoP
  overlays/       `NNNN_<name>.png` landmark/AoP overlays and `NNNN_<name>_heatmaps.png` panels
"""

import csv
import dataclasses
import datetime
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import aop_tf
from aop_tf import LANDMARK_NAMES
from aop_tf import cli
from aop_tf import data
from aop_tf import decode as decode_lib
from aop_tf import heatmap
from aop_tf import metrics
from aop_tf import model_dir as model_dir_lib
from aop_tf import visualize

REPORT_FILE = "report.json"
PER_IMAGE_FILE = "per_image.csv"
OVERLAY_DIR = "overlays"
SAVED_MODEL_FILE = "saved_model.pb"
SERVE_IMAGES = "serve_images"
EXPORT_INFO_FILE = "export_info.json"
OVERLAY_ORDERS = ("file", "worst")


def is_saved_model(path):
  return os.path.isfile(os.path.join(path, SAVED_MODEL_FILE))


def _settings_from_config(config):
  """Pipeline/decode settings of a `config.json` dict (pipeline keys fall back to model ones)."""
  pipeline = dict(config.get("pipeline", {}))
  model_kwargs = config.get("model", {})
  for key in ("input_size", "input_channels", "heatmap_size"):
    if key not in pipeline:
      if key not in model_kwargs:
        raise KeyError(f"config.json has no pipeline.{key} (nor model.{key}); re-create it with "
                       "`python -m aop_tf.train` or add the key by hand.")
      pipeline[key] = model_kwargs[key]
  decode = config.get("decode", {})
  return pipeline, {"method": str(decode.get("method", "dark")),
                    "blur_sigma_cells": float(decode.get("blur_sigma_cells", 0.0)),
                    "fh1_method": str(decode.get("fh1_method", "heatmap"))}


def eval_pipeline_config(pipeline, batch_size):
  """`data.PipelineConfig` for one deterministic evaluation pass from a config.json pipeline dict."""
  known = {f.name for f in dataclasses.fields(data.PipelineConfig)}
  kwargs = {k: v for k, v in pipeline.items() if k in known}
  kwargs.update(batch_size=batch_size, augment=None, with_mask=False, cache=False)
  return data.PipelineConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# Data sources: original examples `{"image": uint8 [H,W,1], "landmarks": [3,2], "filename": str}`.


def _tfds_examples(data_dir, split):
  for ex in data.load_split(data_dir, split).as_numpy_iterator():
    yield {"image": ex["image"], "landmarks": ex["landmarks"].astype(np.float32),
           "filename": ex["filename"].decode("utf-8")}


class CsvSource:
  """Images named by an IUGC-format CSV (`data_prep.csv_source`), read and validated once.

  Rows that cannot be used (missing image, bad point, ...) are skipped, counted and listed in the
  report (`skipped`), never dropped silently.
  """

  def __init__(self, images_dir, labels_csv, progress=False):
    from data_prep import InputError  # pylint: disable=import-outside-toplevel
    from data_prep import csv_source  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(labels_csv):
      raise FileNotFoundError(f"--labels_csv {labels_csv} does not exist.")
    if not os.path.isdir(images_dir):
      raise FileNotFoundError(f"--images_dir {images_dir} is not a folder.")
    rows = csv_source.read_rows(labels_csv)
    self.examples, self.skipped = [], []
    for item in tqdm(csv_source.iter_records(rows, images_dir, {}, "eval"), total=len(rows),
                     unit="row", desc="read images", disable=not progress, dynamic_ncols=True):
      if isinstance(item, InputError):
        self.skipped.append(str(item))
        continue
      image = np.asarray(item.image, np.uint8)
      self.examples.append({"image": image[..., None] if image.ndim == 2 else image,
                            "landmarks": np.asarray(item.landmarks, np.float32),
                            "filename": item.filename})
    if not self.examples:
      raise ValueError(f"{labels_csv}: no usable rows ({len(self.skipped)} skipped); first "
                       f"problems:\n  " + "\n  ".join(self.skipped[:10]))

  def __iter__(self):
    return iter(self.examples)

  def __len__(self):
    return len(self.examples)


def _csv_dataset(source, pipeline_config):
  """Batched model inputs like `data.make_dataset(training=False)` from a `CsvSource`."""
  size, channels = pipeline_config.input_size, pipeline_config.input_channels

  def gen():
    yield from source

  ds = tf.data.Dataset.from_generator(gen, output_signature={
      "image": tf.TensorSpec([None, None, None], tf.uint8),
      "landmarks": tf.TensorSpec([3, 2], tf.float32),
      "filename": tf.TensorSpec([], tf.string)})

  def prepare(ex):
    shape = tf.shape(ex["image"])
    return {"image": data.preprocess_image(ex["image"], size, channels),
            "landmarks": ex["landmarks"],
            "size_px": tf.cast(tf.stack([shape[1], shape[0]]), tf.float32),
            "filename": ex["filename"]}

  return ds.map(prepare).batch(pipeline_config.batch_size).prefetch(2)


def _same_size_batches(examples, batch_size):
  """Groups consecutive equal-size examples into batches (for the uint8 `serve_images`)."""
  pending = []
  for ex in examples:
    if pending and (len(pending) == batch_size or pending[0]["image"].shape != ex["image"].shape):
      yield {k: np.stack([p[k] for p in pending]) for k in pending[0]}
      pending = []
    pending.append(ex)
  if pending:
    yield {k: np.stack([p[k] for p in pending]) for k in pending[0]}


# ---------------------------------------------------------------------------------------------
# Outputs.


def per_image_rows(preds, errors):
  """Rows (dicts) of `per_image.csv`; points in original pixels, errors in px and 512 space."""
  rows = []
  for i, filename in enumerate(preds["filename"]):
    row = {"filename": filename,
           "width": int(preds["size_px"][i, 0]), "height": int(preds["size_px"][i, 1])}
    for k, name in enumerate(LANDMARK_NAMES):
      row[f"gt_{name}_x"], row[f"gt_{name}_y"] = (float(v) for v in preds["gt_px"][i, k])
      row[f"pred_{name}_x"], row[f"pred_{name}_y"] = (float(v) for v in preds["pred_px"][i, k])
    for k, name in enumerate(LANDMARK_NAMES):
      row[f"err_{name}_px"] = float(errors["radial_px"][i, k])
      row[f"err_{name}_512"] = float(errors["radial_512"][i, k])
    row["mre_px"] = float(np.mean(errors["radial_px"][i]))
    row["mre_512"] = float(np.mean(errors["radial_512"][i]))
    row["aop_gt_deg"] = float(errors["aop_gt_deg"][i])
    row["aop_pred_deg"] = float(errors["aop_pred_deg"][i])
    row["aop_error_deg"] = float(errors["aop_error_deg"][i])
    row["degenerate"] = int(errors["degenerate"][i])
    for k, name in enumerate(LANDMARK_NAMES):
      row[f"conf_{name}"] = float(preds["confidence"][i, k])
    rows.append(row)
  return rows


def write_csv(path, rows):
  """Writes rows (dicts with equal keys) as CSV, floats with 4 decimals, NaN as empty."""
  def fmt(v):
    if isinstance(v, float):
      return "" if not np.isfinite(v) else f"{v:.4f}"
    return v
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    if rows:
      writer.writerow(list(rows[0]))
      for row in rows:
        writer.writerow([fmt(v) for v in row.values()])
  os.replace(tmp, path)


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


def evaluate(model, checkpoint=None, data_dir=None, split="val", images_dir=None,
             labels_csv=None, output_dir=None, decode_method=None, blur_sigma_cells=None,
             fh1_method=None, overlays=16, overlay_order="file", batch_size=16, progress=True, verbose=True):
  """Runs a model over one dataset and writes report.json, per_image.csv and overlays.

  Args:
    model: a training directory or an exported SavedModel folder.
    checkpoint: training directory only: which `<checkpoint>.keras` (default: the first of
      best_val_mre, best_val_loss, latest).
    data_dir, split: a built TFDS dataset and its split; or
    images_dir, labels_csv: a folder of images and an IUGC-format CSV naming them.
    output_dir: default `<model>/eval_<split>` (or `eval_<csv name>`).
    decode_method, blur_sigma_cells: default: config.json's (the export's for a SavedModel; an
      override re-decodes the exported heatmaps with the shared decoder).
    fh1_method: training directory only (an export fixes it): "heatmap" or "tangent"; default
      config.json's.
    overlays: number of overlay + heatmap panel PNGs (0 none, -1 all).
    overlay_order: "file" (first in file order) or "worst" (largest mean radial error first).
    batch_size: images per batch.
    progress, verbose: progress bars; printed summary.

  Returns:
    The report dict written to report.json.
  """
  if not os.path.isdir(model):
    raise FileNotFoundError(f"--model {model} is not a folder: pass a training directory "
                            "(config.json + *.keras) or an exported SavedModel folder.")
  if (data_dir is None) == (images_dir is None and labels_csv is None):
    raise ValueError("Pass either --data_dir (with --split) or --images_dir with --labels_csv.")
  if data_dir is None and (images_dir is None or labels_csv is None):
    raise ValueError("--images_dir and --labels_csv go together; pass both.")
  if batch_size < 1:
    raise ValueError(f"--batch_size {batch_size} must be >= 1.")
  saved = is_saved_model(model)
  if checkpoint and checkpoint.endswith(".keras"):
    checkpoint = checkpoint[:-len(".keras")]
  if saved and checkpoint:
    raise ValueError(f"--checkpoint {checkpoint} applies to training directories; {model} is an "
                     "exported SavedModel.")
  if data_dir is not None:
    data_dir = data.find_dataset_dir(data_dir)
    data_name = split
    data_info = {"data_dir": os.path.abspath(data_dir), "split": split}
  else:
    data_name = os.path.splitext(os.path.basename(labels_csv))[0]
    data_info = {"images_dir": os.path.abspath(images_dir),
                 "labels_csv": os.path.abspath(labels_csv)}
  output_dir = output_dir or os.path.join(model, f"eval_{data_name}")

  # Model and its settings.
  if saved:
    info_path = os.path.join(model, EXPORT_INFO_FILE)
    config = (model_dir_lib.read_json(info_path).get("config", {})
              if os.path.exists(info_path) else {})
    exported_decode = _settings_from_config(config)[1] if config else None
    try:
      loaded = tf.saved_model.load(model)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{model}: cannot load the SavedModel ({type(e).__name__}); re-export it "
                       "with `python -m aop_tf.export`.") from None
    if SERVE_IMAGES not in loaded.signatures:
      raise KeyError(f"{model} has no {SERVE_IMAGES!r} signature (it has "
                     f"{sorted(loaded.signatures)}); re-export it with `python -m aop_tf.export`.")
    serve_fn = loaded.signatures[SERVE_IMAGES]
    decode = dict(exported_decode or {"method": None, "blur_sigma_cells": None})
    redecode = ((decode_method is not None and decode_method != decode["method"]) or
                (blur_sigma_cells is not None and blur_sigma_cells != decode["blur_sigma_cells"]))
    exported_fh1 = decode.get("fh1_method", "heatmap")
    if fh1_method is not None and fh1_method != exported_fh1:
      raise ValueError(f"--fh1_method {fh1_method} differs from the export's {exported_fh1}; "
                       "evaluate the training directory, or export with that method.")
    if redecode and exported_fh1 != "heatmap":
      raise ValueError(f"The export decodes FH1 by {exported_fh1!r}, which needs its "
                       "segmentation output; its heatmaps alone cannot be re-decoded. Evaluate "
                       "the training directory instead.")
    if redecode:
      decode = {"method": decode_method or decode["method"] or "dark",
                "blur_sigma_cells": float(blur_sigma_cells if blur_sigma_cells is not None
                                          else decode["blur_sigma_cells"] or 0.0),
                "fh1_method": "heatmap"}
    model_info = {"path": os.path.abspath(model), "kind": "saved_model",
                  "signature": SERVE_IMAGES, "redecoded": bool(redecode)}
  else:
    net, config = model_dir_lib.load_model(model, checkpoint)
    pipeline, decode = _settings_from_config(config)
    if decode_method is not None:
      decode["method"] = decode_method
    if blur_sigma_cells is not None:
      decode["blur_sigma_cells"] = float(blur_sigma_cells)
    if fh1_method is not None:
      decode["fh1_method"] = fh1_method
    decode_lib.check_fh1_method(decode["fh1_method"],
                                int(config.get("model", {}).get("seg_classes", 0)))
    model_info = {"path": os.path.abspath(model), "kind": "keras",
                  "checkpoint": checkpoint or _first_checkpoint(model)}
  if decode["method"] is not None and decode["method"] not in heatmap.DECODE_METHODS:
    raise ValueError(f"--decode_method {decode['method']!r} is not one of "
                     f"{heatmap.DECODE_METHODS}.")

  # Data.
  csv_source = (CsvSource(images_dir, labels_csv, progress=progress)
                if data_dir is None else None)
  if csv_source is not None:
    data_info.update(n_skipped=len(csv_source.skipped), skipped=csv_source.skipped)

  def originals():
    return iter(csv_source) if csv_source is not None else _tfds_examples(data_dir, split)

  total = len(csv_source) if csv_source is not None else data.num_examples(data_dir, split)
  if verbose:
    print(f"[evaluate] {model_info['kind']} model {model} on {total} images "
          f"({data_info}) -> {output_dir}", flush=True)

  want_heatmaps = overlays != 0
  timing = {}
  if saved:
    preds = metrics.predict_with_serving(
        serve_fn, _same_size_batches(originals(), batch_size), progress=progress, total=total,
        timing=timing, keep_heatmaps=want_heatmaps or redecode)
    if redecode:
      preds["pred_px"], _, conf = (t.numpy() for t in heatmap.decode_landmarks(
          preds["heatmaps"], preds["size_px"], decode["method"], decode["blur_sigma_cells"]))
      preds["confidence"] = conf
      if not want_heatmaps:
        del preds["heatmaps"]
  else:
    pipeline_config = eval_pipeline_config(pipeline, batch_size)
    dataset = (_csv_dataset(csv_source, pipeline_config) if csv_source is not None
               else data.make_dataset(data_dir, split, pipeline_config, training=False))
    preds = metrics.predict_on_dataset(net, dataset, decode["method"],
                                       decode["blur_sigma_cells"], keep_heatmaps=want_heatmaps,
                                       progress=progress, total=total, timing=timing,
                                       fh1_method=decode["fh1_method"])

  errors = metrics.per_image_errors(preds["pred_px"], preds["gt_px"], preds["size_px"])
  summary = metrics.report(errors)
  n = summary["n_images"]
  result = dict(summary)
  result.update({
      "model": model_info,
      "data": data_info,
      "decode": decode,
      "batch_size": int(batch_size),
      "inference_ms_per_image": metrics.steady_ms_per_image(timing),
      "inference_ms_per_image_incl_first_batch": (1000.0 * timing["model_s"] / n if n else None),
      "wall_s": timing.get("total_s"),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "versions": {"aop_tf": aop_tf.__version__, "tensorflow": tf.__version__,
                   "python": sys.version.split()[0]},
  })

  os.makedirs(output_dir, exist_ok=True)
  write_csv(os.path.join(output_dir, PER_IMAGE_FILE), per_image_rows(preds, errors))
  indices = overlay_indices(errors, overlays, overlay_order)
  result["n_overlays"] = (write_overlays(os.path.join(output_dir, OVERLAY_DIR), originals(),
                                         preds, errors, indices, progress=progress)
                          if len(indices) else 0)
  model_dir_lib.write_json(os.path.join(output_dir, REPORT_FILE), result)
  if verbose:
    print(metrics.summary_table(summary))
    ms = result["inference_ms_per_image"]
    print(f"inference: {'n/a' if ms is None else f'{ms:.1f}'} ms/image (batch {batch_size}); "
          f"wrote {os.path.join(output_dir, REPORT_FILE)}, {PER_IMAGE_FILE}"
          + (f", {result['n_overlays']} overlays" if result["n_overlays"] else ""), flush=True)
  return result


def _first_checkpoint(model):
  for name in model_dir_lib.CHECKPOINTS:
    if os.path.exists(model_dir_lib.checkpoint_path(model, name)):
      return name
  return None


# ---------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("model", None, "Training directory (config.json + *.keras) or exported "
                      "SavedModel folder (saved_model.pb).")
  flags.DEFINE_string("checkpoint", None, "Training directory: which <name>.keras (e.g. "
                      "best_val_mre, latest, epoch_0050); default the first of "
                      f"{', '.join(model_dir_lib.CHECKPOINTS)} that exists.")
  flags.DEFINE_string("data_dir", None, "Built TFDS dataset (python -m data_prep.build).")
  flags.DEFINE_string("split", "val", "Split of --data_dir.")
  flags.DEFINE_string("images_dir", None, "Folder of images named by --labels_csv.")
  flags.DEFINE_string("labels_csv", None, "IUGC-format CSV (Filename,PS1,PS2,FH1,...).")
  flags.DEFINE_string("output_dir", None, "Where to write; default <model>/eval_<split>.")
  flags.DEFINE_enum("decode_method", None, list(heatmap.DECODE_METHODS),
                    "Heatmap decoder; default config.json's.")
  flags.DEFINE_float("decode_blur_sigma", None, "DARK pre-blur sigma, cells; default "
                     "config.json's.")
  flags.DEFINE_enum("fh1_method", None, list(decode_lib.FH1_METHODS),
                    "FH1 from its heatmap or the head tangent; default config.json's.")
  flags.DEFINE_integer("overlays", 16, "Overlay + heatmap panel PNGs to write (0 none, -1 all).")
  flags.DEFINE_enum("overlay_order", "file", list(OVERLAY_ORDERS),
                    "Which images get overlays: first in file order, or worst first.")
  flags.DEFINE_integer("batch_size", 16, "Images per batch.")
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
           overlay_order=FLAGS.overlay_order, batch_size=FLAGS.batch_size)


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "evaluate")
