"""Builds and measures a shipped model (`aop_tf.zoo` is the registry that finds it by name).

  python -m aop_tf.zoo --name=psfhs --members=runs/distill --data_dir=data/psfhs
  python -m aop_tf.zoo --name=psfhs_ensemble --members=runs/a,runs/b,... --data_dir=data/psfhs
  python -m aop_tf.zoo --name=psfhs --measure_only

(`python -m aop_tf.ship` is the same program.) `build` takes one training run (shipped with its
float weights, `weights.keras`, so `train --init_from=<name>` fine-tunes it) or averages several
(`aop_tf.ensemble`), exports int8 TFLite calibrated on the train split (`aop_tf.export`),
installs it in `aop_tf/models/<name>/` with its `model_card.json`, and `measure`s the installed
file on the val split (`aop_tf.evaluate`).

Protocol (from session 11): val is the reported test set. Nothing is chosen on it here: `measure`
only reports; the quality score, its flag threshold and the 90 % interval come from
`benchmarks.quality --fit` on out-of-fold train predictions (`--quality_fit`), copied into the
card as plain numbers. It drives those entry points, so nothing in `aop_tf` imports it.
"""

import os
import shutil
import sys

from absl import app
from absl import flags
from absl import logging

from aop_tf import cli
from aop_tf import ensemble
from aop_tf import evaluate
from aop_tf import export
from aop_tf import model_dir as model_dir_lib
from aop_tf import zoo

PSFHS_CITATION = (
    "Chen et al., \"PSFHS: intrapartum ultrasound image dataset for AI-based segmentation of "
    "pubic symphysis and fetal head\", Scientific Data 11, 2024 (Zenodo record 10969427). The "
    "data was published for research use; cite the paper when you use this model.")
PROTOCOL = ("PSFHS val (200 images) is the reported test set. From session 11 on, choices are made "
            "on PSFHS train (out-of-fold predictions of 4 folds of whole 40-file blocks): the "
            "quality score's weights, its flag threshold and the interval's quantile; val is "
            "scored once per shipped model. Earlier choices (cpu.cfg's recipe, the four members "
            "of psfhs_ensemble) were made on val, so figures that depend on them are optimistic.")
DEFAULT_QUALITY_FIT = os.path.join("benchmarks", "results", "quality_fit.json")


def _member_record(folder, checkpoint):
  """What the card says about one member run: its seed, epochs, training minutes, checkpoint."""
  spec = model_dir_lib.read_spec(folder)
  state = model_dir_lib.read_state(folder) or {}
  return {"run": os.path.basename(os.path.normpath(folder)), "checkpoint": checkpoint,
          "seed": spec.run.seed, "epochs": state.get("epoch"),
          "train_minutes": round(state.get("train_seconds", 0.0) / 60, 1),
          "unlabeled_split": spec.semi.unlabeled_split or None}


def _val_section(report_dir):
  """The card's `val` figures from an `aop_tf.evaluate` output folder of the installed file."""
  report = model_dir_lib.read_json(os.path.join(report_dir, evaluate.REPORT_FILE))
  return {
      "split": "PSFHS val (200 images, 256x256; other subjects than train): the reported test set",
      "mre_512": report["mre_512"], "mre_px": report["mre_px"],
      "aop_error_deg": report["aop_error_deg"], "aop_agreement_120": report["aop_agreement_120"],
      "inference_ms_per_image_batch16": report["inference_ms_per_image"],
  }


def quality_section(fit_path, val_path=None):
  """The card's `quality` section: `benchmarks.quality --fit`'s fitted numbers and its
  out-of-fold figures, plus the val figures of `benchmarks.quality --score_val` where `val_path`
  exists (None when `fit_path` does not exist)."""
  if not fit_path or not os.path.isfile(fit_path):
    return None
  fit = model_dir_lib.read_json(fit_path)
  section = dict(fit["fitted"], fitted_at=fit.get("created"), fit_command=fit.get("command"),
                 out_of_fold=fit.get("oof"))
  if val_path and os.path.isfile(val_path):
    scored = model_dir_lib.read_json(val_path)
    section["val"] = dict({k: v for k, v in scored["val"].items() if k != "rows"},
                          command=scored.get("command"), scored_at=scored.get("created"))
  return section


def measure(name, data_dir, root=None, work_dir="runs", quality_fit=DEFAULT_QUALITY_FIT):
  """Evaluates the installed `<root>/<name>/model.tflite` on `data_dir`'s val split and rewrites
  its card's `val` section, its `protocol`, and its `quality` section from `quality_fit` (the
  out-of-fold fit; none chosen on val). Returns the card."""
  target = os.path.join(root or zoo.ROOT, name)
  eval_dir = os.path.join(work_dir, f"zoo_{name}", "eval_val_shipped")
  card = zoo.card_of(target)
  for stale in ("flag", "uncertainty"):  # chosen on val before session 11
    card.pop(stale, None)
  fitted = quality_section(quality_fit, os.path.join(os.path.dirname(quality_fit or "."),
                                                     f"quality_val_{name}.json"))
  if fitted:
    card["quality"] = fitted
    model_dir_lib.write_json(os.path.join(target, zoo.CARD_FILE), card)
  evaluate.evaluate(os.path.join(target, "model.tflite"), data_dir=data_dir, split="val",
                    output_dir=eval_dir, overlays=0, progress=False, verbose=False)
  card["val"] = _val_section(eval_dir)
  card["protocol"] = PROTOCOL
  model_dir_lib.write_json(os.path.join(target, zoo.CARD_FILE), card)
  print(f"[zoo] {target}: val MRE {card['val']['mre_512']['mean']:.2f} px (512 space), AoP "
        f"error {card['val']['aop_error_deg']['mean']:.2f} deg; quality score "
        f"{'fitted on out-of-fold train' if fitted else 'absent (the peak rule applies)'}",
        flush=True)
  return card


def _save_weights(run_dir, checkpoint, path):
  """The run's network without its optimizer state, as a `.keras` file (`WEIGHTS_FILE`)."""
  name, _ = model_dir_lib.resolve_checkpoint(run_dir, checkpoint)
  model, _ = model_dir_lib.load_model(run_dir, name)
  model.save(path)
  return os.path.getsize(path)


def _summary(members, spec):
  """One sentence on what the shipped network is."""
  if len(members) > 1:
    return (f"An average of {len(members)} cpu.cfg U-Nets (heatmaps averaged before one decoder) "
            "trained on PSFHS train, int8 TFLite.")
  teacher = spec.distill.teacher
  how = (f"distilled from the {teacher} model's heatmaps (weight {spec.distill.teacher_weight:g} "
         "against the label Gaussians)" if teacher else "trained on the labels")
  return (f"One U-Net ({spec.model.base_filters} filters in its first block, depth "
          f"{spec.model.depth}) on PSFHS train, {how}; int8 TFLite, float weights in "
          f"{model_dir_lib.WEIGHTS_FILE} for fine-tuning (`train --init_from`).")


def build(name, members, data_dir, checkpoint="latest", work_dir="runs", root=None,
          command=None, quality_fit=DEFAULT_QUALITY_FIT):
  """Exports one training run, or the average of several, as int8 TFLite calibrated on
  `data_dir`'s train split; installs `model.tflite`, `export_info.json`, `model_card.json` (and
  for one run its float weights, `WEIGHTS_FILE`) in `<root>/<name>/`, and `measure`s the
  installed file on the val split.

  Returns the card (dict).
  """
  root = root or zoo.ROOT
  target = os.path.join(root, name)
  export_dir = os.path.join("saved_models", f"zoo_{name}")
  if len(members) > 1:
    run_dir = os.path.join(work_dir, f"zoo_{name}")
    print(f"[zoo] 1/3 averaging {len(members)} runs -> {run_dir}", flush=True)
    ensemble.build(members, run_dir, checkpoint)
    run_checkpoint = None
  else:
    run_dir, run_checkpoint = members[0], checkpoint
    print(f"[zoo] 1/3 one run, {run_dir} ({checkpoint})", flush=True)
  print(f"[zoo] 2/3 exporting int8 TFLite -> {export_dir}", flush=True)
  info = export.export_model_dir(run_dir, export_dir, checkpoint=run_checkpoint,
                                 quantize="int8", calibration_data=data_dir)
  card = {
      "name": name,
      "summary": _summary(members, model_dir_lib.read_spec(members[0])),
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
  os.makedirs(target, exist_ok=True)
  stale_weights = os.path.join(target, model_dir_lib.WEIGHTS_FILE)
  if len(members) > 1 and os.path.exists(stale_weights):
    os.remove(stale_weights)
  for file in ("model.tflite", "export_info.json"):
    shutil.copyfile(os.path.join(export_dir, file), os.path.join(target, file))
  if len(members) == 1:
    size = _save_weights(run_dir, checkpoint, os.path.join(target, model_dir_lib.WEIGHTS_FILE))
    card["export"]["weights_file"] = {"name": model_dir_lib.WEIGHTS_FILE, "bytes": size,
                                      "dtype": "float32"}
  model_dir_lib.write_json(os.path.join(target, zoo.CARD_FILE), card)
  print(f"[zoo] 3/3 installed {target}; measuring it on val", flush=True)
  return measure(name, data_dir, root, work_dir, quality_fit)


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # TFDS logs every dataset it opens at INFO.
  if FLAGS.measure_only:
    measure(FLAGS.name, FLAGS.data_dir, quality_fit=FLAGS.quality_fit)
    return 0
  if not FLAGS.members:
    raise app.UsageError("--members needs one training directory (shipped with its weights) or "
                         "several (averaged).")
  build(FLAGS.name, FLAGS.members, FLAGS.data_dir, FLAGS.checkpoint,
        command="python -m aop_tf.zoo " + " ".join(sys.argv[1:]), quality_fit=FLAGS.quality_fit)
  return 0


def _define_flags():
  """Defined only when run as a program, so importing the module defines no global flags."""
  flags.DEFINE_string("name", "psfhs", "Shipped model name: installs aop_tf/models/<name>/.")
  flags.DEFINE_list("members", [], "One training directory (shipped with its float weights) or "
                    "several (averaged).")
  flags.DEFINE_string("data_dir", "data/psfhs", "Built dataset: its train split calibrates int8, "
                      "its val split measures the exported file.")
  flags.DEFINE_string("checkpoint", "latest", "Each member's checkpoint (latest: the final "
                      "epoch, not picked on val).")
  flags.DEFINE_bool("measure_only", False, "Only measure the installed model on val again and "
                    "rewrite its card's val, quality and protocol sections.")
  flags.DEFINE_string("quality_fit", DEFAULT_QUALITY_FIT, "benchmarks.quality --fit's JSON (the "
                      "score, flag and interval fitted on out-of-fold train predictions), copied "
                      "into the card; missing: no quality section.")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "zoo")
