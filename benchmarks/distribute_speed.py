"""Training steps per second on one device vs `--distribute=mirrored` over two logical CPUs.

  python -m benchmarks.distribute_speed [--dataset=data/psfhs] [--steps=20] [--epochs=4]

The cpu.cfg model and pipeline (PSFHS train, augmentation) at a global batch of 8: one device at 8,
mirrored over two logical CPU devices at 4 each. On this 2-core machine both share the same cores,
so no speed-up is expected; the figure is the cost of the replication. Epoch 1 (tracing) is left
out; the median of the others is reported. Writes `benchmarks/results/distribute_speed.json`.
"""

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("dataset", os.path.join(REPO, "data", "psfhs"), "A built dataset.")
flags.DEFINE_integer("steps", 20, "Steps per epoch.")
flags.DEFINE_integer("epochs", 4, "Epochs per setting (the first is not timed).")
flags.DEFINE_string("out", os.path.join(REPO, "benchmarks", "results", "distribute_speed.json"),
                    "Output JSON.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  from absl import flags as absl_flags  # pylint: disable=import-outside-toplevel
  from aop_tf import cli, config, train  # pylint: disable=import-outside-toplevel

  class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
      super().__init__()
      self.seconds, self._start = [], 0.0

    def on_epoch_begin(self, epoch, logs=None):
      self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      self.seconds.append(time.perf_counter() - self._start)

  flag_values = absl_flags.FlagValues()
  config.define_flags(flag_values)
  flag_values(cli.flagfiles_first(["x", f"--flagfile={REPO}/aop_tf/configs/cpu.cfg"]))
  base = config.from_flags(flag_values)
  rows = []
  with tempfile.TemporaryDirectory(prefix="aop_dist_speed_") as tmp:
    for kind, batch in (("none", 8), ("mirrored", 4)):
      timer = EpochTimer()
      spec = base.replace(data_dir=FLAGS.dataset, model_dir=os.path.join(tmp, kind),
                          distribute=kind, batch_size=batch, steps_per_epoch=FLAGS.steps,
                          epochs=FLAGS.epochs, val_split="", num_tb_images=0, verbose=0,
                          max_train_minutes=0, checkpoint_every=0)
      train.train(spec, extra_callbacks=[timer])
      timed = timer.seconds[1:]
      median = statistics.median(timed)
      rows.append({"distribute": kind, "replicas": 1 if kind == "none" else 2,
                   "batch_per_replica": batch, "global_batch": 8,
                   "epoch_seconds": [round(s, 2) for s in timed],
                   "steps_per_s": round(FLAGS.steps / median, 3),
                   "images_per_s": round(8 * FLAGS.steps / median, 1),
                   "load_1min": round(os.getloadavg()[0], 2)})
      print(f"{kind:9s}: {rows[-1]['steps_per_s']:.3f} steps/s, {rows[-1]['images_per_s']} "
            f"images/s (epochs {rows[-1]['epoch_seconds']} s)", flush=True)
  with open(FLAGS.out, "w") as f:
    json.dump({"what": "cpu.cfg training steps/s, global batch 8, 2 logical CPUs on 2 cores",
               "rows": rows}, f, indent=2)
  print(f"wrote {FLAGS.out}")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
