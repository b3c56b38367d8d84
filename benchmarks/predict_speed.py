"""`predict --model=<shipped>` on 500 PSFHS images: wall time and peak memory, TensorFlow blocked.

  python -m benchmarks.predict_speed --models=psfhs,psfhs_ensemble --repeats=3

Each run is a fresh `python -m aop_tf.predict` process (start-up, model load, decoding, writing
the CSV and all) under `/usr/bin/time`, with `tensorflow`, `keras` and `tensorflow_datasets`
made unimportable first, so a run that needed TensorFlow would fail rather than be slow. The
images are the first 500 PSFHS files by name (train and val alike; nothing is scored). Writes
benchmarks/results/predict_speed.json: per model the median and each run's wall seconds and
peak RSS (MiB), and the load average beside it. Goal (issue 27): <= 5 s and <= 300 MB.
"""

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_list("models", ["psfhs", "psfhs_ensemble"], "Shipped names or model paths.")
flags.DEFINE_integer("images", 500, "How many PSFHS images.")
flags.DEFINE_integer("repeats", 3, "Runs per model.")
flags.DEFINE_string("out", os.path.join(REPO, "benchmarks", "results", "predict_speed.json"),
                    "JSON written here.")
FLAGS = flags.FLAGS

# Run as `python -c`: TensorFlow and friends cannot be imported, then predict runs as __main__.
_BLOCKED_MAIN = (
    "import runpy, sys\n"
    "for name in ('tensorflow', 'keras', 'tensorflow_datasets'):\n"
    "  sys.modules[name] = None\n"
    "sys.argv = ['aop_tf.predict'] + sys.argv[1:]\n"
    "runpy.run_module('aop_tf.predict', run_name='__main__', alter_sys=True)\n")


def run_once(model, list_file, out_dir):
  """(wall seconds, peak RSS MiB) of one predict process; raises if it fails."""
  stats = os.path.join(out_dir, "time.txt")
  cmd = ["/usr/bin/time", "-f", "%e %M", "-o", stats, sys.executable, "-c", _BLOCKED_MAIN,
         f"--model={model}", f"--inputs=@{list_file}",
         f"--output={os.path.join(out_dir, 'p.csv')}"]
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"predict --model={model} failed ({done.returncode}): "
                       f"{done.stderr.strip().splitlines()[-1:]}")
  with open(stats) as f:
    wall, rss_kib = f.read().split()[-2:]
  return float(wall), float(rss_kib) / 1024.0


def main(argv):
  del argv
  from data_prep import build  # pylint: disable=import-outside-toplevel
  images = os.path.join(build.default_psfhs_dir(), "images")
  if not os.path.isdir(images):
    raise app.UsageError(f"PSFHS images not found at {images}: set AOP_PSFHS_DIR.")
  names = sorted(n for n in os.listdir(images) if n.endswith(".png"))[:FLAGS.images]
  result = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m benchmarks.predict_speed " + " ".join(sys.argv[1:]),
            "images": len(names), "tensorflow_blocked": True, "models": {}}
  with tempfile.TemporaryDirectory() as tmp:
    list_file = os.path.join(tmp, "images.txt")
    with open(list_file, "w") as f:
      f.write("\n".join(os.path.join(images, n) for n in names) + "\n")
    for model in FLAGS.models:
      runs = [run_once(model, list_file, tmp) for _ in range(FLAGS.repeats)]
      result["models"][model] = {
          "wall_s_median": statistics.median(w for w, _ in runs),
          "peak_rss_mib_median": statistics.median(m for _, m in runs),
          "runs": [{"wall_s": w, "peak_rss_mib": round(m, 1)} for w, m in runs],
          "load_avg": [round(v, 2) for v in os.getloadavg()]}
      print(f"{model}: {result['models'][model]['wall_s_median']:.2f} s, "
            f"{result['models'][model]['peak_rss_mib_median']:.0f} MiB (median of {len(runs)})",
            flush=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  print(f"-> {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
