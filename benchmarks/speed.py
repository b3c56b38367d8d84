"""Speed and footprint of the landmark models on this machine: inference, training, FLOPs, peak.

  python -m benchmarks.speed --model_dir=runs/cpu_psfhs --data_dir=data/psfhs
  python -m benchmarks.speed --sections=peak,flops,infer     # no trained model: random weights
  python -m benchmarks.speed --flagfile=my.flags

Sections (`--sections`, in this order):
  peak      the CPU's float32 peak, measured: a `--matmul_size` square float32 matrix product (TF)
  flops     parameters and FLOPs per image of the `cpu.cfg` and `paper.cfg` models (2 x the
            multiply-adds of every convolution; the rest of the graph adds under 2 %)
  infer     latency (median, p90 of the calls) and throughput, images of the `--data_dir` split,
            decoding of landmarks and AoP included (every variant runs the export's whole graph):
            Keras (the model + `serving.images_fn` in a tf.function, and XLA-compiled), the
            SavedModel's `serve_images` at each `--batch_sizes`, TFLite float / float16 / dynamic /
            int8 at batch 1 with 1 and 2 threads and as 2 interpreters side by side, and the
            SavedModel with oneDNN bfloat16 auto mixed precision (`predict --bfloat16`)
  accuracy  with a trained `--model_dir`: MRE and AoP error of every variant on the split, and
            their drift from the float Keras model (what a speed setting costs in accuracy)
  predict   `python -m aop_tf.predict` end to end over `--predict_images` files, profiled with
            `benchmarks.profile` (wall time, peak RSS), `--predict_repeats` runs each
  train     training step time, images/s and the share of the step spent waiting for data, for
            `--train_configs` (flagfiles), XLA off and on (`--train_xla`)

Without `--model_dir` a `cpu.cfg` model with random weights stands in (speed does not depend on the
weights); accuracy is then skipped. The CPU may be shared: every section records the load average
before and after it, and every figure is a median of repeated calls. Writes `--out` (JSON) and
`--markdown` (the tables).
"""

import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO_ROOT, "aop_tf", "configs")
SECTIONS = ("peak", "flops", "infer", "accuracy", "predict", "train")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")

flags.DEFINE_list("sections", list(SECTIONS), f"Sections to run, of {', '.join(SECTIONS)}.")
flags.DEFINE_string("model_dir", None, "Trained cpu.cfg training directory (e.g. runs/cpu_psfhs); "
                    "default: a random-weight cpu.cfg model.")
flags.DEFINE_string("checkpoint", None, "Checkpoint of --model_dir (default as aop_tf.export).")
flags.DEFINE_string("data_dir", os.path.join(REPO_ROOT, "data", "psfhs"),
                    "Built dataset: images to time, the accuracy split, int8 calibration, training.")
flags.DEFINE_string("split", "val", "Split whose images are timed and scored.")
flags.DEFINE_integer("num_images", 32, "Images of --split cycled through in the timing runs.")
flags.DEFINE_integer("accuracy_images", 0, "Images of --split scored for accuracy (0: all).")
flags.DEFINE_list("batch_sizes", ["1", "2", "4", "8", "16"], "Batch sizes for Keras/SavedModel.")
flags.DEFINE_list("quantizations", list(QUANTIZATIONS), "TFLite variants to export and time.")
flags.DEFINE_integer("calibration_images", 100, "int8 calibration images (train split).")
flags.DEFINE_float("min_seconds", 3.0, "Each timing runs at least this long ...")
flags.DEFINE_integer("min_calls", 10, "... and at least this many timed calls (after warm-up).")
flags.DEFINE_integer("matmul_size", 2048, "Side of the float32 matrices of the peak measurement.")
flags.DEFINE_integer("matmul_repeats", 30, "Timed matrix products (the peak is the fastest).")
flags.DEFINE_string("predict_images", None, "Image folder for the predict section (default "
                    "$AOP_PSFHS_DIR/images or ../shared/data/psfhs/images).")
flags.DEFINE_integer("predict_count", 500, "How many of its images (sorted by name).")
flags.DEFINE_integer("predict_repeats", 3, "Profiled predict runs per variant.")
flags.DEFINE_list("predict_variants", ["tflite:int8", "tflite:dynamic", "tflite:none",
                                       "savedmodel:none"],
                  "backend:quantization pairs to run predict with.")
flags.DEFINE_list("predict_args", [], "Extra aop_tf.predict flags (e.g. --batch_size=4).")
flags.DEFINE_list("train_configs", ["cpu", "paper"], "Flagfiles (aop_tf/configs/<name>.cfg or "
                  "paths) whose training step is timed.")
flags.DEFINE_list("train_xla", ["off", "on"], "XLA settings to time for the cpu config: off, on.")
flags.DEFINE_boolean("paper_xla", False, "Also time the paper model with XLA (compiles for "
                     "minutes on 2 cores).")
flags.DEFINE_integer("train_steps", 20, "Timed training steps (cpu-sized configs).")
flags.DEFINE_integer("paper_train_steps", 3, "Timed training steps of the paper model.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first (tracing, XLA compilation).")
flags.DEFINE_boolean("update", False, "Keep the sections of an existing --out that this run does "
                     "not repeat (each section records the run that made it).")
flags.DEFINE_string("out", os.path.join(REPO_ROOT, "benchmarks", "results", "speed.json"),
                    "Output JSON.")
flags.DEFINE_string("markdown", os.path.join(REPO_ROOT, "benchmarks", "results", "speed.md"),
                    "Output Markdown tables ('' for none).")
FLAGS = flags.FLAGS

# The paper (IUGC 2025 baseline) on an RTX 2080 Ti: 501 test images in 17.66 s, 6.7 GB GPU memory,
# 37.8 GB RAM (its Table 3 / Figure 2).
PAPER = {"images": 501, "seconds": 17.66, "ms_per_image": 35.0, "gpu_mem_gb": 6.7, "ram_gb": 37.8}
GOALS = {"tflite_b1_ms": 20.0, "savedmodel_images_per_s": 50.0, "predict_500_s": 20.0,
         "predict_500_rss_mib": 1024.0, "train_data_wait_fraction": 0.05}


def _load():
  return [round(v, 2) for v in os.getloadavg()]


def _log(message):
  print(f"[speed] {message}", flush=True)


def time_calls(fn, inputs, min_seconds=None, min_calls=None, warmup=2):
  """Times `fn(x)` cycling over `inputs` (fn must return only once the work is done).

  Returns:
    list of seconds per call.
  """
  min_seconds = FLAGS.min_seconds if min_seconds is None else min_seconds
  min_calls = FLAGS.min_calls if min_calls is None else min_calls
  for i in range(warmup):
    fn(inputs[i % len(inputs)])
  seconds = []
  start = time.perf_counter()
  i = 0
  while len(seconds) < min_calls or time.perf_counter() - start < min_seconds:
    t = time.perf_counter()
    fn(inputs[i % len(inputs)])
    seconds.append(time.perf_counter() - t)
    i += 1
  return seconds


def summarize_calls(seconds, batch_size, **fields):
  """A result row: median/p90 latency of a call, ms per image, images per second."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  median = statistics.median(seconds)
  return dict(fields, batch_size=batch_size, n_calls=len(seconds),
              latency_ms_median=round(1e3 * median, 2),
              latency_ms_p90=round(1e3 * float(np.percentile(seconds, 90)), 2),
              ms_per_image=round(1e3 * median / batch_size, 2),
              images_per_s=round(batch_size / median, 1))


# ---------------------------------------------------------------------------------------------
# Models and data.


def parse_flagfile(name, **overrides):
  """`config.RunSpec` of a flagfile (`cpu` -> aop_tf/configs/cpu.cfg), flags overridden."""
  from aop_tf import config as config_lib  # pylint: disable=import-outside-toplevel
  path = name if os.path.exists(name) else os.path.join(CONFIGS, f"{name}.cfg")
  if not os.path.exists(path):
    raise app.UsageError(f"No flagfile {name!r} (nor {path}).")
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(["speed", f"--flagfile={path}"] + [f"--{k}={v}" for k, v in overrides.items()])
  return config_lib.from_flags(values)


def random_model_dir(folder, flagfile="cpu", seed=0):
  """A training directory (config.json + latest.keras) of `flagfile`'s model, random weights."""
  import keras  # pylint: disable=import-outside-toplevel
  from aop_tf import model as model_lib  # pylint: disable=import-outside-toplevel
  from aop_tf import model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel
  spec = parse_flagfile(flagfile)
  keras.utils.set_random_seed(seed)
  model = model_lib.build_unet(**spec.model_kwargs())
  os.makedirs(folder, exist_ok=True)
  model_dir_lib.write_spec(folder, spec)
  model_dir_lib.save_model(model, model_dir_lib.checkpoint_path(folder, "latest"))
  return folder


def split_images(data_dir, split, count=None):
  """uint8 [H, W, C] images, ground-truth landmarks [N, 3, 2] and sizes [N, 2] of a split."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from aop_tf import data  # pylint: disable=import-outside-toplevel
  ds = data.load_split(data.find_dataset_dir(data_dir), split)
  if count:
    ds = ds.take(count)
  images, landmarks, sizes = [], [], []
  for example in ds:
    images.append(example["image"].numpy())
    landmarks.append(example["landmarks"].numpy())
    sizes.append([float(example["width"]), float(example["height"])])
  return images, np.stack(landmarks), np.asarray(sizes, np.float32)


def conv_flops(model):
  """2 x multiply-adds of every Conv2D / Conv2DTranspose / Dense layer, per image."""
  from keras import layers  # pylint: disable=import-outside-toplevel
  total = 0
  for layer in model.layers:
    if isinstance(layer, layers.Conv2DTranspose):
      _, height, width, channels_in = layer.input.shape  # each input pixel scatters a kernel
      k_h, k_w = layer.kernel_size
      total += 2 * height * width * k_h * k_w * channels_in * layer.filters
    elif isinstance(layer, layers.Conv2D):
      _, height, width, _ = layer.output.shape
      k_h, k_w = layer.kernel_size
      total += 2 * height * width * k_h * k_w * layer.input.shape[-1] * layer.filters
    elif isinstance(layer, layers.Dense):
      total += 2 * layer.input.shape[-1] * layer.units
  return int(total)


# ---------------------------------------------------------------------------------------------
# Sections.


def section_peak():
  """Float32 GFLOP/s of a large matrix product (TF, default threads)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  n = FLAGS.matmul_size
  a = tf.random.normal([n, n], dtype=tf.float32)
  b = tf.random.normal([n, n], dtype=tf.float32)
  matmul = tf.function(tf.linalg.matmul)
  seconds = time_calls(lambda _: matmul(a, b).numpy(), [None], min_seconds=0,
                       min_calls=FLAGS.matmul_repeats)
  gflops = [2 * n ** 3 / s / 1e9 for s in seconds]
  # The fastest call is the best estimate of the peak on a shared CPU.
  return {"what": f"float32 {n}x{n} matmul (tf.linalg.matmul), fastest of {len(seconds)} calls",
          "gflops_peak": round(max(gflops), 1),
          "gflops_median": round(statistics.median(gflops), 1),
          "gflops_p10": round(float(np.percentile(gflops, 10)), 1)}


def section_flops():
  from aop_tf import model as model_lib  # pylint: disable=import-outside-toplevel
  rows = {}
  for name in ("cpu", "paper"):
    kwargs = parse_flagfile(name).model_kwargs()
    model = model_lib.build_unet(**kwargs)
    rows[name] = {"model": kwargs, "params": int(model.count_params()),
                  "gflops_per_image": round(conv_flops(model) / 1e9, 3)}
    _log(f"flops {name}: {rows[name]['params'] / 1e6:.2f} M parameters, "
         f"{rows[name]['gflops_per_image']:.2f} GFLOP per image")
  return rows


@dataclasses.dataclass
class Exports:
  """Export folders by quantization (the SavedModel is the same in each)."""
  folders: dict
  info: dict


def make_exports(model_dir, root, quantizations):
  from aop_tf import export  # pylint: disable=import-outside-toplevel
  folders, info = {}, {}
  for quantize in quantizations:
    folder = os.path.join(root, f"export_{quantize}")
    start = time.perf_counter()
    record = export.export_model_dir(model_dir, folder, FLAGS.checkpoint, quantize,
                                     FLAGS.data_dir, "train", FLAGS.calibration_images)
    folders[quantize] = folder
    info[quantize] = {"tflite_bytes": record["tflite"]["bytes"],
                      "export_s": round(time.perf_counter() - start, 1),
                      "verification_tflite": record["verification"]["tflite"]}
  return Exports(folders, info)


def section_infer(model_dir, exports, images):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from aop_tf import model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel
  from aop_tf import predictor  # pylint: disable=import-outside-toplevel
  from aop_tf import predictor_tf  # pylint: disable=import-outside-toplevel
  from aop_tf import serving  # pylint: disable=import-outside-toplevel
  rows = []

  def add(row):
    rows.append(dict(row, load=_load()))
    _log(f"infer {row['backend']:<22} batch {row['batch_size']:>2} threads "
         f"{str(row.get('threads')):>4}: {row['latency_ms_median']:8.2f} ms/call (p90 "
         f"{row['latency_ms_p90']:.2f}), {row['images_per_s']:6.1f} img/s; load {rows[-1]['load']}")

  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  _, name = _checkpoint(model_dir)
  model, spec = model_dir_lib.load_model(model_dir, name)
  codec = spec.heatmap_codec()
  # XLA compiles the model only: it has no kernel for the antialiased resize (ScaleAndTranslate).
  compiled = tf.function(lambda x: model(x, training=False), jit_compile=True)

  class _Compiled:  # the model as serving sees it (its input shape), run XLA-compiled
    input_shape = model.input_shape

    def __call__(self, x, training=False):
      return compiled(x)

  for xla in (False, True):
    fn = tf.function(serving.images_fn(_Compiled() if xla else model, codec))
    for b in batch_sizes:
      batches = _batches(images, b)
      seconds = time_calls(lambda x: _numpy(fn(x)), batches)
      add(summarize_calls(seconds, b, backend="keras_xla" if xla else "keras", threads="tf"))
  del model

  def savedmodel_rows(backend):
    loaded = tf.saved_model.load(next(iter(exports.folders.values())))
    fn = loaded.signatures[serving.SERVE_IMAGES]
    for b in batch_sizes:
      batches = _batches(images, b)
      seconds = time_calls(lambda x: _numpy(fn(images=x)), batches)
      add(summarize_calls(seconds, b, backend=backend, threads="tf"))

  savedmodel_rows("savedmodel")
  singles = [[image] for image in images]
  for quantize, folder in exports.folders.items():
    path = os.path.join(folder, "model.tflite")
    for threads in (1, 2):
      lite = predictor.TFLitePredictor(path, num_threads=threads)
      seconds = time_calls(lite.predict, singles)
      add(summarize_calls(seconds, 1, backend=f"tflite_{quantize}", threads=threads))
    parallel = predictor.TFLitePredictor(path, num_threads=1, num_interpreters=2)
    pairs = [images[i:i + 2] for i in range(0, len(images) - 1, 2)]
    seconds = time_calls(parallel.predict, pairs)
    row = summarize_calls(seconds, 2, backend=f"tflite_{quantize}", threads="2x1")
    row["note"] = "2 interpreters of 1 thread, one image each, side by side (predict's default)"
    add(row)
  with predictor_tf.bfloat16_graphs():
    savedmodel_rows("savedmodel_bf16")
  return rows


def _checkpoint(model_dir):
  from aop_tf import model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel
  name, path = model_dir_lib.resolve_checkpoint(model_dir, FLAGS.checkpoint)
  return path, name


def _batches(images, batch_size):
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  count = max(1, len(images) // batch_size)
  return [tf.constant(np.stack(images[i * batch_size:(i + 1) * batch_size]))
          for i in range(count)] if len(images) >= batch_size else [
              tf.constant(np.stack([images[i % len(images)] for i in range(batch_size)]))]


def _numpy(outputs):
  return {k: v.numpy() for k, v in outputs.items()}


def section_accuracy(model_dir, exports, data):
  """MRE / AoP error of each variant on the split, and drift from the float Keras model."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from aop_tf import metrics  # pylint: disable=import-outside-toplevel
  from aop_tf import model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel
  from aop_tf import predictor  # pylint: disable=import-outside-toplevel
  from aop_tf import predictor_tf  # pylint: disable=import-outside-toplevel
  from aop_tf import serving  # pylint: disable=import-outside-toplevel
  images, gt_px, size_px = data
  _, name = _checkpoint(model_dir)
  model, spec = model_dir_lib.load_model(model_dir, name)
  fn = tf.function(serving.images_fn(model, spec.heatmap_codec()))
  reference = np.concatenate([fn(tf.constant(image[None]))["landmarks"].numpy()
                              for image in images])
  del model
  variants = [("keras", None)]
  variants += [("savedmodel",
                predictor_tf.SavedModelPredictor(next(iter(exports.folders.values()))))]
  variants += [(f"tflite_{q}", predictor.TFLitePredictor(os.path.join(f, "model.tflite")))
               for q, f in exports.folders.items()]
  rows = {}
  for backend, runner in variants:
    pred = reference if runner is None else runner.predict(images)["landmarks"]
    rows[backend] = _score(metrics, pred, gt_px, size_px, reference)
    _log(f"accuracy {backend:<16} MRE {rows[backend]['mre_px']:.2f} px, AoP error "
         f"{rows[backend]['aop_error_deg_mean']:.2f} deg, drift from Keras "
         f"{rows[backend]['drift_px_max']:.3f} px (max)")
  runner = predictor_tf.SavedModelPredictor(next(iter(exports.folders.values())), bfloat16=True)
  rows["savedmodel_bf16"] = _score(metrics, runner.predict(images)["landmarks"], gt_px, size_px,
                                   reference)
  _log(f"accuracy savedmodel_bf16   MRE {rows['savedmodel_bf16']['mre_px']:.2f} px, AoP error "
       f"{rows['savedmodel_bf16']['aop_error_deg_mean']:.2f} deg")
  return {"split": FLAGS.split, "n_images": len(images), "variants": rows}


def _score(metrics, pred, gt_px, size_px, reference):
  import numpy as np  # pylint: disable=import-outside-toplevel
  report = metrics.report(metrics.per_image_errors(pred, gt_px, size_px))
  drift = np.linalg.norm(np.asarray(pred, np.float64) - reference, axis=-1)
  return {"mre_px": round(report["mre_px"]["mean"], 3),
          "mre_512": round(report["mre_512"]["mean"], 3),
          "aop_error_deg_mean": round(report["aop_error_deg"]["mean"], 3),
          "aop_error_deg_median": round(report["aop_error_deg"]["median"], 3),
          "drift_px_mean": round(float(np.nanmean(drift)), 4),
          "drift_px_max": round(float(np.nanmax(drift)), 4)}


def section_predict(exports, tmp):
  """`python -m aop_tf.predict` over a folder, profiled (benchmarks.profile), repeated."""
  from benchmarks import profile  # pylint: disable=import-outside-toplevel
  source = FLAGS.predict_images or os.path.join(
      os.environ.get("AOP_PSFHS_DIR", os.path.join(REPO_ROOT, "..", "shared", "data", "psfhs")),
      "images")
  if not os.path.isdir(source):
    _log(f"predict: {source} not found; skipped (pass --predict_images).")
    return {"skipped": f"{source} not found"}
  names = sorted(n for n in os.listdir(source) if n.lower().endswith((".png", ".jpg", ".jpeg")))
  names = names[:FLAGS.predict_count]
  folder = os.path.join(tmp, "predict_images")
  os.makedirs(folder, exist_ok=True)
  for name in names:  # links, so that the data is never copied
    os.symlink(os.path.abspath(os.path.join(source, name)), os.path.join(folder, name))
  rows = []
  for variant in FLAGS.predict_variants:
    backend, _, quantize = variant.partition(":")
    if quantize not in exports.folders:
      _log(f"predict: {variant}: no {quantize} export (see --quantizations); skipped.")
      continue
    model = exports.folders[quantize]
    if backend == "tflite":
      model = os.path.join(model, "model.tflite")
    runs = []
    for _ in range(FLAGS.predict_repeats):
      argv = profile.default_command(model, folder, os.path.join(tmp, "predictions.csv"),
                                     extra_args=FLAGS.predict_args)
      result = profile.profile_command(argv, interval_s=0.1, gpu="off", echo=False)
      if result["returncode"] != 0:
        raise RuntimeError(f"predict failed ({variant}):\n" + "\n".join(result["output_tail"]))
      table = profile.summarize(result)
      runs.append({"wall_s": table["runtime_s"], "ram_max_mib": table["ram_max_mib"],
                   "cpu_mean_percent": table["cpu_mean_percent"],
                   "predict_line": next((l for l in result["output_tail"]
                                         if " images -> " in l), None),
                   "load": result["loadavg_after"]})
    row = {"variant": variant, "n_images": len(names), "runs": runs,
           "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 2),
           "ram_max_mib_median": round(statistics.median(r["ram_max_mib"] for r in runs), 1),
           "command": " ".join(["python"] + argv[1:]).replace(tmp, "<tmp>")}
    rows.append(row)
    _log(f"predict {variant:<16} {len(names)} images: {row['wall_s_median']:.1f} s wall "
         f"(runs {[r['wall_s'] for r in runs]}), peak RSS {row['ram_max_mib_median']:.0f} MiB; "
         f"load {_load()}")
  return {"images": source, "rows": rows}


def section_train(tmp):
  """Training step time, images/s and data wait, per config and XLA setting."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from aop_tf import data  # pylint: disable=import-outside-toplevel
  from aop_tf import task  # pylint: disable=import-outside-toplevel
  data_dir = data.find_dataset_dir(FLAGS.data_dir)
  rows = []
  for name in FLAGS.train_configs:
    is_paper = os.path.splitext(os.path.basename(name))[0] == "paper"
    settings = [x == "on" for x in FLAGS.train_xla]
    if is_paper and not FLAGS.paper_xla:
      settings = [False]
    for xla in settings:
      config = parse_flagfile(name, data_dir=data_dir, jit_compile=xla,
                              model_dir=os.path.join(tmp, "train"))
      model = task.build_compiled_model(config)
      steps_per_epoch = data.steps_per_epoch(data_dir, config.data.train_split, config)
      dataset = data.make_dataset(data_dir, config.data.train_split, config, training=True)
      # The trainer's own (x, y) mapping and prefetch.
      dataset = dataset.map(data.to_keras, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
          tf.data.AUTOTUNE)
      iterator = iter(dataset)
      # The first epoch decodes and fills the cache; training runs on the cached epochs after it.
      start = time.perf_counter()
      for _ in range(steps_per_epoch):
        next(iterator)
      fill_s = time.perf_counter() - start
      steps = FLAGS.paper_train_steps if is_paper else FLAGS.train_steps
      waits, totals, first_step_s = [], [], float("nan")
      for step in range(FLAGS.warmup_steps + steps):
        t0 = time.perf_counter()
        x, y = next(iterator)
        t1 = time.perf_counter()
        model.train_on_batch(x, y)
        t2 = time.perf_counter()
        if step >= FLAGS.warmup_steps:
          waits.append(t1 - t0)
          totals.append(t2 - t0)
        elif step == 0:
          first_step_s = t2 - t0
      step_s = statistics.median(totals)
      row = {"config": name, "xla": xla, "batch_size": config.data.batch_size,
             "input": f"{config.model.input_size}x{config.model.input_size}x"
                      f"{config.model.input_channels}",
             "augment": config.data.augment, "steps_timed": steps,
             "step_s_median": round(step_s, 3),
             "step_s_p90": round(float(np.percentile(totals, 90)), 3),
             "images_per_s": round(config.data.batch_size / step_s, 2),
             "data_wait_fraction": round(sum(waits) / sum(totals), 4),
             "data_wait_ms_median": round(1e3 * statistics.median(waits), 2),
             "first_step_s": round(first_step_s, 1), "cache_fill_epoch_s": round(fill_s, 1),
             "load": _load()}
      rows.append(row)
      _log(f"train {name} xla={'on' if xla else 'off'}: {row['step_s_median']:.3f} s/step "
           f"(batch {config.data.batch_size}), {row['images_per_s']:.1f} img/s, data wait "
           f"{100 * row['data_wait_fraction']:.2f} % of the step; first step "
           f"{row['first_step_s']} s; load {row['load']}")
      del model, iterator, dataset
  return rows


# ---------------------------------------------------------------------------------------------
# Report.


def _best(rows, backend):
  candidates = [r for r in rows if r["backend"] == backend]
  return max(candidates, key=lambda r: r["images_per_s"]) if candidates else None


def markdown(report):
  """The tables of `report`: goals, inference, accuracy, predict, training, FLOPs."""
  runs = report.get("section_runs", {})
  lines = [f"Machine: {report['machine']['cpu_model']}, {report['machine']['cpu_count']} cores, "
           "1-minute load average per row (2.0 = both cores busy; the benchmark itself counts, "
           "anything above it is other work sharing the CPU)."]
  for section, run in runs.items():
    if run:
      lines.append(f"- {section}: `{run['command']}` ({run['when']}, model {run['model']}, load "
                   f"{run['load_before'][0]} -> {run['load_after'][0]})")
  lines.append("")
  peak = report.get("peak")
  flops = report.get("flops", {})
  cpu_gflop = flops.get("cpu", {}).get("gflops_per_image")
  infer = report.get("infer") or []
  predict_rows = (report.get("predict") or {}).get("rows", [])
  train_rows = report.get("train") or []

  lines += ["| goal | target | measured | met |", "|---|---|---|---|"]
  lite = [r for r in infer if r["backend"].startswith("tflite_") and r["batch_size"] == 1]
  for row in sorted(lite, key=lambda r: r["latency_ms_median"])[:1]:
    ok = row["latency_ms_median"] <= GOALS["tflite_b1_ms"]
    lines.append(f"| TFLite batch 1, median ms/image (with decoding) | <= 20 | "
                 f"{row['latency_ms_median']:.1f} ({row['backend']}, threads {row['threads']}) | "
                 f"{'yes' if ok else 'no'} |")
  lite_float = [r for r in lite if r["backend"] == "tflite_none"]
  for row in sorted(lite_float, key=lambda r: r["latency_ms_median"])[:1]:
    ok = row["latency_ms_median"] <= GOALS["tflite_b1_ms"]
    lines.append(f"| TFLite float32 batch 1, median ms/image | <= 20 | "
                 f"{row['latency_ms_median']:.1f} (threads {row['threads']}) | "
                 f"{'yes' if ok else 'no'} |")
  for backend in ("savedmodel", "savedmodel_bf16"):
    row = _best(infer, backend)
    if row:
      ok = row["images_per_s"] >= GOALS["savedmodel_images_per_s"]
      lines.append(f"| {backend.replace('_', ' ')}, batched, images/s | >= 50 | "
                   f"{row['images_per_s']:.1f} (batch {row['batch_size']}) | "
                   f"{'yes' if ok else 'no'} |")
  for row in predict_rows:
    ok = (row["wall_s_median"] <= GOALS["predict_500_s"] and
          row["ram_max_mib_median"] <= GOALS["predict_500_rss_mib"])
    lines.append(f"| predict {row['n_images']} images end to end ({row['variant']}) | <= 20 s, "
                 f"<= 1 GB | {row['wall_s_median']:.1f} s, {row['ram_max_mib_median']:.0f} MiB | "
                 f"{'yes' if ok else 'no'} |")
  for row in train_rows:
    ok = row["data_wait_fraction"] < GOALS["train_data_wait_fraction"]
    lines.append(f"| training {row['config']} (XLA {'on' if row['xla'] else 'off'}): data wait "
                 f"share of the step | < 5 % | {100 * row['data_wait_fraction']:.2f} % | "
                 f"{'yes' if ok else 'no'} |")
  lines.append(f"| paper, RTX 2080 Ti (for scale) | | {PAPER['ms_per_image']:.0f} ms/image, "
               f"{PAPER['images']} images in {PAPER['seconds']} s, {PAPER['ram_gb']} GB RAM, "
               f"{PAPER['gpu_mem_gb']} GB GPU | |")

  if infer:
    lines += ["", "| backend | threads | batch | ms/call median | p90 | ms/image | images/s | "
              "% of peak | load |", "|---|---|---|---|---|---|---|---|---|"]
    for row in infer:
      frac = ""
      float32 = not row["backend"].endswith(("_dynamic", "_int8", "_bf16"))
      if peak and cpu_gflop and float32:  # int8 and bfloat16 arithmetic is not bound by it
        frac = f"{100 * cpu_gflop * row['images_per_s'] / peak['gflops_peak']:.0f}"
      lines.append(f"| {row['backend']} | {row['threads']} | {row['batch_size']} | "
                   f"{row['latency_ms_median']:.1f} | {row['latency_ms_p90']:.1f} | "
                   f"{row['ms_per_image']:.1f} | {row['images_per_s']:.1f} | {frac} | "
                   f"{row['load'][0]} |")
  acc = (report.get("accuracy") or {}).get("variants")
  if acc:
    lines += ["", f"Accuracy on {report['accuracy']['split']} ({report['accuracy']['n_images']} "
              "images):", "", "| variant | MRE px | MRE 512 | AoP error mean deg | median | "
              "drift from Keras px, mean / max |", "|---|---|---|---|---|---|"]
    for name, row in acc.items():
      lines.append(f"| {name} | {row['mre_px']:.2f} | {row['mre_512']:.2f} | "
                   f"{row['aop_error_deg_mean']:.2f} | {row['aop_error_deg_median']:.2f} | "
                   f"{row['drift_px_mean']:.3f} / {row['drift_px_max']:.3f} |")
  if predict_rows:
    lines += ["", "| predict variant | images | wall s (median) | runs | peak RSS MiB | command |",
              "|---|---|---|---|---|---|"]
    for row in predict_rows:
      lines.append(f"| {row['variant']} | {row['n_images']} | {row['wall_s_median']:.1f} | "
                   f"{', '.join(str(r['wall_s']) for r in row['runs'])} | "
                   f"{row['ram_max_mib_median']:.0f} | `{row['command']}` |")
  if train_rows:
    lines += ["", "| training | XLA | batch | s/step median | p90 | images/s | data wait % | "
              "% of peak | load |", "|---|---|---|---|---|---|---|---|---|"]
    for row in train_rows:
      name = os.path.splitext(os.path.basename(row["config"]))[0]
      gflop = flops.get(name, {}).get("gflops_per_image")
      frac = ""
      if peak and gflop:  # a training step: forward + backward, about 3 x the forward FLOPs
        frac = f"{100 * 3 * gflop * row['images_per_s'] / peak['gflops_peak']:.0f}"
      lines.append(f"| {row['config']} ({row['input']}) | {'on' if row['xla'] else 'off'} | "
                   f"{row['batch_size']} | {row['step_s_median']:.3f} | {row['step_s_p90']:.3f} | "
                   f"{row['images_per_s']:.2f} | {100 * row['data_wait_fraction']:.2f} | {frac} | "
                   f"{row['load'][0]} |")
  if flops:
    lines += ["", "| model | parameters | GFLOP/image (forward) |", "|---|---|---|"]
    for name, row in flops.items():
      lines.append(f"| {name}.cfg | {row['params'] / 1e6:.2f} M | {row['gflops_per_image']:.2f} |")
  if peak:
    lines += ["", f"Measured peak: {peak['gflops_peak']} GFLOP/s float32 ({peak['what']}; median "
              f"{peak['gflops_median']}). '% of peak' = GFLOP/image x images/s / peak (training: "
              "3 x the forward FLOPs); quantized and bfloat16 rows are not bound by it."]
  return "\n".join(lines) + "\n"


def _write(path, text):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = sorted(set(FLAGS.sections) - set(SECTIONS))
  if unknown:
    raise app.UsageError(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}.")
  bad = sorted(set(FLAGS.quantizations) - set(QUANTIZATIONS))
  if bad:
    raise app.UsageError(f"--quantizations: unknown {bad}; choose from {', '.join(QUANTIZATIONS)}.")
  logging.set_verbosity(logging.WARNING)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from benchmarks import profile  # pylint: disable=import-outside-toplevel
  sections = [s for s in SECTIONS if s in FLAGS.sections]
  report = {"command": " ".join(["python -m benchmarks.speed"] + sys.argv[1:]),
            "machine": dict(profile.machine_info(), tensorflow=tf.__version__,
                            loadavg_start=_load()),
            "model": FLAGS.model_dir or "cpu.cfg, random weights", "goals": GOALS,
            "paper": PAPER, "sections": sections}
  with tempfile.TemporaryDirectory(prefix="aop_speed_") as tmp:
    model_dir = FLAGS.model_dir or random_model_dir(os.path.join(tmp, "cpu_random"))
    exports = None
    if {"infer", "accuracy", "predict"} & set(sections):
      _log(f"exporting {model_dir} ({', '.join(FLAGS.quantizations)}) ...")
      exports = make_exports(model_dir, tmp, FLAGS.quantizations)
      report["exports"] = exports.info
    for section in sections:
      load_before = _load()
      start = time.perf_counter()
      _log(f"section {section} (load {load_before})")
      if section == "peak":
        report["peak"] = section_peak()
        _log(f"peak: {report['peak']['gflops_peak']} GFLOP/s float32 (median "
             f"{report['peak']['gflops_median']})")
      elif section == "flops":
        report["flops"] = section_flops()
      elif section == "infer":
        images, _, _ = split_images(FLAGS.data_dir, FLAGS.split, FLAGS.num_images)
        report["infer"] = section_infer(model_dir, exports, images)
      elif section == "accuracy":
        if not FLAGS.model_dir:
          _log("accuracy: skipped (random weights; pass --model_dir of a trained run).")
          continue
        report["accuracy"] = section_accuracy(model_dir, exports,
                                              split_images(FLAGS.data_dir, FLAGS.split,
                                                           FLAGS.accuracy_images))
      elif section == "predict":
        report["predict"] = section_predict(exports, tmp)
      elif section == "train":
        report["train"] = section_train(tmp)
      report.setdefault("section_runs", {})[section] = {
          "command": report["command"], "model": report["model"],
          "when": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": load_before,
          "load_after": _load(), "seconds": round(time.perf_counter() - start)}
  report["machine"]["loadavg_end"] = _load()
  report["platform"] = platform.platform()
  if FLAGS.update and os.path.exists(FLAGS.out):
    with open(FLAGS.out) as f:
      old = json.load(f)
    for section in SECTIONS:
      if section not in report.get("section_runs", {}) and section in old:
        report[section] = old[section]
        report.setdefault("section_runs", {})[section] = old.get("section_runs", {}).get(section)
    if "exports" not in report and "exports" in old:
      report["exports"] = old["exports"]
    report["sections"] = [s for s in SECTIONS if s in report]
  _write(FLAGS.out, json.dumps(report, indent=1) + "\n")
  _log(f"wrote {FLAGS.out}")
  if FLAGS.markdown:
    _write(FLAGS.markdown, markdown(report))
    _log(f"wrote {FLAGS.markdown}")


if __name__ == "__main__":
  app.run(main)
