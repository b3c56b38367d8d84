"""TFLite latency at batch 1, side by side in one process: nothing else, no accuracy.

  python -m benchmarks.latency --latency_models=psfhs,psfhs_ensemble,saved_models/distill_w8/model.tflite

Each model (a shipped name or a .tflite path) is timed by `benchmarks.shipped.latency` on the
first 200 PSFHS val images (median over 3 rounds, 1 and 2 threads; resize and decoding inside the
graph), one model after the other, with the load average beside each. Run it on a quiet machine:
`benchmarks.student` measures accuracy and latency together, but a training beside it shifts the
latency by 2-4x. Writes benchmarks/results/latency.json.
"""

import datetime
import json
import os
import sys

from absl import app
from absl import flags

from benchmarks import shipped

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_list("latency_models", ["psfhs", "psfhs_ensemble"], "Shipped names or .tflite paths.")
flags.DEFINE_integer("latency_images", 200, "PSFHS val images timed.")
flags.DEFINE_string("latency_out", os.path.join(REPO, "benchmarks", "results", "latency.json"),
                    "JSON written here.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import csv  # pylint: disable=import-outside-toplevel
  from aop_tf import zoo  # pylint: disable=import-outside-toplevel
  from aop_tf.io import frames  # pylint: disable=import-outside-toplevel
  from data_prep import build  # pylint: disable=import-outside-toplevel
  psfhs = build.default_psfhs_dir()
  with open(os.path.join(psfhs, "val.csv"), encoding="utf-8-sig") as f:
    names = [row["Filename"] for row in csv.DictReader(f)][:FLAGS.latency_images]
  images = [frames.read_still(os.path.join(psfhs, "images", n))[0] for n in names]
  result = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m benchmarks.latency " + " ".join(sys.argv[1:]),
            "images": len(images), "models": {}}
  for model in FLAGS.latency_models:
    path = zoo.resolve(model) or model
    tflite = os.path.join(path, "model.tflite") if os.path.isdir(path) else path
    result["models"][model] = dict(shipped.latency(tflite, images),
                                   bytes=os.path.getsize(tflite))
    print(model, result["models"][model], flush=True)
  with open(FLAGS.latency_out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  print(f"-> {FLAGS.latency_out}")


if __name__ == "__main__":
  app.run(main)
