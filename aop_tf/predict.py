"""Landmarks, AoP and confidence for image files, from any model `aop_tf.predictor` loads.

  python -m aop_tf.predict --model=saved_models/smoke --inputs='scans/,more/*.png,one.jpg' \
      --output=pred.csv [--format=csv|json] [--overlay_dir=overlays] [--min_confidence=0.3]

`--model` is a SavedModel folder (`saved_models/<name>`, run through its `serve_images` signature),
a `.tflite` file, a training directory or a shipped model's name (`psfhs`). Prediction = a
predictor + image files + writers. Images (PNG, JPEG, BMP, GIF; gray, gray + alpha, RGB, RGBA, CMYK
JPEG, 8 or 16 bits; 1x1 up to `--max_pixels`) are read and decoded by a thread pool, batched by
size, and predicted; points are `(x, y)` in each image's own pixels. Files that cannot be read or
decoded, or that declare more pixels than `--max_pixels` in their header, are reported by name,
counted and skipped: every input is either a row of the output or a failure. A row whose AoP is
undefined (PS1 predicted on PS2 or FH1) has `aop_deg` NaN and `degenerate` 1; rows with a low (or
undefined) heatmap peak or a degenerate AoP are flagged `low_confidence` (below the threshold in
the model's `model_card.json` where it has one: `aop_tf.zoo`). An ensemble also gives
`aop_spread_deg`, the spread of its members' AoPs, and `aop_uncertainty_deg`: `sqrt(spread^2 +
floor^2)` with the floor its card measured on val (the spread alone sees only where the members
disagree), written on overlays as "118.2 +/- 7.4 deg".

`--format=pseudo` writes pseudo-labels for self-training: the IUGC columns `Filename,PS1,PS2,FH1`
(file names relative to the inputs' common folder, printed), the AoP, the lowest peak and the
verdicts of the pseudo-label filters (`aop_tf.pseudo`, thresholds of the model's run spec) with
`kept`; `python -m data_prep.build --source=csv --csv=train:<it> --image_dir=<that folder>` reads
the kept rows back as labels and counts the others as rejected. `--sort=confidence` lists the least
confident first, for an annotator to review; `--select=N` also writes the N images most worth
labelling next (rejected by a filter first, then the lowest peak: where the model is least sure).
"""

import csv
import glob
import json
import math
import os
import re
import sys
import threading
import time
from concurrent import futures

from absl import app
from absl import flags
import cv2
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from aop_tf import LANDMARK_NAMES
from aop_tf import cli
from aop_tf import config as config_lib
from aop_tf import geometry
from aop_tf import predictor as predictor_lib
from aop_tf import pseudo
from aop_tf import zoo
from aop_tf.io import files
from aop_tf.io import images as image_files
from aop_tf.io import points

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Images with more pixels are shrunk to about this many as they are read (`read_image`).
REDUCE_PIXELS = 4_000_000
# Images over REDUCE_PIXELS decoded at once, whatever --num_workers: each holds up to ~250 MB while
# it decodes (a 100-megapixel gray copy, and TensorFlow's strict check of PNGs), so this bounds
# predict's peak memory (README: 1.5 GB).
_LARGE_DECODES = threading.BoundedSemaphore(2)


def input_specs(values):
  """The files, folders and globs named by `--inputs` values.

  A value is taken whole when it names something that exists or a glob that matches (so a file
  name may hold a comma); `@FILE` names a list file, one entry a line (`#` comments); anything
  else is split on commas, the old form (`a.png,scans/,more/*.png`).
  """
  if isinstance(values, str):
    values = [values]
  specs = []
  for value in values:
    if value.startswith("@"):
      text = files.read_bounded(value[1:], files.MAX_TEXT_BYTES, "--inputs list").decode(
          "utf-8", "replace")
      specs.extend(line.strip() for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))
    elif os.path.exists(value) or glob.glob(value, recursive=True):
      specs.append(value)
    else:
      specs.extend(value.split(","))
  return specs


def find_inputs(values):
  """Expands `--inputs` values (`input_specs`): files, folders (recursively, image extensions)
  and globs.

  Returns:
    (sorted unique paths, list of specs that matched nothing).
  """
  specs = input_specs(values)
  paths, unmatched = [], []
  for spec in (s.strip() for s in specs):
    if not spec:
      continue
    if os.path.isdir(spec):
      found = [os.path.join(root, name) for root, _, names in os.walk(spec) for name in names
               if name.lower().endswith(IMAGE_EXTENSIONS)]
    elif os.path.isfile(spec):
      found = [spec]
    else:
      found = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    if not found:
      unmatched.append(spec)
    paths.extend(found)
  return sorted(set(paths)), unmatched


def read_image(path, max_pixels=image_files.MAX_PIXELS, reduce_pixels=REDUCE_PIXELS):
  """Reads and decodes one image file for prediction.

  An image of up to `reduce_pixels` pixels is decoded with `tf.io.decode_image`, like the
  `serving_default` signature, so pixels are identical (16-bit images become 8-bit the same way):
  uint8 [H, W, C], C = 1, 3 or 4 (gray + alpha -> gray). A larger one (up to `max_pixels`, which
  the header is checked against before decoding) is decoded to gray at one byte per pixel
  (`images.decode_gray`) and shrunk to about `reduce_pixels` (area averaging) as it is read, so
  memory stays bounded whatever the files: the model sees a 256x256 version anyway, and the
  landmarks are mapped back to the original pixels.

  Returns:
    `(image, size_px)`: the uint8 [h, w, C] pixels and `(width, height)` of the original.

  Raises:
    ValueError naming the file when it cannot be read or decoded, or is too large.
  """
  encoded = image_files.read_bytes(path)
  if not encoded:
    raise ValueError(f"{path}: empty file")
  image_files.check_size(encoded, str(path), max_pixels)
  declared = image_files.encoded_size(encoded)
  if declared is not None and reduce_pixels and declared[0] * declared[1] > reduce_pixels:
    with _LARGE_DECODES:
      gray = image_files.decode_gray(encoded, str(path))
    del encoded
    height, width = gray.shape
    scale = math.sqrt(reduce_pixels / (width * height))
    shape = (max(1, int(width * scale)), max(1, int(height * scale)))
    return cv2.resize(gray, shape, interpolation=cv2.INTER_AREA)[..., None], (width, height)
  try:
    image = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8,
                               expand_animations=False).numpy()
  except tf.errors.OpError as e:
    message = e.message.splitlines()[0] if e.message else type(e).__name__
    message = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", message)
    raise ValueError(f"{path}: not a decodable PNG/JPEG/BMP/GIF image ({message})") from None
  if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1:
    raise ValueError(f"{path}: decoded to an unusable shape {image.shape}")
  if image.shape[-1] == 2:
    image = image[..., :1]
  return image, (image.shape[1], image.shape[0])


def _records(paths, images, sizes, out, min_confidence):
  """Rows of the outputs; landmarks of reduced images (`read_image`) go back to the original."""
  rows = []
  for i, path in enumerate(paths):
    width, height = sizes[i]
    shown = (images[i].shape[1], images[i].shape[0])
    landmarks, aop = out["landmarks"][i], float(out["aop_deg"][i])
    if shown != (width, height):
      landmarks = geometry.rescale_points(landmarks, shown, (width, height)).numpy()
      aop = float(geometry.aop_deg(landmarks))
    row = {"filename": path, "width": int(width), "height": int(height)}
    # NaN coordinates or peaks (a broken model) must not pass as confident answers.
    for k, name in enumerate(LANDMARK_NAMES):
      row[f"{name}_x"] = float(landmarks[k, 0])
      row[f"{name}_y"] = float(landmarks[k, 1])
    row["aop_deg"] = aop
    row["aop_spread_deg"] = float(out["aop_spread_deg"][i])  # NaN for one model
    row["aop_uncertainty_deg"] = float(out["aop_uncertainty_deg"][i])
    for k, name in enumerate(LANDMARK_NAMES):
      row[f"{name}_confidence"] = float(out["confidence"][i, k])
    degenerate = not math.isfinite(row["aop_deg"])
    finite = bool(np.all(np.isfinite(out["confidence"][i])) and np.all(np.isfinite(landmarks)))
    lowest = float(np.min(out["confidence"][i]))
    row["low_confidence"] = bool(not finite or not lowest >= min_confidence or degenerate)
    row["degenerate"] = degenerate
    rows.append(row)
  return rows


def predict_files(model, paths, batch_size=8, num_workers=4, min_confidence=0.3, progress=True,
                  on_batch=None, max_pixels=image_files.MAX_PIXELS, uncertainty_floor=None):
  """Predicts every file; unreadable ones are skipped and reported, never abort the run.

  Args:
    model: a `predictor.Predictor` (anything with `predict(list of uint8 [H,W,C]) -> dict`).
    paths: image file paths.
    batch_size: images per model call (equal-size runs within a batch go in one call).
    num_workers: reader/decoder threads.
    min_confidence: rows whose lowest peak is below this (or not finite, or whose AoP is
      undefined) get `low_confidence` True.
    progress: show a tqdm bar.
    on_batch: optional `on_batch(paths, images, outputs)` (e.g. overlays); `outputs` are the
      predictor's plus `aop_uncertainty_deg`.
    max_pixels: files whose header declares more pixels are skipped (0: no limit).
    uncertainty_floor: degrees; `aop_uncertainty_deg` = sqrt(spread^2 + floor^2) (the model
      card's `uncertainty.floor_deg`); None: the spread alone.

  Returns:
    (rows: list of dicts in `paths` order, failures: list of (path, reason));
    `len(rows) + len(failures) == len(paths)`.
  """
  def read(path):
    return read_image(path, max_pixels)

  rows, failures, sizes = [], [], {}
  batch_size = max(1, int(batch_size))
  with futures.ThreadPoolExecutor(max(1, int(num_workers))) as pool, \
      tqdm(total=len(paths), unit="img", desc="predict", disable=not progress,
           dynamic_ncols=True, file=sys.stdout) as bar:
    # Decoding runs ahead of the model by two batches.
    pending = [pool.submit(read, p) for p in paths[:2 * batch_size]]
    next_index = len(pending)
    for start in range(0, len(paths), batch_size):
      batch_paths = paths[start:start + batch_size]
      good_paths, images = [], []
      for path in batch_paths:
        job = pending.pop(0)
        if next_index < len(paths):
          pending.append(pool.submit(read, paths[next_index]))
          next_index += 1
        try:
          image, sizes[path] = job.result()
          images.append(image)
          good_paths.append(path)
        except Exception as e:  # pylint: disable=broad-except
          reason = str(e) if isinstance(e, ValueError) else (
              f"{path}: cannot read ({type(e).__name__}: {predictor_lib.first_line(e)})")
          failures.append((path, reason))
          tqdm.write(f"[predict] skipped {reason}", file=sys.stderr)
      if images:
        ok_paths, ok_images, out = _predict_batch(model, good_paths, images, failures)
        if ok_paths:
          # A single model (or a stand-in predictor) has no spread: NaN.
          spreads = out.get("aop_spread_deg", np.full(len(ok_paths), np.nan, np.float32))
          out["aop_spread_deg"] = spreads
          out["aop_uncertainty_deg"] = np.array(
              [zoo.aop_uncertainty_deg(float(s), uncertainty_floor) for s in spreads], np.float32)
          rows.extend(_records(ok_paths, ok_images, [sizes.pop(p) for p in ok_paths], out,
                               min_confidence))
          if on_batch is not None:
            on_batch(ok_paths, ok_images, out)
      bar.update(len(batch_paths))
  return rows, failures


def _predict_batch(model, paths, images, failures):
  """One model call; if it fails, image by image so that only the culprit is skipped."""
  try:
    return paths, images, model.predict(images)
  except Exception:  # pylint: disable=broad-except
    pass
  ok_paths, ok_images, parts = [], [], []
  for path, image in zip(paths, images):
    try:
      parts.append(model.predict([image]))
      ok_paths.append(path)
      ok_images.append(image)
    except Exception as e:  # pylint: disable=broad-except
      reason = (f"{path}: the model failed on this {image.shape} image ({type(e).__name__}: "
                f"{predictor_lib.first_line(e)})")
      failures.append((path, reason))
      tqdm.write(f"[predict] skipped {reason}", file=sys.stderr)
  if not parts:
    return [], [], None
  return ok_paths, ok_images, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def write_csv(path, rows):
  """One row per image: filename, PS1_x, PS1_y, ..., aop_deg, aop_spread_deg,
  aop_uncertainty_deg, PS1_confidence, ..., low_confidence, degenerate (1/0); coordinates in each
  image's pixels, 3 decimals; NaN as nan."""
  columns = (["filename"] + [f"{n}_{a}" for n in LANDMARK_NAMES for a in ("x", "y")] +
             ["aop_deg", "aop_spread_deg", "aop_uncertainty_deg"] +
             [f"{n}_confidence" for n in LANDMARK_NAMES] +
             ["low_confidence", "degenerate"])
  _ensure_parent(path)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else int(v) if isinstance(v, bool)
                           else v) for k, v in row.items()})


def write_json(path, rows, failures, model_path):
  """`{"model", "n_images", "n_failed", "failed": [{filename, reason}], "predictions": rows}`."""
  _ensure_parent(path)
  clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()} for row in rows]
  payload = {"model": model_path, "n_images": len(rows), "n_failed": len(failures),
             "failed": [{"filename": p, "reason": r} for p, r in failures],
             "predictions": clean}
  with open(path, "w") as f:
    json.dump(payload, f, indent=2)
    f.write("\n")


def pseudo_label_rows(rows, semi, root):
  """Rows of a pseudo-label CSV: IUGC columns, AoP, lowest peak, filter verdicts and `kept`.

  Args:
    rows: `predict_files` rows.
    semi: a `config.SemiSpec` (the filter thresholds).
    root: folder the Filename column is relative to.
  """
  if not rows:
    return []
  landmarks = np.array([[[r[f"{n}_x"], r[f"{n}_y"]] for n in LANDMARK_NAMES] for r in rows])
  confidence = np.array([[r[f"{n}_confidence"] for n in LANDMARK_NAMES] for r in rows])
  sizes = np.array([[r["width"], r["height"]] for r in rows], np.float32)
  verdicts = {k: v.numpy() for k, v in pseudo.verdicts(landmarks, np.nan_to_num(confidence, nan=-1),
                                                       sizes, semi).items()}
  out = []
  for i, row in enumerate(rows):
    record = {"Filename": os.path.relpath(os.path.abspath(row["filename"]), root).replace(
        os.sep, "/")}
    for k, name in enumerate(LANDMARK_NAMES):
      point = np.round(landmarks[i, k].astype(float), 3)
      record[name] = points.format_point(point) if np.isfinite(point).all() else ""
    record["AoP"] = row["aop_deg"]
    record["min_confidence"] = float(np.min(confidence[i]))
    record.update({name: int(verdicts[name][i]) for name in (*pseudo.VERDICTS, "kept")})
    out.append(record)
  return out


def write_pseudo_labels(path, records, sort="input"):
  """Writes `pseudo_label_rows` as CSV; `sort="confidence"`: least confident first."""
  if sort == "confidence":
    records = sorted(records, key=lambda r: (r["min_confidence"], r["Filename"]))
  _ensure_parent(path)
  columns = ["Filename", *LANDMARK_NAMES, "AoP", "min_confidence", *pseudo.VERDICTS, "kept"]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    for record in records:
      writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in record.items()})


def select_for_labelling(records, count):
  """The `count` images most worth labelling next: those a filter rejected, then those with the
  lowest peak, i.e. where the model is least sure of itself (uncertainty sampling)."""
  ranked = sorted(records, key=lambda r: (r["kept"], r["min_confidence"], r["Filename"]))
  return [r["Filename"] for r in ranked[:max(0, int(count))]]


def _ensure_parent(path):
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)


def overlay_writer(overlay_dir, common_root=None):
  """`on_batch` callback writing `<overlay_dir>/<relative path>.png` overlays of the predictions,
  the AoP written with its uncertainty (`aop_uncertainty_deg` of `predict_files`) where there is
  one."""
  from aop_tf import visualize

  def name_for(path):
    rel = (os.path.relpath(os.path.abspath(path), common_root) if common_root
           else os.path.basename(path))
    stem = os.path.splitext(rel)[0].replace(os.sep, "__")
    return os.path.join(overlay_dir, stem + ".png")

  def on_batch(paths, images, out):
    plus = out.get("aop_uncertainty_deg", [math.nan] * len(paths))
    for i, (path, image) in enumerate(zip(paths, images)):
      height, width = image.shape[:2]
      # Upscale small images to 512 px, but keep the canvas of a thin strip (e.g. 1x10000) small.
      min_size = int(max(1, min(512, 4096 * min(height, width) / max(height, width))))
      try:
        rgb = visualize.overlay(image, pred=out["landmarks"][i],
                                aop_pred=float(out["aop_deg"][i]),
                                aop_pred_spread=float(plus[i]),
                                title=os.path.basename(path),
                                min_size=min_size)
        visualize.save_png(name_for(path), rgb)
      except (ValueError, OSError, MemoryError, cv2.error) as e:  # The prediction stands.
        tqdm.write(f"[predict] warning: no overlay for {path} ({type(e).__name__}: "
                   f"{predictor_lib.first_line(e)})", file=sys.stderr)

  return on_batch


FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a program, so importing the module defines no global flags."""
  flags.DEFINE_string("model", None, "SavedModel folder (saved_models/<name>), .tflite file or "
                      "training directory.")
  flags.DEFINE_multi_string("inputs", None, "Image files, folders (searched recursively) or "
                            "globs; repeat the flag, give @list.txt (one a line), or separate "
                            "them by commas.")
  flags.DEFINE_string("output", None, "Output file (.csv or .json).")
  flags.DEFINE_enum("format", None, ["csv", "json", "pseudo"], "Output format; default from "
                    "--output's extension (csv otherwise). pseudo: a pseudo-label CSV that "
                    "data_prep.build reads back as labels (the kept rows).")
  flags.DEFINE_enum("sort", "input", ["input", "confidence"], "pseudo: row order; confidence: "
                    "least confident first, for review.")
  flags.DEFINE_integer("select", 0, "pseudo: also write the N images most worth labelling next "
                       "(rejected by a filter first, then the lowest peak) to "
                       "<output>.select.txt.")
  flags.DEFINE_string("overlay_dir", None, "If set, writes an overlay PNG per image here.")
  flags.DEFINE_float("min_confidence", None, "Rows whose lowest heatmap peak is below this are "
                     "flagged low_confidence; default the threshold chosen for the model on val "
                     "(its model_card.json: 0.69 for psfhs, catching half of the > 10 deg AoP "
                     "errors), else 0.3.")
  flags.DEFINE_integer("batch_size", 8, "Images per model call.")
  flags.DEFINE_integer("num_workers", 4, "Threads that read and decode images.")
  flags.DEFINE_integer("num_threads", None, "TFLite: threads per interpreter (default: LiteRT's, "
                       "one).")
  flags.DEFINE_integer("num_interpreters", 0, "TFLite: interpreters running images side by side "
                       "(0: one per CPU core, at most --batch_size).")
  flags.DEFINE_boolean("bfloat16", None, "SavedModel: bfloat16 convolutions (oneDNN auto mixed "
                       "precision: 1.6x images/s, landmarks within 0.2 px on average). Default: "
                       "on where the CPU has AVX512-BF16 or AMX (native_bfloat16), else off.")
  flags.DEFINE_boolean("trust_model", False, "Run a SavedModel even if its graph holds ops no "
                       "aop_tf export holds (file I/O, py_func, ...); refused otherwise.")
  flags.DEFINE_integer("max_pixels", image_files.MAX_PIXELS, "Skip files whose header declares "
                       "more pixels (width * height) than this; 0: no limit.")


def _write_pseudo(rows, paths, model):
  """--format=pseudo: the pseudo-label CSV (and --select's list); says what to run next."""
  root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
  semi = model.spec.semi if model.spec is not None else config_lib.SemiSpec()
  records = pseudo_label_rows(rows, semi, root)
  write_pseudo_labels(FLAGS.output, records, FLAGS.sort)
  kept = sum(r["kept"] for r in records)
  print(f"[predict] pseudo-labels: {kept} of {len(records)} kept by the filters; build a dataset "
        f"with: python -m data_prep.build --source=csv --csv=train:{FLAGS.output} "
        f"--image_dir={root} --out_dir=<dir>")
  if FLAGS.select:
    path = os.path.splitext(FLAGS.output)[0] + ".select.txt"
    with open(path, "w") as f:
      f.write("\n".join(select_for_labelling(records, FLAGS.select)) + "\n")
    print(f"[predict] the {min(FLAGS.select, len(records))} images to label next: {path}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for name in ("model", "inputs", "output"):
    if not FLAGS[name].value:
      raise app.UsageError(f"--{name} is required.")
  fmt = FLAGS.format or ("json" if FLAGS.output.lower().endswith(".json") else "csv")
  paths, unmatched = find_inputs(FLAGS.inputs)
  if not paths:
    raise FileNotFoundError(f"--inputs {','.join(FLAGS.inputs)}: no image files there "
                            f"({', '.join(IMAGE_EXTENSIONS)} in folders; files and globs as "
                            "given); check the paths.")
  for spec in unmatched:
    print(f"[predict] warning: --inputs entry {spec!r} matched no image file", file=sys.stderr)
  interpreters = FLAGS.num_interpreters or min(os.cpu_count() or 1, max(1, FLAGS.batch_size))
  bfloat16 = predictor_lib.native_bfloat16() if FLAGS.bfloat16 is None else FLAGS.bfloat16
  model = predictor_lib.load(FLAGS.model, bfloat16=bfloat16, num_threads=FLAGS.num_threads,
                             num_interpreters=interpreters, trust_model=FLAGS.trust_model)
  min_confidence = (zoo.flag_min_confidence(FLAGS.model) if FLAGS.min_confidence is None
                    else FLAGS.min_confidence)
  uncertainty_floor = zoo.uncertainty_floor_deg(FLAGS.model)
  on_batch = None
  if FLAGS.overlay_dir:
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    on_batch = overlay_writer(FLAGS.overlay_dir, root)
  start = time.perf_counter()
  rows, failures = predict_files(model, paths, FLAGS.batch_size, FLAGS.num_workers,
                                 min_confidence, on_batch=on_batch,
                                 max_pixels=FLAGS.max_pixels, uncertainty_floor=uncertainty_floor)
  seconds = time.perf_counter() - start
  if fmt == "json":
    write_json(FLAGS.output, rows, failures, FLAGS.model)
  elif fmt == "pseudo":
    _write_pseudo(rows, paths, model)
  else:
    write_csv(FLAGS.output, rows)
  n_low = sum(row["low_confidence"] for row in rows)
  n_degenerate = sum(row["degenerate"] for row in rows)
  print(f"[predict] {len(rows)} images -> {FLAGS.output} in {seconds:.1f} s "
        f"({len(rows) / max(seconds, 1e-9):.1f} img/s); {n_low} low confidence "
        f"(< {min_confidence}), {n_degenerate} with undefined AoP; {len(failures)} skipped")
  for path, reason in failures:
    print(f"[predict]   skipped: {reason}", file=sys.stderr)
  if FLAGS.overlay_dir:
    print(f"[predict] overlays in {os.path.abspath(FLAGS.overlay_dir)}")
  return 0 if rows else 1


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "predict")
