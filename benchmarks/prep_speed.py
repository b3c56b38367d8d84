"""Data-prep speed, serial vs parallel: images per second of `data_prep.build`, and the 31k
projection.

  python -m benchmarks.prep_speed [--workers=1,2] [--repeats=3] [--n_512=600]

Two workloads, each built `--repeats` times per worker count (the median is reported):
- PSFHS as it comes (`--source=masks`: 256x256 images and masks, landmarks from the contours),
  all 1038 images;
- unlabeled 512x512 images (`--source=images`, the IUGC unlabeled set's size): `--n_512` PSFHS
  images upsampled to 512 and written as PNGs to a temporary folder first. Its images per second
  give the projected build time of 31,000 such images.
Writes `benchmarks/results/prep_speed.json`.
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import cv2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IUGC_UNLABELED = 31000

flags.DEFINE_list("workers", ["1", "2"], "Worker threads to compare.")
flags.DEFINE_integer("repeats", 3, "Builds per setting.")
flags.DEFINE_integer("n_512", 600, "512x512 images for the unlabeled workload.")
flags.DEFINE_string("out", os.path.join(REPO, "benchmarks", "results", "prep_speed.json"),
                    "Output JSON.")
FLAGS = flags.FLAGS


def _time_build(tmp, workers, **kwargs):
  from data_prep import build  # pylint: disable=import-outside-toplevel
  out = tempfile.mkdtemp(dir=tmp)
  start = time.perf_counter()
  build.build_dataset(out_dir=out, workers=workers, verbose=False, **kwargs)
  return time.perf_counter() - start


def _write_512(raw, folder, count):
  names = sorted(os.listdir(os.path.join(raw, "images")))[:count]
  for name in names:
    image = cv2.imread(os.path.join(raw, "images", name), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(os.path.join(folder, name), cv2.resize(image, (512, 512), cv2.INTER_LINEAR))
  return len(names)


def main(argv):
  del argv
  from data_prep import build  # pylint: disable=import-outside-toplevel
  raw = build.default_psfhs_dir()
  if not os.path.isdir(raw):
    print(f"prep_speed: {raw} not found (set $AOP_PSFHS_DIR); nothing measured.")
    return 1
  rows = []
  with tempfile.TemporaryDirectory(prefix="aop_prep_speed_") as tmp:
    folder = os.path.join(tmp, "images_512")
    os.makedirs(folder)
    n_512 = _write_512(raw, folder, FLAGS.n_512)
    workloads = {"psfhs_masks_256": (1038, dict(source="masks", data_dir=raw)),
                 "unlabeled_512": (n_512, dict(source="images", data_dir=folder))}
    for name, (count, kwargs) in workloads.items():
      for workers in map(int, FLAGS.workers):
        seconds = [_time_build(tmp, workers, **kwargs) for _ in range(FLAGS.repeats)]
        median = statistics.median(seconds)
        rows.append({"workload": name, "images": count, "workers": workers,
                     "seconds": [round(s, 2) for s in seconds], "seconds_median": round(median, 2),
                     "images_per_s": round(count / median, 1),
                     "load_1min": round(os.getloadavg()[0], 2)})
        print(f"{name:16s} workers {workers}: {count / median:6.1f} images/s "
              f"(median of {[round(s, 1) for s in seconds]} s), load {rows[-1]['load_1min']}",
              flush=True)
  best = max((r for r in rows if r["workload"] == "unlabeled_512"), key=lambda r: r["images_per_s"])
  projection = {"images": IUGC_UNLABELED, "workers": best["workers"],
                "minutes": round(IUGC_UNLABELED / best["images_per_s"] / 60, 1)}
  print(f"31,000 unlabeled 512x512 images: about {projection['minutes']} min on "
        f"{projection['workers']} workers here")
  report = {"what": "data_prep.build wall time per workload and worker count (median of repeats)",
            "cpu_count": os.cpu_count(), "rows": rows, "projection_31k_512": projection}
  with open(FLAGS.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {FLAGS.out}")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
