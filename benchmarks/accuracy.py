"""Accuracy of a training recipe on real data: train on PSFHS train, evaluate on PSFHS val.

  python -m benchmarks.accuracy --config=cpu                 # aop_tf/configs/cpu.cfg
  python -m benchmarks.accuracy --config=baseline_cpu
  python -m benchmarks.accuracy --config=cpu --model_dir=runs/cpu_psfhs   # reuse a finished run

Trains `aop_tf/configs/<config>.cfg` with `python -m aop_tf.train` (a subprocess, the exact command
a user runs; an existing model dir resumes, a finished one returns at once), then evaluates the
final epoch's weights (`latest`, not the checkpoint picked on val) on the val split with every FH1
method the model supports. Writes `benchmarks/results/accuracy_<config>.json`: the reports, training
wall time (summed over resumed runs, from state.json), epochs, inference ms/image, the flagfile's
contents, the commands, and the machine load (the CPU may be shared).
"""

import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO_ROOT, "aop_tf", "configs")

flags.DEFINE_string("config", "cpu", "Flagfile name in aop_tf/configs (without .cfg).")
flags.DEFINE_string("psfhs_dir", None, "Raw PSFHS folder; default $AOP_PSFHS_DIR or "
                    "../shared/data/psfhs.")
flags.DEFINE_string("dataset_dir", os.path.join(REPO_ROOT, "data", "psfhs"),
                    "Built dataset (masks source); built here from --psfhs_dir if missing.")
flags.DEFINE_string("model_dir", None, "Training directory; default runs/<config>_psfhs.")
flags.DEFINE_string("checkpoint", "latest", "Checkpoint to evaluate (latest = final epoch).")
flags.DEFINE_list("train_args", [], "Extra flags for aop_tf.train (comma separated).")
flags.DEFINE_string("out", None, "Output JSON; default benchmarks/results/accuracy_<config>.json.")
FLAGS = flags.FLAGS


def _run(cmd):
  print("+", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=REPO_ROOT)


def ensure_dataset(dataset_dir, psfhs_dir=None):
  """Builds the masks-source dataset at `dataset_dir` from raw PSFHS if it is not there yet."""
  from data_prep import build  # pylint: disable=import-outside-toplevel
  psfhs = psfhs_dir or build.default_psfhs_dir()
  if not os.path.isdir(os.path.join(dataset_dir, "aop_landmarks")):
    if not os.path.isdir(psfhs):
      raise app.UsageError(f"PSFHS not found at {psfhs}: pass --psfhs_dir or set AOP_PSFHS_DIR.")
    _run([sys.executable, "-m", "data_prep.build", "--source=masks", f"--data_dir={psfhs}",
          f"--out_dir={dataset_dir}"])


def measure(flagfile, model_dir, dataset_dir, train_args=(), checkpoint="latest", train=True,
            decode_method=None, blur_sigma_cells=None, eval_name=None):
  """Trains `flagfile` (+ `train_args`) into `model_dir` and evaluates it on PSFHS val.

  `train=False` evaluates an existing run only; `decode_method`/`blur_sigma_cells` override the
  run's decoding. Returns the result dict (reports per FH1 method, training time, flagfile text).
  """
  from aop_tf import evaluate, model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel

  train_cmd = [sys.executable, "-m", "aop_tf.train", f"--flagfile={flagfile}",
               f"--data_dir={dataset_dir}", f"--model_dir={model_dir}", *train_args]
  start = time.monotonic()
  if train:
    _run(train_cmd)
  this_call_s = time.monotonic() - start
  state = model_dir_lib.read_json(os.path.join(REPO_ROOT, model_dir, model_dir_lib.STATE_FILE))
  spec = model_dir_lib.read_spec(os.path.join(REPO_ROOT, model_dir))

  methods = ["heatmap"] + (["tangent"] if spec.model.seg_classes >= 3 else [])
  name = eval_name or f"eval_val_{checkpoint}"
  reports = {}
  for method in methods:
    reports[method] = evaluate.evaluate(
        os.path.join(REPO_ROOT, model_dir), checkpoint=checkpoint,
        data_dir=dataset_dir, split="val",
        output_dir=os.path.join(REPO_ROOT, model_dir, f"{name}_{method}"),
        decode_method=decode_method, blur_sigma_cells=blur_sigma_cells,
        fh1_method=method, overlays=8, overlay_order="worst", progress=False, verbose=False)
  with open(flagfile) as f:
    flagfile_text = f.read()
  return {
      "flagfile": os.path.relpath(flagfile, REPO_ROOT),
      "flagfile_contents": flagfile_text,
      "train_args": list(train_args),
      "train_command": " ".join(["python"] + train_cmd[1:]),
      "model_dir": model_dir,
      "checkpoint": checkpoint,
      "epochs_done": state.get("epoch"),
      "train_seconds": state.get("train_seconds"),
      "this_call_seconds": this_call_s,
      "fh1_methods": methods,
      "reports": reports,
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "load_average": os.getloadavg()},
  }


def summary_lines(name, result):
  """Printable lines: training time and the val figures of each FH1 method."""
  lines = [f"{name}: {result['epochs_done']} epochs, "
           f"{(result['train_seconds'] or 0) / 60:.1f} min of training"]
  for method, report in result["reports"].items():
    lines.append(
        f"  FH1 by {method:8s} MRE_512 {report['mre_512']['mean']:.2f} (FH1 "
        f"{report['mre_512']['FH1']:.2f})  AoP error mean {report['aop_error_deg']['mean']:.2f} "
        f"median {report['aop_error_deg']['median']:.2f} deg  "
        f"{report['inference_ms_per_image']:.1f} ms/image")
  return lines


def write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, default=str)
    f.write("\n")


def main(argv):
  del argv
  flagfile = os.path.join(CONFIGS, f"{FLAGS.config}.cfg")
  if not os.path.exists(flagfile):
    raise app.UsageError(f"No flagfile {flagfile}; pick one of {sorted(os.listdir(CONFIGS))}.")
  ensure_dataset(FLAGS.dataset_dir, FLAGS.psfhs_dir)
  model_dir = FLAGS.model_dir or os.path.join("runs", f"{FLAGS.config}_psfhs")
  result = {"config": FLAGS.config,
            **measure(flagfile, model_dir, FLAGS.dataset_dir, FLAGS.train_args, FLAGS.checkpoint)}
  out = FLAGS.out or os.path.join(REPO_ROOT, "benchmarks", "results",
                                  f"accuracy_{FLAGS.config}.json")
  write_json(out, result)
  print("\n" + "\n".join(summary_lines(FLAGS.config, result)))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
