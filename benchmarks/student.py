"""The distilled student beside the 4-model ensemble it learned from: accuracy, speed, size, FLOPs.

  python -m benchmarks.student --student=saved_models/distill/model.tflite \
      --ensemble=psfhs_ensemble --student_run=runs/distill

In one run, on PSFHS val (the reported test set: nothing here is chosen on it): each TFLite file is
evaluated with `aop_tf.evaluate` (MRE in 512 space, AoP error) and timed at batch 1 on 1 and 2
threads (`benchmarks.shipped.latency`: median over the val images, 3 rounds, the same process).
FLOPs are counted from the student's Keras model (2 x multiply-adds of its convolutions), and the
int8 peak of this CPU (AVX-512 VNNI: 64 int8 multiply-adds per 512-bit instruction and core per
cycle at the clock /proc/cpuinfo reports) says how far the measured time is from the arithmetic's
floor. Writes benchmarks/results/student.json.
"""

import datetime
import json
import os

from absl import app
from absl import flags
import numpy as np

from benchmarks import shipped

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")

flags.DEFINE_string("student", None, "The student's .tflite (or a shipped name).")
flags.DEFINE_string("ensemble", None, "The ensemble's .tflite (or a shipped name).")
flags.DEFINE_string("student_run", None, "The student's training directory (FLOPs).")
flags.DEFINE_string("data_dir", os.path.join(REPO, "data", "psfhs"), "Built PSFHS dataset.")
flags.DEFINE_string("student_out", os.path.join(RESULTS, "student.json"), "JSON written here.")
FLAGS = flags.FLAGS


def conv_flops(model):
  """2 x the multiply-adds of every Conv2D / Conv2DTranspose of a Keras model, per image."""
  total = 0
  for layer in model.layers:
    name = type(layer).__name__
    if name not in ("Conv2D", "Conv2DTranspose"):
      continue
    kh, kw = layer.kernel_size
    cin = int(layer.input.shape[-1])
    cout = layer.filters
    oh, ow = int(layer.output.shape[1]), int(layer.output.shape[2])
    if name == "Conv2D":
      total += 2 * oh * ow * kh * kw * cin * cout
    else:  # every input pixel scatters a kh x kw x cout patch
      ih, iw = int(layer.input.shape[1]), int(layer.input.shape[2])
      total += 2 * ih * iw * kh * kw * cin * cout
  return total


def cpu_int8_peak_ops():
  """Peak int8 ops/s (2 per multiply-add) of this machine's cores with AVX-512 VNNI, or None."""
  with open("/proc/cpuinfo") as f:
    text = f.read()
  if "avx512_vnni" not in text:
    return None
  mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
  cores = os.cpu_count() or 1
  return 2 * 64 * cores * (max(mhz) * 1e6 if mhz else 2.0e9)


def measure(tflite, name, images):
  from aop_tf import evaluate, zoo  # pylint: disable=import-outside-toplevel
  path = zoo.resolve(tflite) or tflite
  if os.path.isdir(path):
    path = os.path.join(path, "model.tflite")
  report = evaluate.evaluate(path, data_dir=FLAGS.data_dir, split="val", overlays=0,
                             output_dir=os.path.join(REPO, "runs", f"student_bench_{name}"),
                             progress=False, verbose=False)
  return {"tflite": os.path.relpath(path, REPO), "bytes": os.path.getsize(path),
          "mre_512_mean": report["mre_512"]["mean"],
          "mre_512_per_landmark": report["mre_512"].get("per_landmark"),
          "aop_error_deg_mean": report["aop_error_deg"]["mean"],
          "aop_error_deg_median": report["aop_error_deg"]["median"],
          "latency_batch1": shipped.latency(path, images)}


def main(argv):
  del argv
  from aop_tf import model_dir  # pylint: disable=import-outside-toplevel
  from aop_tf import sources  # pylint: disable=import-outside-toplevel
  images = [ex["image"] for ex in sources.TfdsSource(FLAGS.data_dir, "val")]
  result = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"), "split": "PSFHS val (200 images), the reported test set"}
  result["ensemble"] = measure(FLAGS.ensemble, "ensemble", images)
  result["student"] = measure(FLAGS.student, "student", images)
  if FLAGS.student_run:
    model, _ = model_dir.load_model(FLAGS.student_run, "latest")
    flops = conv_flops(model)
    peak = cpu_int8_peak_ops()
    result["student"]["gflops_per_image"] = round(flops / 1e9, 3)
    result["student"]["params"] = int(model.count_params())
    if peak:
      result["cpu_int8_peak_tops"] = round(peak / 1e12, 3)
      result["student"]["floor_ms_at_int8_peak"] = round(1e3 * flops / peak, 2)
  s, e = result["student"], result["ensemble"]
  result["student_minus_ensemble"] = {
      "mre_512": s["mre_512_mean"] - e["mre_512_mean"],
      "aop_error_deg": s["aop_error_deg_mean"] - e["aop_error_deg_mean"],
      "speedup_2_threads": e["latency_batch1"]["threads_2_ms_median"] /
                           s["latency_batch1"]["threads_2_ms_median"]}
  result["goals"] = {"mre_512_within": 0.15, "aop_error_within_deg": 0.1,
                     "ms_batch1_2_threads": 5.0}
  with open(FLAGS.student_out, "w") as f:
    json.dump(result, f, indent=2, default=lambda v: float(v) if isinstance(v, np.floating)
              else None)
    f.write("\n")
  print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
  app.run(main)
