"""Do two evaluations of the same images give the same figures? Per column, the largest difference.

  python -m benchmarks.same_figures --before=OLD/eval_val --after=NEW/eval_val \
      --out=benchmarks/results/same_figures_smoke.json

`--before` / `--after` are folders written by `python -m aop_tf.evaluate` (per_image.csv and
report.json), e.g. the same checkpoint evaluated by two versions of the code. Writes, per numeric
column of per_image.csv, the largest absolute difference over the images, the headline figures of
both reports, and `identical` (every value equal to the last printed digit).
"""

import csv
import json
import math
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("before", None, "Evaluation folder of the reference run.")
flags.DEFINE_string("after", None, "Evaluation folder to compare with it.")
flags.DEFINE_string("out", None, "JSON file to write (default: print only).")


def _rows(folder):
  with open(os.path.join(folder, "per_image.csv"), newline="") as f:
    return list(csv.DictReader(f))


def _headline(folder):
  with open(os.path.join(folder, "report.json")) as f:
    report = json.load(f)
  return {"n_images": report["n_images"], "mre_px": report["mre_px"]["mean"],
          "mre_512": report["mre_512"]["mean"], "aop_error_deg": report["aop_error_deg"]["mean"],
          "model": report["model"].get("path"), "decode": report.get("decode")}


def _number(text):
  return float(text) if text not in ("", None) else math.nan


def compare(before, after):
  """{column: largest |after - before|} over the images of two per_image.csv files."""
  a, b = _rows(before), _rows(after)
  if [r["filename"] for r in a] != [r["filename"] for r in b]:
    raise ValueError(f"{before} and {after} do not hold the same images in the same order.")
  worst = {}
  for ra, rb in zip(a, b):
    for key, value in ra.items():
      if key == "filename":
        continue
      x, y = _number(value), _number(rb.get(key))
      same_nan = math.isnan(x) and math.isnan(y)
      diff = 0.0 if same_nan else abs(x - y)
      worst[key] = max(worst.get(key, 0.0), diff)
  return worst


def main(argv):
  del argv
  worst = compare(FLAGS.before, FLAGS.after)
  result = {"before": _headline(FLAGS.before), "after": _headline(FLAGS.after),
            "max_abs_difference": worst,
            "identical": all(v == 0.0 for v in worst.values())}
  print(json.dumps({k: result[k] for k in ("before", "after", "identical")}, indent=1))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=1, allow_nan=True)
      f.write("\n")


if __name__ == "__main__":
  flags.mark_flags_as_required(["before", "after"])
  app.run(main)
