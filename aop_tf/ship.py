"""Builds and measures a shipped model (`aop_tf.zoo` is the registry that finds it by name).

  python -m aop_tf.zoo --name=psfhs --members=runs/a,runs/b,... --data_dir=data/psfhs
  python -m aop_tf.zoo --name=psfhs --measure_only

(`python -m aop_tf.ship` is the same program.) `build` averages training runs (`aop_tf.ensemble`),
exports the ensemble as int8 TFLite calibrated on the train split (`aop_tf.export`), installs it in
`aop_tf/models/<name>/` with its `model_card.json`, and `measure`s the installed file on the val
split (`aop_tf.evaluate`): the card's `val` figures, the low-confidence flag's threshold and the
AoP uncertainty's floor, all chosen on val. It drives those entry points, so nothing in `aop_tf`
imports it.
"""

import math
import os
import shutil
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from aop_tf import cli
from aop_tf import ensemble
from aop_tf import evaluate
from aop_tf import export
from aop_tf import metrics
from aop_tf import model_dir as model_dir_lib
from aop_tf import zoo

PSFHS_CITATION = (
    "Chen et al., \"PSFHS: intrapartum ultrasound image dataset for AI-based segmentation of "
    "pubic symphysis and fetal head\", Scientific Data 11, 2024 (Zenodo record 10969427). The "
    "data was published for research use; cite the paper when you use this model.")
BAD_AOP_DEG = 10.0  # the flag is chosen to catch at least half of the AoP errors above this


def _member_record(folder, checkpoint):
  """What the card says about one member run: its seed, epochs, training minutes, checkpoint."""
  spec = model_dir_lib.read_spec(folder)
  state = model_dir_lib.read_state(folder) or {}
  return {"run": os.path.basename(os.path.normpath(folder)), "checkpoint": checkpoint,
          "seed": spec.run.seed, "epochs": state.get("epoch"),
          "train_minutes": round(state.get("train_seconds", 0.0) / 60, 1),
          "unlabeled_split": spec.semi.unlabeled_split or None}


def _sections(report_dir):
  """The card's `val`, `flag` and `uncertainty` sections from an `aop_tf.evaluate` output folder
  of the installed file."""
  report = model_dir_lib.read_json(os.path.join(report_dir, evaluate.REPORT_FILE))
  columns = evaluate.read_per_image(os.path.join(report_dir, evaluate.PER_IMAGE_FILE))
  errors, spreads = columns["aop_error_deg"], columns["aop_spread_deg"]
  lowest = np.min(np.stack([columns[f"{n}_confidence"] for n in ("PS1", "PS2", "FH1")]), axis=0)
  bad = errors > BAD_AOP_DEG
  # The flag: lowest peak confidence below a threshold; chosen here, on val, so that it catches
  # at least half of the > 10 deg AoP errors (scores: 1 - confidence, higher = more suspect).
  t = metrics.threshold_for_recall(1.0 - lowest, bad, 0.5)
  min_confidence = None if t is None else math.ceil((1.0 - t) * 1e4 + 1e-6) / 1e4
  flag = (metrics.flag_summary(1.0 - lowest, errors, 1.0 - min_confidence + 1e-9, BAD_AOP_DEG)
          if min_confidence is not None else {})
  flag.pop("threshold", None)
  auroc = metrics.auroc(1.0 - lowest, bad)
  val = {
      "split": "PSFHS val (200 images, 256x256; other subjects than train)",
      "mre_512": report["mre_512"], "mre_px": report["mre_px"],
      "aop_error_deg": report["aop_error_deg"], "aop_agreement_120": report["aop_agreement_120"],
      "inference_ms_per_image_batch16": report["inference_ms_per_image"],
  }
  flag = dict(flag, min_confidence=min_confidence,
              auroc_min_confidence=auroc if math.isfinite(auroc) else None,
              chosen_on="PSFHS val, the split it is reported on")
  # The AoP uncertainty predict reports: sqrt(spread^2 + floor^2), the floor making its mean
  # square equal the mean squared AoP error on val (the members' spread alone sees only the part
  # of the error where they disagree).
  ok = np.isfinite(errors) & np.isfinite(spreads)
  floor = (float(np.sqrt(max(0.0, np.mean(errors[ok] ** 2) - np.mean(spreads[ok] ** 2))))
           if ok.any() else None)
  rms = float(np.sqrt(np.mean(errors[ok] ** 2))) if ok.any() else None
  uncertainty = {"floor_deg": floor, "rule": "sqrt(aop_spread_deg^2 + floor_deg^2)",
                 "rms_aop_error_deg": rms,
                 "median_spread_deg": float(np.median(spreads[ok])) if ok.any() else None,
                 "chosen_on": "PSFHS val, the split it is reported on"}
  return val, flag, uncertainty


def measure(name, data_dir, root=None, work_dir="runs"):
  """Evaluates the installed `<root>/<name>/model.tflite` on `data_dir`'s val split and rewrites
  its card's `val`, `flag` and `uncertainty` sections. Returns the card."""
  target = os.path.join(root or zoo.ROOT, name)
  eval_dir = os.path.join(work_dir, f"zoo_{name}", "eval_val_shipped")
  evaluate.evaluate(os.path.join(target, "model.tflite"), data_dir=data_dir, split="val",
                    output_dir=eval_dir, overlays=0, progress=False, verbose=False)
  card = zoo.card_of(target)
  card["val"], card["flag"], card["uncertainty"] = _sections(eval_dir)
  model_dir_lib.write_json(os.path.join(target, zoo.CARD_FILE), card)
  print(f"[zoo] {target}: val MRE {card['val']['mre_512']['mean']:.2f} px (512 space), AoP "
        f"error {card['val']['aop_error_deg']['mean']:.2f} deg; flag below confidence "
        f"{card['flag'].get('min_confidence')}; AoP uncertainty floor "
        f"{card['uncertainty']['floor_deg']:.2f} deg", flush=True)
  return card


def build(name, members, data_dir, checkpoint="latest", work_dir="runs", root=None,
          command=None):
  """Averages `members` (training directories), exports the ensemble as int8 TFLite calibrated
  on `data_dir`'s train split, installs `model.tflite`, `export_info.json` and `model_card.json`
  in `<root>/<name>/`, and `measure`s the installed file on the val split.

  Returns the card (dict).
  """
  root = root or zoo.ROOT
  run_dir = os.path.join(work_dir, f"zoo_{name}")
  export_dir = os.path.join("saved_models", f"zoo_{name}")
  print(f"[zoo] 1/3 averaging {len(members)} runs -> {run_dir}", flush=True)
  ensemble.build(members, run_dir, checkpoint)
  print(f"[zoo] 2/3 exporting int8 TFLite -> {export_dir}", flush=True)
  info = export.export_model_dir(run_dir, export_dir, quantize="int8", calibration_data=data_dir)
  card = {
      "name": name,
      "summary": (f"An average of {len(members)} cpu.cfg U-Nets (heatmaps averaged before one "
                  "decoder) trained on PSFHS train, int8 TFLite."),
      "intended_use": ("Research on automatic AoP measurement in intrapartum transperineal "
                       "ultrasound. Not a medical device; not for clinical decisions."),
      "training_data": ("PSFHS train: 838 images, 256x256 gray, two hospitals; landmarks derived "
                        "from the segmentation masks by the IUGC rule (data_prep/masks.py)."),
      "citation": PSFHS_CITATION,
      "members": [_member_record(m, checkpoint) for m in members],
      "build_command": command,
      "export": {"quantization": info["quantization"],
                 "calibration_images": info["calibration_images"],
                 "tflite_bytes": info["tflite"]["bytes"],
                 "tflite_drift_real_images": info["verification"].get("tflite_real")},
  }
  target = os.path.join(root, name)
  os.makedirs(target, exist_ok=True)
  for file in ("model.tflite", "export_info.json"):
    shutil.copyfile(os.path.join(export_dir, file), os.path.join(target, file))
  model_dir_lib.write_json(os.path.join(target, zoo.CARD_FILE), card)
  print(f"[zoo] 3/3 installed {target}; measuring it on val", flush=True)
  return measure(name, data_dir, root, work_dir)


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # TFDS logs every dataset it opens at INFO.
  if FLAGS.measure_only:
    measure(FLAGS.name, FLAGS.data_dir)
    return 0
  if len(FLAGS.members) < 2:
    raise app.UsageError("--members needs two or more training directories.")
  build(FLAGS.name, FLAGS.members, FLAGS.data_dir, FLAGS.checkpoint,
        command="python -m aop_tf.zoo " + " ".join(sys.argv[1:]))
  return 0


def _define_flags():
  """Defined only when run as a program, so importing the module defines no global flags."""
  flags.DEFINE_string("name", "psfhs", "Shipped model name: installs aop_tf/models/<name>/.")
  flags.DEFINE_list("members", [], "Training directories to average (two or more).")
  flags.DEFINE_string("data_dir", "data/psfhs", "Built dataset: its train split calibrates int8, "
                      "its val split measures the exported file.")
  flags.DEFINE_string("checkpoint", "latest", "Each member's checkpoint (latest: the final "
                      "epoch, not picked on val).")
  flags.DEFINE_bool("measure_only", False, "Only measure the installed model on val again and "
                    "rewrite its card's val, flag and uncertainty sections.")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "zoo")
