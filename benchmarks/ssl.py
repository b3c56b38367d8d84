"""Does learning from unlabeled images pay? Scarce labels simulated on PSFHS (issue 16).

  python -m benchmarks.ssl --make_list        # writes benchmarks/ssl/psfhs_labeled_300.txt
  python -m benchmarks.ssl --arms=sup300_s42,ssl_s42,sup300_s7,ssl_s7,sup838_s42

The labeled subset: 300 of the 838 PSFHS train images, by whole 40-file blocks (neighbouring file
numbers are frames of one recording) drawn with a seed; 300 is 7.5 blocks, so the eighth block is
split and its last 20 files are the only unlabeled images with labeled neighbours. The other 538
train images are the unlabeled split (`data_prep.build --labeled_list`, no landmarks, no masks).

Arms, each trained with `aop_tf.train` and the same 60-minute budget (`--max_train_minutes=60`;
`--epochs` of each arm sized so that its cosine schedule ends inside the budget, from the epoch
times measured here), then evaluated on PSFHS val (200 images) at the final epoch:
  sup300_s<seed>   cpu.cfg on the 300 labeled images
  ssl_s<seed>      cpu.cfg + ssl.cfg (mean teacher) on the 300 + the 538 unlabeled
  sup838_s<seed>   cpu.cfg on all 838 labeled images
  sslps_s<seed>    as ssl, but only the teacher's PS1 and PS2 train the student
                   (--pseudo_landmarks=symphysis)
Writes `benchmarks/results/ssl.json` (one entry per arm, merged with earlier runs of other arms).
"""

import collections
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

from benchmarks import accuracy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST = os.path.join(REPO, "benchmarks", "ssl", "psfhs_labeled_300.txt")
CONFIGS = os.path.join(REPO, "aop_tf", "configs")
FIRST_FILE, BLOCK = 3744, 40  # PSFHS files 03744..05101, split by blocks of 40 file numbers

# Epochs that end each arm's cosine schedule at about 52-54 of the 60 minutes here (the budget
# counts validation too): about 25 s per 300-image epoch supervised, 51 s with the mean teacher (37
# steps of 8 + 8 images; a 4-epoch pilot), 58 s per 838-image epoch (sessions 5-7), validation
# every 4 epochs included.
ARMS = {
    "sup300": {"data": "psfhs_ssl300", "flagfiles": ["cpu.cfg"], "epochs": 130},
    "ssl": {"data": "psfhs_ssl300", "flagfiles": ["cpu.cfg", "ssl.cfg"], "epochs": 62},
    "sup838": {"data": "psfhs", "flagfiles": ["cpu.cfg"], "epochs": 55},
    # The mean teacher with the symphysis ends only: FH1 got worse under "ssl" (seed 42).
    "sslps": {"data": "psfhs_ssl300", "flagfiles": ["cpu.cfg", "ssl.cfg"], "epochs": 62,
              "args": ["--pseudo_landmarks=symphysis"]},
}

flags.DEFINE_bool("make_list", False, "Write the labeled-subset list and stop.")
flags.DEFINE_list("arms", [], "Arms to run, <arm>_s<seed>, e.g. sup300_s42,ssl_s7.")
flags.DEFINE_integer("list_seed", 0, "Seed of the block draw of the labeled subset.")
flags.DEFINE_integer("labeled", 300, "Size of the labeled subset.")
flags.DEFINE_string("results", os.path.join(REPO, "benchmarks", "results", "ssl.json"),
                    "JSON file of the arms (kept across runs).")
FLAGS = flags.FLAGS


def labeled_subset(names, count, seed):
  """`count` file names from whole blocks drawn in a seeded order; the last block drawn is cut."""
  blocks = collections.defaultdict(list)
  for name in sorted(names):
    blocks[(int(name[:5]) - FIRST_FILE) // BLOCK].append(name)
  order = np.random.default_rng(seed).permutation(sorted(blocks))
  chosen = []
  for block in order:
    chosen.extend(blocks[block][:count - len(chosen)])
    if len(chosen) == count:
      return sorted(chosen)
  raise ValueError(f"only {len(chosen)} names; cannot pick {count}")


def make_list(path, count, seed):
  import csv  # pylint: disable=import-outside-toplevel
  from data_prep import build  # pylint: disable=import-outside-toplevel
  with open(os.path.join(build.default_psfhs_dir(), "train.csv"), encoding="utf-8-sig") as f:
    names = [row["Filename"] for row in csv.DictReader(f)]
  chosen = labeled_subset(names, count, seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(f"# PSFHS train images kept labeled: {count} of {len(names)}, whole 40-file blocks "
            f"drawn with seed {seed} (python -m benchmarks.ssl --make_list)\n")
    f.write("\n".join(chosen) + "\n")
  print(f"wrote {path}: {len(chosen)} names from blocks "
        f"{sorted({(int(n[:5]) - FIRST_FILE) // BLOCK for n in chosen})}")


def ensure_data(name):
  """The dataset folder of an arm, built on first use."""
  from data_prep import build  # pylint: disable=import-outside-toplevel
  out = os.path.join(REPO, "data", name)
  if not os.path.isdir(os.path.join(out, "aop_landmarks")):
    build.build_dataset("masks", out_dir=out,
                        labeled_list=LIST if name == "psfhs_ssl300" else None)
  return out


def run_arm(label):
  arm, _, seed = label.rpartition("_s")
  setting = ARMS[arm]
  data_dir = ensure_data(setting["data"])
  flagfile, *more = [os.path.join(CONFIGS, f) for f in setting["flagfiles"]]
  train_args = [f"--flagfile={f}" for f in more] + [f"--seed={seed}",
                                                   f"--epochs={setting['epochs']}",
                                                   "--max_train_minutes=60",
                                                   *setting.get("args", [])]
  result = accuracy.measure(flagfile, os.path.join("runs", f"ssl_{label}"), data_dir, train_args)
  return {"arm": arm, "seed": int(seed), "data": setting["data"], **result}


def main(argv):
  del argv
  if FLAGS.make_list:
    make_list(LIST, FLAGS.labeled, FLAGS.list_seed)
    return
  results = {}
  if os.path.exists(FLAGS.results):
    with open(FLAGS.results) as f:
      results = json.load(f)
  for label in FLAGS.arms:
    results[label] = run_arm(label)
    accuracy.write_json(FLAGS.results, results)
    print("\n".join(accuracy.summary_lines(label, results[label])), flush=True)
  print(f"wrote {FLAGS.results}")


if __name__ == "__main__":
  sys.exit(app.run(main))
