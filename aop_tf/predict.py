"""Landmarks, AoP and confidence for image files, from an export (SavedModel or TFLite).

  python -m aop_tf.predict --model=saved_models/smoke --inputs='scans/,more/*.png,one.jpg' \
      --output=pred.csv [--format=csv|json] [--overlay_dir=overlays] [--min_confidence=0.3]

`--model` is a SavedModel folder (`saved_models/<name>`, run through its `serve_images`
signature) or a `.tflite` file. Images (PNG, JPEG, BMP, GIF; gray, gray + alpha, RGB, RGBA, CMYK
JPEG, 8 or 16 bits; 1x1 up to `--max_pixels`) are read and decoded by a thread pool, batched by
size, and predicted; points are `(x, y)` in each image's own pixels. Files that cannot be read or
decoded, or that declare more pixels than `--max_pixels` in their header, are reported by name,
counted and skipped: every input is either a row of the output or a failure. A row whose AoP is
undefined (PS1 predicted on PS2 or FH1) has `aop_deg` NaN and `degenerate` 1; rows with a low (or
undefined) heatmap peak or a degenerate AoP are flagged `low_confidence`.
"""

import contextlib
import csv
import glob
import json
import math
import os
import re
import sys
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
from aop_tf import serving
from data_prep import images as image_files

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SAVED_MODEL_FILE = "saved_model.pb"
TFLITE_FILE = "model.tflite"


def as_model_input(image, where="image"):
  """Checks one image for the exported models: uint8 [H, W, C] (C = 1..4, H, W >= 1).

  A 2-D array gains a channel axis. Any other pixel type is refused rather than cast (a uint16 or
  float array cast to uint8 would silently become garbage).

  Raises:
    ValueError naming `where` and what to do.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"{where}: pixel type {image.dtype}; the model takes uint8 images (scale "
                     "16-bit by 255/65535 and float 0..1 by 255, then round)")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or not 1 <= image.shape[2] <= 4 or min(image.shape[:2]) < 1:
    raise ValueError(f"{where}: image shape {image.shape}; expected [H, W, C] with H, W >= 1 "
                     "and C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA)")
  return image


def _empty_outputs(heatmap_shape):
  """The outputs of an empty batch: arrays with 0 rows (`heatmap_shape`: [B, R, R, 3])."""
  return {"landmarks": np.zeros((0, 3, 2), np.float32), "aop_deg": np.zeros((0,), np.float32),
          "confidence": np.zeros((0, 3), np.float32),
          "heatmaps": np.zeros((0, *[int(d or 0) for d in list(heatmap_shape)[1:]]), np.float32)}


class _LiteRunner:
  """One LiteRT interpreter of a `model.tflite`; used by one thread at a time."""

  def __init__(self, path, num_threads=None):
    from ai_edge_litert.interpreter import Interpreter
    self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
    runner = self._interpreter.get_signature_runner(serving.SERVING_DEFAULT)
    self._input = runner.get_input_details()["images"]["index"]
    outputs = runner.get_output_details()
    self._outputs = {k: v["index"] for k, v in outputs.items()}
    self.heatmap_shape = outputs.get("heatmaps", {}).get("shape", [1, 0, 0, 3])
    missing = set(serving.OUTPUT_KEYS) - set(self._outputs)
    if missing:
      raise ValueError(f"{path} lacks outputs {sorted(missing)}; re-export it with "
                       "`python -m aop_tf.export`.")
    self._shape = None

  def run(self, image):
    image = np.ascontiguousarray(as_model_input(image))[None]
    if image.shape != self._shape:  # Re-plan only when the image size changes.
      self._interpreter.resize_tensor_input(self._input, image.shape, strict=True)
      self._interpreter.allocate_tensors()
      self._shape = image.shape
    self._interpreter.set_tensor(self._input, image)
    self._interpreter.invoke()
    return {k: self._interpreter.get_tensor(i).copy() for k, i in self._outputs.items()}


class TFLiteModel:
  """Runs `model.tflite` (uint8 [1, H, W, C] in) with LiteRT, one image per interpreter call.

  Args:
    path: the `.tflite` file.
    num_threads: threads of each interpreter (None: LiteRT's default, one).
    num_interpreters: interpreters that run different images of one `predict` call side by side
      (a thread each; LiteRT releases the GIL while it runs). On a multi-core CPU, k interpreters
      of one thread give more images/s than one interpreter of k threads (benchmarks/speed.py).
  """

  def __init__(self, path, num_threads=None, num_interpreters=1):
    self.path = path
    count = max(1, int(num_interpreters))
    self._runners = [_LiteRunner(path, num_threads) for _ in range(count)]
    self._heatmap_shape = self._runners[0].heatmap_shape
    self._pool = futures.ThreadPoolExecutor(count, "tflite") if count > 1 else None

  def predict(self, images):
    """list of uint8 [H, W, C] -> dict of numpy arrays stacked over the list (`OUTPUT_KEYS`)."""
    if not len(images):
      return _empty_outputs(self._heatmap_shape)
    if self._pool is None or len(images) == 1:
      parts = [self._runners[0].run(image) for image in images]
    else:
      # Contiguous shares, so that each interpreter keeps its planned size on same-size runs.
      shares = np.array_split(np.arange(len(images)), min(len(self._runners), len(images)))
      jobs = [self._pool.submit(lambda r, idx: [r.run(images[i]) for i in idx], runner, share)
              for runner, share in zip(self._runners, shares)]
      parts = [part for job in jobs for part in job.result()]
    return {k: np.concatenate([p[k] for p in parts]) for k in serving.OUTPUT_KEYS}


def native_bfloat16(cpuinfo="/proc/cpuinfo"):
  """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 in its flags; Linux).

  Elsewhere oneDNN would emulate bfloat16, slower than float32, so `--bfloat16` defaults to this.
  """
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith("flags"):
          return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[-1].split()))
  except OSError:
    pass
  return False


@contextlib.contextmanager
def bfloat16_graphs(enabled=True):
  """oneDNN bfloat16 auto mixed precision for the TF functions called inside (when `enabled`).

  The setting is part of each call's configuration, so it holds for these calls only (not
  thread-safe: calls made meanwhile by other threads get it too)."""
  if not enabled:
    yield
    return
  key = "auto_mixed_precision_onednn_bfloat16"
  before = tf.config.optimizer.get_experimental_options().get(key, False)
  tf.config.optimizer.set_experimental_options({key: True})
  try:
    yield
  finally:
    tf.config.optimizer.set_experimental_options({key: before})


class SavedModelModel:
  """Runs a SavedModel's `serve_images` signature, one call per run of equal-size images.

  Args:
    path: the SavedModel folder.
    bfloat16: let oneDNN run this model's convolutions in bfloat16 (auto mixed precision):
      ~1.5-2x images/s on CPUs with AVX512-BF16 or AMX, landmarks within a fraction of a pixel
      (benchmarks/speed.py); TF leaves the graph float32 on other CPUs.
  """

  def __init__(self, path, bfloat16=False):
    self.path = path
    self.bfloat16 = bool(bfloat16)
    try:
      self._loaded = tf.saved_model.load(path)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path}: cannot load the SavedModel ({type(e).__name__}: "
                       f"{_first_line(e)}); re-export it with `python -m aop_tf.export`.") from None
    if serving.SERVE_IMAGES not in self._loaded.signatures:
      raise ValueError(f"{path} has no {serving.SERVE_IMAGES!r} signature (has "
                       f"{sorted(self._loaded.signatures)}); export it with "
                       "`python -m aop_tf.export`.")
    self._fn = self._loaded.signatures[serving.SERVE_IMAGES]

  def predict(self, images):
    """list of uint8 [H, W, C] -> dict of numpy arrays stacked over the list (`OUTPUT_KEYS`)."""
    images = [as_model_input(image, f"image {i}") for i, image in enumerate(images)]
    if not images:
      return _empty_outputs(self._fn.structured_outputs["heatmaps"].shape)
    parts = []
    start = 0
    while start < len(images):
      end = start + 1
      while end < len(images) and images[end].shape == images[start].shape:
        end += 1
      with bfloat16_graphs(self.bfloat16):
        out = self._fn(images=tf.constant(np.stack(images[start:end])))
      parts.append({k: out[k].numpy() for k in serving.OUTPUT_KEYS})
      start = end
    return {k: np.concatenate([p[k] for p in parts]) for k in serving.OUTPUT_KEYS}


def _first_line(error):
  text = getattr(error, "message", None) or str(error)
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def load_exported(path, num_threads=None, num_interpreters=1, bfloat16=False):
  """A SavedModel folder, an export folder (SavedModel preferred) or a `.tflite` file -> model.

  `num_threads` and `num_interpreters` are for TFLite (see `TFLiteModel`), `bfloat16` for a
  SavedModel (see `SavedModelModel`).
  """
  if os.path.isfile(path) and path.endswith(".tflite"):
    return TFLiteModel(path, num_threads, num_interpreters)
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, SAVED_MODEL_FILE)):
      return SavedModelModel(path, bfloat16)
    if os.path.exists(os.path.join(path, TFLITE_FILE)):
      return TFLiteModel(os.path.join(path, TFLITE_FILE), num_threads, num_interpreters)
  raise FileNotFoundError(f"--model={path} is neither a SavedModel folder (with {SAVED_MODEL_FILE})"
                          " nor a .tflite file; create one with `python -m aop_tf.export`.")


def find_inputs(specs):
  """Expands comma-separated files, folders (recursively, image extensions) and globs.

  Returns:
    (sorted unique paths, list of specs that matched nothing).
  """
  if isinstance(specs, str):
    specs = [s for s in specs.split(",")]
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


def read_image(path, max_pixels=image_files.MAX_PIXELS):
  """Reads and decodes one image file -> uint8 [H, W, C], C = 1, 3 or 4 (gray+alpha -> gray).

  Uses `tf.io.decode_image` like the `serving_default` signature, so pixels are identical
  (16-bit images become 8-bit the same way). The size the header declares is checked against
  `max_pixels` before decoding.

  Raises:
    ValueError naming the file when it cannot be read or decoded, or is too large.
  """
  encoded = image_files.read_bytes(path)
  if not encoded:
    raise ValueError(f"{path}: empty file")
  image_files.check_size(encoded, str(path), max_pixels)
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
  return image


def _records(paths, out, min_confidence):
  rows = []
  for i, path in enumerate(paths):
    row = {"filename": path}
    # NaN coordinates or peaks (a broken model) must not pass as confident answers.
    for k, name in enumerate(LANDMARK_NAMES):
      row[f"{name}_x"] = float(out["landmarks"][i, k, 0])
      row[f"{name}_y"] = float(out["landmarks"][i, k, 1])
    row["aop_deg"] = float(out["aop_deg"][i])
    for k, name in enumerate(LANDMARK_NAMES):
      row[f"{name}_confidence"] = float(out["confidence"][i, k])
    degenerate = not math.isfinite(row["aop_deg"])
    finite = bool(np.all(np.isfinite(out["confidence"][i])) and
                  np.all(np.isfinite(out["landmarks"][i])))
    lowest = float(np.min(out["confidence"][i]))
    row["low_confidence"] = bool(not finite or not lowest >= min_confidence or degenerate)
    row["degenerate"] = degenerate
    rows.append(row)
  return rows


def predict_files(model, paths, batch_size=8, num_workers=4, min_confidence=0.3, progress=True,
                  on_batch=None, max_pixels=image_files.MAX_PIXELS):
  """Predicts every file; unreadable ones are skipped and reported, never abort the run.

  Args:
    model: `load_exported` result (anything with `predict(list of uint8 [H,W,C]) -> dict`).
    paths: image file paths.
    batch_size: images per model call (equal-size runs within a batch go in one call).
    num_workers: reader/decoder threads.
    min_confidence: rows whose lowest peak is below this (or not finite, or whose AoP is
      undefined) get `low_confidence` True.
    progress: show a tqdm bar.
    on_batch: optional `on_batch(paths, images, outputs)` (e.g. overlays).
    max_pixels: files whose header declares more pixels are skipped (0: no limit).

  Returns:
    (rows: list of dicts in `paths` order, failures: list of (path, reason));
    `len(rows) + len(failures) == len(paths)`.
  """
  def read(path):
    return read_image(path, max_pixels)

  rows, failures = [], []
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
          images.append(job.result())
          good_paths.append(path)
        except Exception as e:  # pylint: disable=broad-except
          reason = str(e) if isinstance(e, ValueError) else (
              f"{path}: cannot read ({type(e).__name__}: {_first_line(e)})")
          failures.append((path, reason))
          tqdm.write(f"[predict] skipped {reason}", file=sys.stderr)
      if images:
        ok_paths, ok_images, out = _predict_batch(model, good_paths, images, failures)
        if ok_paths:
          rows.extend(_records(ok_paths, out, min_confidence))
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
                f"{_first_line(e)})")
      failures.append((path, reason))
      tqdm.write(f"[predict] skipped {reason}", file=sys.stderr)
  if not parts:
    return [], [], None
  return ok_paths, ok_images, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def write_csv(path, rows):
  """One row per image: filename, PS1_x, PS1_y, ..., aop_deg, PS1_confidence, ...,
  low_confidence, degenerate (1/0); coordinates in each image's pixels, 3 decimals; NaN as nan."""
  columns = (["filename"] + [f"{n}_{a}" for n in LANDMARK_NAMES for a in ("x", "y")] +
             ["aop_deg"] + [f"{n}_confidence" for n in LANDMARK_NAMES] +
             ["low_confidence", "degenerate"])
  _ensure_parent(path)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
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


def _ensure_parent(path):
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)


def overlay_writer(overlay_dir, common_root=None):
  """`on_batch` callback writing `<overlay_dir>/<relative path>.png` overlays of the predictions."""
  from aop_tf import visualize

  def name_for(path):
    rel = (os.path.relpath(os.path.abspath(path), common_root) if common_root
           else os.path.basename(path))
    stem = os.path.splitext(rel)[0].replace(os.sep, "__")
    return os.path.join(overlay_dir, stem + ".png")

  def on_batch(paths, images, out):
    for i, (path, image) in enumerate(zip(paths, images)):
      height, width = image.shape[:2]
      # Upscale small images to 512 px, but keep the canvas of a thin strip (e.g. 1x10000) small.
      min_size = int(max(1, min(512, 4096 * min(height, width) / max(height, width))))
      try:
        rgb = visualize.overlay(image, pred=out["landmarks"][i],
                                aop_pred=float(out["aop_deg"][i]), title=os.path.basename(path),
                                min_size=min_size)
        visualize.save_png(name_for(path), rgb)
      except (ValueError, OSError, MemoryError, cv2.error) as e:  # The prediction stands.
        tqdm.write(f"[predict] warning: no overlay for {path} ({type(e).__name__}: "
                   f"{_first_line(e)})", file=sys.stderr)

  return on_batch


FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a program, so importing the module defines no global flags."""
  flags.DEFINE_string("model", None, "SavedModel folder (saved_models/<name>) or .tflite file.")
  flags.DEFINE_list("inputs", None, "Image files, folders (searched recursively) or globs, "
                    "comma separated.")
  flags.DEFINE_string("output", None, "Output file (.csv or .json).")
  flags.DEFINE_enum("format", None, ["csv", "json"], "Output format; default from --output's "
                    "extension (csv otherwise).")
  flags.DEFINE_string("overlay_dir", None, "If set, writes an overlay PNG per image here.")
  flags.DEFINE_float("min_confidence", 0.3, "Rows whose lowest heatmap peak is below this are "
                     "flagged low_confidence.")
  flags.DEFINE_integer("batch_size", 8, "Images per model call.")
  flags.DEFINE_integer("num_workers", 4, "Threads that read and decode images.")
  flags.DEFINE_integer("num_threads", None, "TFLite: threads per interpreter (default: LiteRT's, "
                       "one).")
  flags.DEFINE_integer("num_interpreters", 0, "TFLite: interpreters running images side by side "
                       "(0: one per CPU core, at most --batch_size).")
  flags.DEFINE_boolean("bfloat16", None, "SavedModel: bfloat16 convolutions (oneDNN auto mixed "
                       "precision: 1.6x images/s, landmarks within 0.2 px on average). Default: "
                       "on where the CPU has AVX512-BF16 or AMX (native_bfloat16), else off.")
  flags.DEFINE_integer("max_pixels", image_files.MAX_PIXELS, "Skip files whose header declares "
                       "more pixels (width * height) than this; 0: no limit.")


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
  bfloat16 = native_bfloat16() if FLAGS.bfloat16 is None else FLAGS.bfloat16
  model = load_exported(FLAGS.model, FLAGS.num_threads, interpreters, bfloat16)
  on_batch = None
  if FLAGS.overlay_dir:
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    on_batch = overlay_writer(FLAGS.overlay_dir, root)
  start = time.perf_counter()
  rows, failures = predict_files(model, paths, FLAGS.batch_size, FLAGS.num_workers,
                                 FLAGS.min_confidence, on_batch=on_batch,
                                 max_pixels=FLAGS.max_pixels)
  seconds = time.perf_counter() - start
  if fmt == "json":
    write_json(FLAGS.output, rows, failures, FLAGS.model)
  else:
    write_csv(FLAGS.output, rows)
  n_low = sum(row["low_confidence"] for row in rows)
  n_degenerate = sum(row["degenerate"] for row in rows)
  print(f"[predict] {len(rows)} images -> {FLAGS.output} in {seconds:.1f} s "
        f"({len(rows) / max(seconds, 1e-9):.1f} img/s); {n_low} low confidence "
        f"(< {FLAGS.min_confidence}), {n_degenerate} with undefined AoP; {len(failures)} skipped")
  for path, reason in failures:
    print(f"[predict]   skipped: {reason}", file=sys.stderr)
  if FLAGS.overlay_dir:
    print(f"[predict] overlays in {os.path.abspath(FLAGS.overlay_dir)}")
  return 0 if rows else 1


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "predict")
