"""Landmarks, AoP and confidence for image files, from any model `aop_tf.predictor` loads.

  python -m aop_tf.predict --model=saved_models/smoke --inputs='scans/,more/*.png,one.jpg' \
      --output=pred.csv [--format=csv|json] [--overlay_dir=overlays] [--min_confidence=0.3]

`--model` is a SavedModel folder (`saved_models/<name>`, run through its `serve_images` signature),
a `.tflite` file, a training directory or a shipped model's name (`psfhs`); a `.tflite` file or a
shipped model runs without TensorFlow (LiteRT), the others need it. Prediction = a
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

import collections
import math
import os
import queue
import sys
import threading
import time

from absl import app
from absl import flags
import cv2
import numpy as np
from tqdm import tqdm

from aop_tf import LANDMARK_NAMES
from aop_tf import cli
from aop_tf import config as config_lib
from aop_tf import geometry
from aop_tf import predictor as predictor_lib
from aop_tf import pseudo
from aop_tf import quality
from aop_tf import results
from aop_tf import review
from aop_tf import trace
from aop_tf import zoo
from aop_tf.io import frames as frames_lib
from aop_tf.io import images as image_files
from aop_tf.io import inputs as inputs_lib
from aop_tf.io import parallel
from aop_tf.io import points

# Frames decoded ahead of the model (a clip's decoder runs in its own thread meanwhile).
_PREFETCH_FRAMES = 16


class _Progress:
  """The frames bar: one unit per still image or clip frame; a clip adds its frames on opening."""

  def __init__(self, total, enabled):
    self.bar = tqdm(total=total, unit="frame", desc="predict", disable=not enabled,
                    dynamic_ncols=True, file=sys.stdout)

  def grow(self, count):
    self.bar.total += max(0, count)
    self.bar.refresh()


def _still(path, max_pixels):
  """A still image's only frame, or the FrameError (or other exception) that refused it."""
  try:
    with frames_lib.StillSource(path, max_pixels) as source:
      return source.frame(0)
  except Exception as e:  # pylint: disable=broad-except
    return e


def _reason(path, error):
  """One line for a failed input (ValueError messages already name the file)."""
  if isinstance(error, ValueError):
    return str(error)
  return f"{path}: cannot read ({type(error).__name__}: {predictor_lib.first_line(error)})"


def _clip_frames(path, selection, max_pixels, failures, progress):
  """Frames of one clip (or DICOM), decoded as asked for; a failure mid-way keeps those before."""
  done = 0
  try:
    with frames_lib.open_source(path, max_pixels) as source:
      progress.grow(selection.count(source.info.n_frames) - 1)
      for frame in source.frames(selection):
        done += 1
        yield frame
  except Exception as e:  # pylint: disable=broad-except
    kept = f"; stopped there, the {done} frames before were predicted and kept" if done else ""
    failures.append((path, _reason(path, e) + kept))
    progress.bar.update(1)


def frame_stream(paths, selection, max_pixels, workers, failures, progress):
  """Every selected frame of `paths`, in order: still images decoded on `workers` threads, clips
  frame by frame. Unreadable inputs go to `failures` as `(path, reason)`."""
  i = 0
  while i < len(paths):
    j = i
    while j < len(paths) and frames_lib.kind_of(paths[j]) == "image":
      j += 1
    if j > i:
      stills = parallel.ordered_map(lambda p: _still(p, max_pixels), paths[i:j], workers,
                                    window=2 * max(1, workers))
      for path, got in zip(paths[i:j], stills):
        if isinstance(got, Exception):
          failures.append((path, _reason(path, got)))
          progress.bar.update(1)
        else:
          yield got
      i = j
      continue
    yield from _clip_frames(paths[i], selection, max_pixels, failures, progress)
    i += 1


def _prefetched(iterator, size=_PREFETCH_FRAMES):
  """`iterator`'s items, produced by a background thread up to `size` ahead."""
  items = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for item in iterator:
        while not stop.is_set():
          try:
            items.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
    except BaseException as e:  # pylint: disable=broad-except
      items.put(e)
    items.put(done)

  thread = threading.Thread(target=produce, name="aop_frames", daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def _batches(stream, batch_size):
  batch = []
  for frame in stream:
    batch.append(frame)
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch


def _rows(batch, out, min_confidence, uncertainty_floor, quality_model=None):
  """Rows of one predicted batch; landmarks of reduced images go back to the stored pixels."""
  rows = []
  fitted = quality.per_frame(quality_model, out, [f.image.shape[1::-1] for f in batch])
  for i, frame in enumerate(batch):
    shown = (frame.image.shape[1], frame.image.shape[0])
    landmarks, aop = out["landmarks"][i], float(out["aop_deg"][i])
    if shown != tuple(frame.size_px):
      landmarks = geometry.rescale_points(landmarks, shown, frame.size_px)
      aop = float(geometry.aop_deg(landmarks))
    spread = float(out["aop_spread_deg"][i]) if "aop_spread_deg" in out else math.nan
    rows.append(results.prediction_row(frame, landmarks, aop, out["confidence"][i], spread,
                                       min_confidence, uncertainty_floor, fitted[i]))
  return rows


def predict_files(model, paths, batch_size=8, num_workers=4, min_confidence=0.3, progress=True,
                  on_batch=None, max_pixels=image_files.MAX_PIXELS, uncertainty_floor=None,
                  selection=frames_lib.ALL_FRAMES, quality_fit=None):
  """Predicts every frame of every input; unreadable ones are skipped and reported, never abort
  the run.

  Args:
    model: a `predictor.Predictor` (anything with `predict(list of uint8 [H,W,C]) -> dict`).
    paths: inputs (`inputs.find_inputs`): still images, DICOMs, videos, folders of frames.
    batch_size: frames per model call.
    num_workers: threads decoding still images.
    min_confidence: rows whose lowest peak is below this (or not finite, or whose AoP is
      undefined) get `low_confidence` True and a `flag_reason`.
    progress: show a progress bar (frames).
    on_batch: optional `on_batch(frames, outputs)` (e.g. overlays); `outputs` are the
      predictor's, in the pixels of each `frame.image`.
    max_pixels: still images whose header declares more pixels are skipped (0: no limit).
    uncertainty_floor: degrees; `aop_uncertainty_deg` = sqrt(spread^2 + floor^2) (the model
      card's `uncertainty.floor_deg`); None: the spread alone.
    selection: which frames of clips (`frames.parse_selection`).
    quality_fit: the model card's fitted quality model (`zoo.quality_fit`), or None: rows then
      get the expected AoP error and the 90 % interval, and the flag fires on that score.

  Returns:
    `(rows, failures)`: `results.prediction_row` dicts in input order, and `(path, reason)` of
    every input (or clip tail) that could not be read; a still image is a row or a failure.
  """
  rows, failures = [], []
  model_quality = quality.model_of(quality_fit)
  bar = _Progress(len(paths), progress)
  stream = _prefetched(frame_stream(paths, selection, max_pixels, num_workers, failures, bar))
  with bar.bar:
    for batch in _batches(stream, max(1, int(batch_size))):
      ok, out = _predict_batch(model, batch, failures)
      if ok:
        new = _rows(ok, out, min_confidence, uncertainty_floor, model_quality)
        rows.extend(new)
        if on_batch is not None:
          out["aop_interval_deg"] = np.array([[r["aop_low_deg"], r["aop_high_deg"]] for r in new])
          on_batch(ok, out)
      bar.bar.update(len(batch))
  return rows, failures


def _predict_batch(model, batch, failures):
  """One model call; if it fails, frame by frame so that only the culprit is skipped."""
  try:
    return batch, model.predict([frame.image for frame in batch])
  except Exception:  # pylint: disable=broad-except
    pass
  ok, parts = [], []
  for frame in batch:
    try:
      parts.append(model.predict([frame.image]))
      ok.append(frame)
    except Exception as e:  # pylint: disable=broad-except
      reason = (f"{frame.name}: the model failed on this {frame.image.shape} image "
                f"({type(e).__name__}: {predictor_lib.first_line(e)})")
      failures.append((frame.name, reason))
      tqdm.write(f"[predict] skipped {reason}", file=sys.stderr)
  if not parts:
    return [], None
  return ok, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def write_outputs(path, fmt, rows, failures, model_path):
  """CSV (`results.PREDICTION_COLUMNS`) or JSON (`{"model", "n_images", "n_failed", "failed":
  [{filename, reason}], "predictions": rows}`), written atomically."""
  if fmt == "json":
    results.write_json(path, {"model": model_path, "n_images": len(rows),
                              "n_failed": len(failures),
                              "failed": [{"filename": p, "reason": r} for p, r in failures],
                              "predictions": rows})
  else:
    results.write_csv(path, rows)


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
  verdicts = pseudo.verdicts(landmarks, np.nan_to_num(confidence, nan=-1), sizes, semi)
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
  """Writes `pseudo_label_rows` as CSV atomically; `sort="confidence"`: least confident first."""
  if sort == "confidence":
    records = sorted(records, key=lambda r: (r["min_confidence"], r["Filename"]))
  columns = ["Filename", *LANDMARK_NAMES, "AoP", "min_confidence", *pseudo.VERDICTS, "kept"]
  results.write_csv(path, records, columns)


def select_for_labelling(records, count):
  """The `count` images most worth labelling next: those a filter rejected, then those with the
  lowest peak, i.e. where the model is least sure of itself (uncertainty sampling)."""
  return [r["Filename"] for r in review.rank_for_review(records)[:max(0, int(count))]]


def output_stem(name, common_root=None):
  """A file stem for an input or frame name: its path under `common_root` with folders joined by
  `__` and a clip's `#frame` as `_fNNNNN` (`scans/a.png` -> `scans__a`, `c.mp4#7` -> `c_f00007`)."""
  path, index = frames_lib.split_frame_name(name)
  rel = (os.path.relpath(os.path.abspath(path), common_root) if common_root
         else os.path.basename(path))
  stem = os.path.splitext(rel)[0].replace(os.sep, "__")
  return stem if index is None else f"{stem}_f{index:05d}"


def overlay_writer(overlay_dir, common_root=None, uncertainty_floor=None):
  """`on_batch` callback writing `<overlay_dir>/<output_stem>.png` overlays of the predictions,
  the AoP written with its uncertainty (`results.aop_uncertainty_deg`) where there is one."""
  from aop_tf import visualize  # pylint: disable=import-outside-toplevel

  def on_batch(batch, out):
    spread = out.get("aop_spread_deg", np.full(len(batch), np.nan))
    interval = out.get("aop_interval_deg", np.full((len(batch), 2), np.nan))
    for i, frame in enumerate(batch):
      height, width = frame.image.shape[:2]
      # Upscale small images to 512 px, but keep the canvas of a thin strip (e.g. 1x10000) small.
      min_size = int(max(1, min(512, 4096 * min(height, width) / max(height, width))))
      title, plus = os.path.basename(frame.name), results.aop_uncertainty_deg(
          spread[i], uncertainty_floor)
      if np.all(np.isfinite(interval[i])):  # the card's 90 % interval replaces the '+/-'
        title += "  AoP " + quality.describe_interval(float(out["aop_deg"][i]), *interval[i])
        plus = None
      try:
        rgb = visualize.overlay(
            frame.image, pred=out["landmarks"][i], aop_pred=float(out["aop_deg"][i]),
            aop_pred_spread=plus, title=title, min_size=min_size)
        visualize.save_png(os.path.join(overlay_dir, output_stem(frame.name, common_root) +
                                        ".png"), rgb)
      except (ValueError, OSError, MemoryError, cv2.error) as e:  # The prediction stands.
        tqdm.write(f"[predict] warning: no overlay for {frame.name} ({type(e).__name__}: "
                   f"{predictor_lib.first_line(e)})", file=sys.stderr)

  return on_batch


FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a program, so importing the module defines no global flags."""
  flags.DEFINE_string("model", None, "SavedModel folder (saved_models/<name>), .tflite file or "
                      "training directory.")
  flags.DEFINE_multi_string("inputs", None, "Images, DICOMs, videos (mp4/avi/mov), folders "
                            "(searched recursively) or globs; repeat the flag, give @list.txt "
                            "(one a line), or separate them by commas.")
  flags.DEFINE_boolean("clip_dirs", False, "A folder of numbered still images is one clip "
                       "(frames in natural order) instead of separate images.")
  flags.DEFINE_string("frames", "all", "Frames of clips and multi-frame DICOMs: all, every:N or "
                      "FIRST:LAST (0-based, inclusive).")
  flags.DEFINE_string("clip_summary_dir", None, "Per clip: the AoP trace JSON, its plot and a "
                      "contact sheet of key frames (default: <output>_clips/ when a clip is "
                      "among the inputs).")
  flags.DEFINE_integer("smooth_frames", trace.DEFAULT_WINDOW, "Clip traces: window of the "
                       "robust smoother (a running median over confident frames), frames.")
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


def _find(values, clip_dirs):
  paths, unmatched = inputs_lib.find_inputs(values, clip_dirs)
  if not paths:
    raise FileNotFoundError(f"--inputs {','.join(values)}: no images, DICOMs or videos there "
                            f"({', '.join(inputs_lib.MEDIA_SUFFIXES)} in folders; files and "
                            "globs as given); check the paths.")
  for spec in unmatched:
    print(f"[predict] warning: --inputs entry {spec!r} matched no input", file=sys.stderr)
  return paths


def _summarise_clips(rows, paths):
  """--clip_summary_dir: a trace JSON, plot and contact sheet per clip among the rows."""
  clips = collections.OrderedDict()
  for row in rows:
    if row["frame"] != "":
      clips.setdefault(row["source"], []).append(row)
  if not clips:
    return
  folder = FLAGS.clip_summary_dir or os.path.splitext(FLAGS.output)[0] + "_clips"
  root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
  for source, clip_rows in clips.items():
    stem = os.path.join(folder, output_stem(source, root))
    summary = trace.write_summary(stem, source, clip_rows, FLAGS.smooth_frames, FLAGS.max_pixels)
    print(f"[predict] clip {source}: {summary['n_frames']} frames, AoP median "
          f"{summary['aop_deg']['median']:.1f} deg (min {summary['aop_deg']['min']:.1f}, max "
          f"{summary['aop_deg']['max']:.1f}), {100 * summary['low_confidence_share']:.0f} % "
          f"low confidence -> {stem}.json, {stem}_trace.png, {stem}_frames.png")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for name in ("model", "inputs", "output"):
    if not FLAGS[name].value:
      raise app.UsageError(f"--{name} is required.")
  fmt = FLAGS.format or ("json" if FLAGS.output.lower().endswith(".json") else "csv")
  try:
    selection = frames_lib.parse_selection(FLAGS.frames)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  paths = _find(FLAGS.inputs, FLAGS.clip_dirs)
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
    on_batch = overlay_writer(FLAGS.overlay_dir, root, uncertainty_floor)
  fitted = zoo.quality_fit(FLAGS.model)
  rule = (f"expected AoP error >= {fitted['flag_score_deg']:.1f} deg" if fitted else
          f"a heatmap peak < {min_confidence}")
  start = time.perf_counter()
  rows, failures = predict_files(model, paths, FLAGS.batch_size, FLAGS.num_workers,
                                 min_confidence, on_batch=on_batch, max_pixels=FLAGS.max_pixels,
                                 uncertainty_floor=uncertainty_floor, selection=selection,
                                 quality_fit=fitted)
  seconds = time.perf_counter() - start
  if fmt == "pseudo":
    _write_pseudo(rows, paths, model)
  else:
    write_outputs(FLAGS.output, fmt, rows, failures, FLAGS.model)
  n_low = sum(row["low_confidence"] for row in rows)
  n_degenerate = sum(row["degenerate"] for row in rows)
  print(f"[predict] {len(rows)} images -> {FLAGS.output} in {seconds:.1f} s "
        f"({len(rows) / max(seconds, 1e-9):.1f} img/s); {n_low} flagged to check ({rule}), "
        f"{n_degenerate} with undefined AoP; {len(failures)} skipped")
  for _, reason in failures:
    print(f"[predict]   skipped: {reason}", file=sys.stderr)
  if FLAGS.overlay_dir:
    print(f"[predict] overlays in {os.path.abspath(FLAGS.overlay_dir)}")
  _summarise_clips(rows, paths)
  return 0 if rows else 1


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "predict")
