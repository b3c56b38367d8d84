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
  self_s<seed>     offline self-training: the trained sup300_s<seed> model labels the 538
                   unlabeled images (`aop_tf.predict --format=pseudo` rows, the filters of
                   ssl.cfg); cpu.cfg trains a new model on the 300 (with masks) + the kept
                   pseudo-labels (`data_prep.build --pseudo_labels`). Its 60 minutes come on
                   top of the teacher's: twice the compute of the other arms.
  noisy_s<seed>    noisy student: as self, and the student also learns the teacher's heatmaps
                   (`--teacher`, blended half and half with the pseudo-label's or label's
                   Gaussian, warped with each augmented view) under cpu.cfg's strong
                   augmentation, with spatial dropout 0.1 in its decoder (`--dropout`). The
                   weight and the rate were set beforehand, not tuned.
Writes `benchmarks/results/ssl.json` (one entry per arm, merged with earlier runs of other arms).

  python -m benchmarks.ssl --pseudo_quality=sup300_s42,ssl_s42

How good would each trained arm's landmarks be as pseudo-labels? The 538 "unlabeled" train images
do have labels: each arm's inference network (the teacher for mean-teacher arms) predicts them
(`aop_tf.evaluate`, un-augmented, FH1 by heatmap and by tangent), and the filters of `ssl.cfg`
(`aop_tf.pseudo.verdicts`) judge its predictions. Per landmark: the error of all, kept and dropped
images, and by confidence quartile. Writes `benchmarks/results/ssl_pseudo_quality.json`.
"""

import collections
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

from aop_tf import LANDMARK_NAMES
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
    # Offline pseudo-labels from a fixed teacher: the mean teacher's own FH1 drifted (issue 16).
    # About 810 labeled images per epoch, so sup838's epochs.
    "self": {"teacher": "sup300", "flagfiles": ["cpu.cfg"], "epochs": 55},
    # The noisy student (issue 27): self's data, the teacher's maps as targets, model noise.
    "noisy": {"teacher": "sup300", "flagfiles": ["cpu.cfg"], "epochs": 55, "distill": True,
              "args": ["--teacher_weight=0.5", "--dropout=0.1"]},
}

flags.DEFINE_bool("make_list", False, "Write the labeled-subset list and stop.")
flags.DEFINE_list("arms", [], "Arms to run, <arm>_s<seed>, e.g. sup300_s42,ssl_s7.")
flags.DEFINE_integer("list_seed", 0, "Seed of the block draw of the labeled subset.")
flags.DEFINE_integer("labeled", 300, "Size of the labeled subset.")
flags.DEFINE_string("results", os.path.join(REPO, "benchmarks", "results", "ssl.json"),
                    "JSON file of the arms (kept across runs).")
flags.DEFINE_list("pseudo_quality", [], "Trained arms (<arm>_s<seed>) whose predictions on the "
                  "538 unlabeled train images to score as pseudo-labels, against their labels.")
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


def train_names():
  """The PSFHS train file names, in train.csv's order."""
  import csv  # pylint: disable=import-outside-toplevel
  from data_prep import build  # pylint: disable=import-outside-toplevel
  with open(os.path.join(build.default_psfhs_dir(), "train.csv"), encoding="utf-8-sig") as f:
    return [row["Filename"] for row in csv.DictReader(f)]


def make_list(path, count, seed):
  names = train_names()
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


def ssl_filters():
  """The pseudo-label filters of `ssl.cfg` over `cpu.cfg` (a `config.SemiSpec`)."""
  from aop_tf import config  # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()
  config.define_flags(values)
  values(["ssl", f"--flagfile={os.path.join(CONFIGS, 'cpu.cfg')}",
          f"--flagfile={os.path.join(CONFIGS, 'ssl.cfg')}"])
  return config.from_flags(values).semi


def labeled_names():
  """The committed labeled subset (a set of file names)."""
  from data_prep import unlabeled  # pylint: disable=import-outside-toplevel
  return unlabeled.read_list(LIST)


def unlabeled_names():
  """The 538 PSFHS train file names outside the labeled subset."""
  labeled = labeled_names()
  return [name for name in train_names() if name not in labeled]


def ensure_pseudo_data(teacher_label):
  """The dataset of a self-training arm, built on first use: `teacher_label`'s run predicts the
  unlabeled images; the 300 labeled (masks source) plus the kept pseudo-labels form train."""
  from aop_tf import predict, predictor  # pylint: disable=import-outside-toplevel
  from data_prep import build  # pylint: disable=import-outside-toplevel
  out = os.path.join(REPO, "data", f"psfhs_pseudo_{teacher_label}")
  if os.path.isdir(os.path.join(out, "aop_landmarks")):
    return out
  os.makedirs(out, exist_ok=True)
  psfhs = build.default_psfhs_dir()
  images = os.path.join(psfhs, "images")
  model = predictor.load(os.path.join("runs", f"ssl_{teacher_label}"), "latest")
  rows, failures = predict.predict_files(
      model, [os.path.join(images, name) for name in unlabeled_names()])
  if failures:
    raise RuntimeError(f"{len(failures)} unlabeled images could not be read: {failures[:3]}")
  pseudo_csv = os.path.join(out, "pseudo.csv")
  predict.write_pseudo_labels(pseudo_csv, predict.pseudo_label_rows(rows, ssl_filters(), images))
  labeled_csv = os.path.join(out, "labeled.csv")
  with open(labeled_csv, "w") as f:
    f.write("Filename\n" + "\n".join(sorted(labeled_names())) + "\n")
  build.build_dataset("masks", out_dir=out, csv={"train": labeled_csv,
                                                 "val": os.path.join(psfhs, "val.csv")},
                      pseudo_labels=pseudo_csv, pseudo_image_dir=images)
  return out


def run_arm(label):
  arm, _, seed = label.rpartition("_s")
  setting = ARMS[arm]
  distill_args = []
  if "teacher" in setting:
    teacher = f"{setting['teacher']}_s{seed}"
    data_dir = ensure_pseudo_data(teacher)
    if setting.get("distill"):
      distill_args = [f"--teacher={os.path.join(REPO, 'runs', f'ssl_{teacher}')}"]
  else:
    data_dir = ensure_data(setting["data"])
  flagfile, *more = [os.path.join(CONFIGS, f) for f in setting["flagfiles"]]
  train_args = [f"--flagfile={f}" for f in more] + distill_args + [f"--seed={seed}",
                                                   f"--epochs={setting['epochs']}",
                                                   "--max_train_minutes=60",
                                                   *setting.get("args", [])]
  result = accuracy.measure(flagfile, os.path.join("runs", f"ssl_{label}"), data_dir, train_args)
  return {"arm": arm, "seed": int(seed), "data": os.path.basename(data_dir), **result}


def _errors(columns, rows):
  """Mean error (512 space) per landmark, MRE, and AoP error mean / median over `rows` [N] bool."""
  if not rows.any():
    return {"n": 0}
  out = {"n": int(rows.sum())}
  out.update({name: float(np.mean(columns[f"err_{name}_512"][rows])) for name in LANDMARK_NAMES})
  out["mre"] = float(np.mean(columns["mre_512"][rows]))
  aop = columns["aop_error_deg"][rows]
  out["aop_mean"], out["aop_median"] = float(np.mean(aop)), float(np.median(aop))
  return out


def pseudo_quality(label, semi):
  """The arm's predictions on the unlabeled train images scored against their labels."""
  from aop_tf import evaluate, pseudo  # pylint: disable=import-outside-toplevel
  run = os.path.join("runs", f"ssl_{label}")
  labeled = labeled_names()
  result = {"run": run}
  for method in ("heatmap", "tangent"):
    out = os.path.join(run, f"eval_train_latest_{method}")
    evaluate.evaluate(run, checkpoint="latest", data_dir=os.path.join(REPO, "data", "psfhs"),
                      split="train", output_dir=out, fh1_method=method, overlays=0,
                      progress=False, verbose=False)
    columns = evaluate.read_per_image(os.path.join(out, evaluate.PER_IMAGE_FILE))
    unlabeled = np.array([name not in labeled for name in columns["filename"]])
    result[f"{method}_all"] = _errors(columns, unlabeled)
    if method != "heatmap":
      continue
    points = np.stack([np.stack([columns[f"{n}_x"], columns[f"{n}_y"]], -1)
                       for n in LANDMARK_NAMES], 1)
    confidence = np.stack([columns[f"{n}_confidence"] for n in LANDMARK_NAMES], -1)
    size = np.stack([columns["width"], columns["height"]], -1)
    verdict = pseudo.verdicts(points, confidence, size, semi)
    result["verdict_share"] = {k: float(np.mean(v[unlabeled])) for k, v in verdict.items()}
    result["kept"] = _errors(columns, unlabeled & verdict["kept"])
    result["dropped"] = _errors(columns, unlabeled & ~verdict["kept"])
    quartiles = {}
    for i, name in enumerate(LANDMARK_NAMES):
      conf, err = confidence[unlabeled, i], columns[f"err_{name}_512"][unlabeled]
      edges = np.quantile(conf, [0.25, 0.5, 0.75])
      bins = np.digitize(conf, edges)
      quartiles[name] = [float(np.mean(err[bins == q])) for q in range(4)]
    result["error_by_confidence_quartile"] = quartiles
  return result


def read_results(path):
  """A results JSON of earlier runs ({} if none yet), to merge new entries into."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def main(argv):
  del argv
  if FLAGS.make_list:
    make_list(LIST, FLAGS.labeled, FLAGS.list_seed)
    return
  if FLAGS.pseudo_quality:
    semi = ssl_filters()
    path = os.path.join(REPO, "benchmarks", "results", "ssl_pseudo_quality.json")
    results = read_results(path)
    for label in FLAGS.pseudo_quality:
      results[label] = pseudo_quality(label, semi)
      accuracy.write_json(path, results)
      print(label, json.dumps(results[label]), flush=True)
    print(f"wrote {path}")
    return
  results = read_results(FLAGS.results)
  for label in FLAGS.arms:
    results[label] = run_arm(label)
    accuracy.write_json(FLAGS.results, results)
    print("\n".join(accuracy.summary_lines(label, results[label])), flush=True)
  print(f"wrote {FLAGS.results}")


if __name__ == "__main__":
  sys.exit(app.run(main))
