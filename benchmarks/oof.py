"""Out-of-fold predictions on PSFHS train: what every choice is made on, so that val stays the test.

  python -m benchmarks.oof --stage=folds      # benchmarks/oof/folds.json + per-fold CSVs
  python -m benchmarks.oof --stage=data       # data/oof/fold<k>: train = the other folds
  python -m benchmarks.oof --stage=train      # runs/oof_f<k>: cpu.cfg on the other folds
  python -m benchmarks.oof --stage=predict    # benchmarks/results/oof/predictions.npz

k folds of whole 40-file blocks (neighbouring file numbers are frames of one recording, as in the
train/val split): blocks are shuffled with a seed and dealt to the fold that has fewest images so
far. Each fold's model is cpu.cfg trained on the other k - 1 folds (`--epochs`, fewer than the
shipped recipe's to fit the CPU budget: stated beside every figure), predicting its held-out fold
from its last checkpoint (no checkpoint is chosen on the held-out images). The predictions of the
k models together cover all 838 train images once: the quality score, the flag threshold and the
interval are fitted on them (`benchmarks.quality`), never on val.
"""

import collections
import csv
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDS_DIR = os.path.join(REPO, "benchmarks", "oof")
FIRST_FILE, BLOCK = 3744, 40  # PSFHS files 03744..05101, split by blocks of 40 file numbers

flags.DEFINE_enum("stage", "folds", ["folds", "data", "train", "predict"], "What to do.")
flags.DEFINE_integer("folds", 4, "k.")
flags.DEFINE_integer("seed", 0, "Seed of the block shuffle.")
flags.DEFINE_integer("epochs", 22, "Epochs of each fold's cpu.cfg run (cosine schedule).")
flags.DEFINE_list("only", [], "Folds to run (default all), e.g. 0,2.")
flags.DEFINE_string("psfhs_dir", os.environ.get("AOP_PSFHS_DIR", os.path.join(
    os.path.dirname(REPO), "shared", "data", "psfhs")), "PSFHS folder.")
FLAGS = flags.FLAGS


def block_of(name):
  return (int(os.path.basename(name)[:5]) - FIRST_FILE) // BLOCK


def make_folds(names, k, seed):
  """{fold: sorted names}: whole blocks, shuffled, each to the fold with fewest images so far."""
  blocks = collections.defaultdict(list)
  for name in names:
    blocks[block_of(name)].append(name)
  folds = {f: [] for f in range(k)}
  for block in np.random.default_rng(seed).permutation(sorted(blocks)):
    smallest = min(folds, key=lambda f: (len(folds[f]), f))
    folds[smallest].extend(blocks[int(block)])
  return {f: sorted(v) for f, v in folds.items()}


def read_folds():
  with open(os.path.join(FOLDS_DIR, "folds.json")) as f:
    return {int(k): v for k, v in json.load(f)["folds"].items()}


def _train_rows():
  with open(os.path.join(FLAGS.psfhs_dir, "train.csv"), encoding="utf-8-sig") as f:
    return list(csv.DictReader(f))


def stage_folds():
  rows = _train_rows()
  folds = make_folds([r["Filename"] for r in rows], FLAGS.folds, FLAGS.seed)
  os.makedirs(FOLDS_DIR, exist_ok=True)
  by_name = {r["Filename"]: r for r in rows}
  for fold, names in folds.items():
    for part, chosen in (("holdout", names),
                         ("train", [n for f, v in folds.items() if f != fold for n in v])):
      with open(os.path.join(FOLDS_DIR, f"fold{fold}_{part}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(by_name[n] for n in sorted(chosen))
  with open(os.path.join(FOLDS_DIR, "folds.json"), "w") as f:
    json.dump({"k": FLAGS.folds, "seed": FLAGS.seed, "block": BLOCK, "first_file": FIRST_FILE,
               "command": "python -m benchmarks.oof --stage=folds",
               "folds": {str(k): v for k, v in folds.items()}}, f, indent=1)
    f.write("\n")
  print({f: len(v) for f, v in folds.items()})


def _selected():
  return [int(f) for f in FLAGS.only] if FLAGS.only else sorted(read_folds())


def _run(argv):
  print("+", " ".join(argv), flush=True)
  subprocess.run(argv, check=True, cwd=REPO)


def stage_data():
  for fold in _selected():
    _run([sys.executable, "-m", "data_prep.build", "--source=masks",
          f"--data_dir={FLAGS.psfhs_dir}", f"--out_dir=data/oof/fold{fold}", "--overwrite",
          f"--csv=train:{FOLDS_DIR}/fold{fold}_train.csv,val:{FOLDS_DIR}/fold{fold}_holdout.csv"])


def stage_train():
  for fold in _selected():
    start = time.time()
    _run([sys.executable, "-m", "aop_tf.train", "--flagfile=aop_tf/configs/cpu.cfg",
          f"--data_dir=data/oof/fold{fold}", f"--model_dir=runs/oof_f{fold}",
          f"--epochs={FLAGS.epochs}", f"--val_every={FLAGS.epochs}", "--max_train_minutes=0",
          "--verbose=2"])
    print(f"fold {fold}: {(time.time() - start) / 60:.1f} min", flush=True)


def stage_predict():
  from benchmarks import quality  # pylint: disable=import-outside-toplevel
  quality.write_oof_predictions(read_folds(), FLAGS.psfhs_dir)


def main(argv):
  del argv
  {"folds": stage_folds, "data": stage_data, "train": stage_train,
   "predict": stage_predict}[FLAGS.stage]()


if __name__ == "__main__":
  app.run(main)
