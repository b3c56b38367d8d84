"""Throughput of the input pipeline (`aop_tf.data.make_dataset`, training split), examples/s.

  python -m benchmarks.pipeline                          # PSFHS (built to a temp dir), or phantom
  python -m benchmarks.pipeline --dataset_dir=data/csv   # an already built dataset
  python -m benchmarks.pipeline --flagfile=my.flags

For each configuration (input size x channels x batch size x augmentation) it builds the training
stream once, times the first epoch ("cold": TFDS decode + resize + cache fill) and then
`--repeats` timed runs of `--epochs_per_repeat` epochs over the filled cache ("warm"), reporting
the median of the warm runs, and the bytes per example each step carries to the device (the
model's inputs and targets: since issue 19 landmark cells, not rendered heatmaps). The PSFHS
images are 256x256, so the 512 rows upsample. Results go to `benchmarks/results/pipeline.json`
with the machine's load, since the CPU may be shared.
"""

import json
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import app, flags, logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("data_dir", None, "Raw PSFHS folder (images/, train.csv, val.csv); default "
                    "$AOP_PSFHS_DIR or ../shared/data/psfhs. Phantom data is used if it is absent.")
flags.DEFINE_string("dataset_dir", None, "An already built TFDS dataset (skips the build).")
flags.DEFINE_string("split", "train", "Split to read.")
flags.DEFINE_list("input_sizes", ["256", "512"], "Model input sizes, pixels.")
flags.DEFINE_list("batch_sizes", ["8", "4"], "Batch sizes.")
flags.DEFINE_list("augment", ["off", "on"], "Augmentation settings to time: off, on.")
flags.DEFINE_integer("channels_256", 1, "Input channels at sizes below 512 (the CPU models).")
flags.DEFINE_integer("channels_512", 3, "Input channels at 512 (the paper: 3).")
flags.DEFINE_integer("heatmap_size", 64, "Heatmap side, cells.")
flags.DEFINE_boolean("with_mask", False, "Also produce mask targets.")
flags.DEFINE_integer("repeats", 3, "Timed warm runs per configuration (the median is reported).")
flags.DEFINE_float("epochs_per_repeat", 1.0, "Epochs per warm run (fractions allowed).")
flags.DEFINE_integer("phantom_train", 128, "Phantom train examples when PSFHS is absent.")
flags.DEFINE_string("out", os.path.join(REPO_ROOT, "benchmarks", "results", "pipeline.json"),
                    "Output JSON.")
FLAGS = flags.FLAGS


def _build(tmp):
  """Dataset dir of PSFHS (csv source) or, when the raw data is absent, a phantom set."""
  from data_prep import build  # pylint: disable=import-outside-toplevel
  raw = FLAGS.data_dir or build.default_psfhs_dir()
  if os.path.isdir(raw):
    print(f"Building PSFHS from {raw} into {tmp} ...", flush=True)
    return build.build_dataset("csv", data_dir=raw, out_dir=tmp, verbose=False), "psfhs"
  print(f"{raw} not found: benchmarking on a phantom dataset instead.", flush=True)
  return build.build_dataset("phantom", out_dir=tmp, verbose=False, phantom_counts={
      "train": FLAGS.phantom_train, "val": 8, "test": 0}), "phantom"


def _time_batches(iterator, n_batches):
  start = time.perf_counter()
  for _ in range(n_batches):
    batch = next(iterator)
  batch["image"].numpy()  # the data has arrived on the host
  return time.perf_counter() - start


def _bench_one(dataset_dir, split, input_size, channels, batch_size, augment_on):
  import psutil  # pylint: disable=import-outside-toplevel
  from aop_tf import config as config_lib, data  # pylint: disable=import-outside-toplevel
  config = config_lib.RunSpec().replace(
      input_size=input_size, input_channels=channels, heatmap_size=FLAGS.heatmap_size,
      batch_size=batch_size, augment=augment_on, seg_classes=3 if FLAGS.with_mask else 0,
      cache=True, seed=0)
  steps = data.steps_per_epoch(dataset_dir, split, config)
  process = psutil.Process()
  rss_before = process.memory_info().rss
  iterator = iter(data.make_dataset(dataset_dir, split, config, training=True))
  cold_s = _time_batches(iterator, steps)
  rss_after = process.memory_info().rss
  n_batches = max(1, int(round(FLAGS.epochs_per_repeat * steps)))
  warm = []
  for _ in range(FLAGS.repeats):
    seconds = _time_batches(iterator, n_batches)
    warm.append(n_batches * batch_size / seconds)
  x, y = data.to_keras(next(iterator))  # what each step carries from the host to the device
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  carried = {key: int(value.numpy().nbytes) // batch_size
             for key, value in {"x_image": x, **{f"y_{k}": v for k, v in y.items()}}.items()
             if isinstance(value, tf.Tensor)}
  del iterator
  return {
      "bytes_per_example": sum(carried.values()), "bytes_per_example_by_key": carried,
      "input_size": input_size, "input_channels": channels, "batch_size": batch_size,
      "augment": augment_on, "with_mask": FLAGS.with_mask, "steps_per_epoch": steps,
      "cold_epoch_s": round(cold_s, 3),
      "cold_examples_per_s": round(steps * batch_size / cold_s, 1),
      "warm_examples_per_s": [round(w, 1) for w in warm],
      "warm_examples_per_s_median": round(statistics.median(warm), 1),
      "rss_growth_mb_first_epoch": round((rss_after - rss_before) / 2 ** 20, 1),
      "loadavg_1min_after": round(os.getloadavg()[0], 2),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # TFDS logs every dataset it opens at INFO
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from aop_tf import data  # pylint: disable=import-outside-toplevel
  unknown = sorted(set(FLAGS.augment) - {"off", "on"})
  if unknown:
    raise app.UsageError(f"--augment takes off and/or on, got {unknown}.")
  with tempfile.TemporaryDirectory(prefix="aop_bench_") as tmp:
    if FLAGS.dataset_dir:
      dataset_dir, source = data.find_dataset_dir(FLAGS.dataset_dir), FLAGS.dataset_dir
    else:
      start = time.time()
      dataset_dir, source = _build(tmp)
      print(f"  built in {time.time() - start:.1f} s", flush=True)
    n = data.num_examples(dataset_dir, FLAGS.split)
    configs = [(int(s), FLAGS.channels_512 if int(s) >= 512 else FLAGS.channels_256, int(b),
                a == "on") for s in FLAGS.input_sizes for b in FLAGS.batch_sizes
               for a in FLAGS.augment]
    print(f"{source} {FLAGS.split}: {n} examples; {len(configs)} configurations, "
          f"{FLAGS.repeats} warm runs each", flush=True)
    results = []
    for i, (size, channels, batch_size, augment_on) in enumerate(configs):
      row = _bench_one(dataset_dir, FLAGS.split, size, channels, batch_size, augment_on)
      results.append(row)
      print(f"[{i + 1}/{len(configs)}] input {size}x{size}x{channels} batch {batch_size} "
            f"augment {'on ' if augment_on else 'off'}: warm "
            f"{row['warm_examples_per_s_median']:7.1f} ex/s (runs {row['warm_examples_per_s']}), "
            f"{row['bytes_per_example'] / 1024:.0f} KiB/example to the device, "
            f"cold epoch {row['cold_epoch_s']:.1f} s, cache +{row['rss_growth_mb_first_epoch']} MB, "
            f"load {row['loadavg_1min_after']}", flush=True)

  report = {
      "what": "aop_tf.data.make_dataset(training=True) throughput, examples/s; warm = cached "
              "images, median of repeats; cold = first epoch incl. decode and cache fill",
      "dataset": source, "split": FLAGS.split, "num_examples": n,
      "epochs_per_repeat": FLAGS.epochs_per_repeat, "repeats": FLAGS.repeats,
      "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                  "python": sys.version.split()[0], "tensorflow": tf.__version__,
                  "loadavg_at_end": [round(v, 2) for v in os.getloadavg()]},
      "results": results,
  }
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  tmp_out = FLAGS.out + ".tmp"
  with open(tmp_out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
  os.replace(tmp_out, FLAGS.out)
  print(f"Wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
