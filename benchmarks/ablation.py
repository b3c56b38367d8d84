"""From the paper's recipe to cpu.cfg, one change at a time, each trained for the same minutes.

  python -m benchmarks.ablation --minutes=10 --cosine_epochs=6
  python -m benchmarks.ablation --minutes=10 --cosine_epochs=6 \
      --cpu_flagfile=<(git show c023237:aop_tf/configs/cpu.cfg) \
      --full_result=benchmarks/results/accuracy_cpu_next.json    # the session-3 table

Row 1 trains `aop_tf/configs/baseline_cpu.cfg` (the paper's loss, sigma, heatmap size, optimizer,
schedule, batch 4, no augmentation, argmax). Each later row adds one group of `cpu.cfg`'s settings
(`STEPS`, values read from cpu.cfg itself) on top of the previous row; the DARK row re-decodes the
baseline's weights (no training). Every trained row gets `--max_train_minutes=<minutes>`; rows
with cpu.cfg's cosine schedule also get `--epochs=<cosine_epochs>` so that the schedule ends within
the budget (the paper's step schedule is simply cut by the budget, as in baseline_cpu.cfg). The
last row is therefore cpu.cfg at the short budget; its full-budget run is `benchmarks.accuracy`.

Writes `benchmarks/results/ablation.json` (every row's reports and commands) and `ablation.md`
(the table). Rows already trained in `runs/ablation/<row>` are resumed or just re-evaluated.
The rows take their values from the flagfile at run time (`--cpu_flagfile`, default cpu.cfg), so a
table is tied to the cpu.cfg it was measured with; ablation.json records every row's flags.
"""

import json
import os
import sys

from absl import app, flags

from benchmarks import accuracy

flags.DEFINE_float("minutes", 8.0, "Training budget of every trained row, minutes of wall time.")
flags.DEFINE_integer("cosine_epochs", 6, "Epochs of the rows with the cosine schedule (should "
                     "fit in --minutes on this machine).")
flags.DEFINE_string("runs_dir", os.path.join("runs", "ablation"), "Where the rows train.")
flags.DEFINE_string("cpu_flagfile", os.path.join(accuracy.CONFIGS, "cpu.cfg"),
                    "The recipe whose setting groups the rows add, one at a time.")
flags.DEFINE_string("full_result", os.path.join(accuracy.REPO_ROOT, "benchmarks", "results",
                                                "accuracy_bf16_44_erase.json"),
                    "benchmarks.accuracy JSON of --cpu_flagfile at the full budget, added as the "
                    "last row where it exists (accuracy_bf16_44_erase.json: the current cpu.cfg; "
                    "accuracy_cpu_next2.json: the session-4 cpu.cfg, run as cpu_next.cfg; "
                    "accuracy_cpu_next.json: the session-3 cpu.cfg).")
FLAGS = flags.FLAGS

# (row name, what it adds, the cpu.cfg flags it takes over). "decode" rows need no training.
STEPS = (
    ("dark", "+ DARK sub-cell decoding (re-decoded, same weights)",
     ("decode_method", "decode_blur_sigma")),
    ("softmax_ce", "+ spatial-softmax head, cross-entropy loss", ("loss",)),
    ("adamw_cosine", "+ AdamW lr 1e-3, warm-up, cosine, batch 8",
     ("optimizer", "learning_rate", "weight_decay", "lr_schedule", "warmup_epochs",
      "batch_size")),
    ("augment", "+ landmark-aware augmentation", ("augment", "aug_")),
    # bfloat16 changes speed, not accuracy (benchmarks/RESULTS.md, session 5); it rides along here
    # so that the last row is cpu.cfg.
    ("seg_head", "+ segmentation head (= cpu.cfg)", ("seg_classes", "seg_loss_weight",
                                                     "mixed_precision")),
)


def flagfile_lines(path):
  """The `--flag[=value]` lines of a flagfile, in order."""
  with open(path) as f:
    return [line.strip() for line in f if line.strip().startswith("--")]


def _name(line):
  name = line[2:].split("=", 1)[0]
  return name[2:] if name.startswith("no") and "=" not in line else name


def take(lines, names):
  """Lines whose flag is one of `names` (a name ending in `_` takes every flag with that prefix)."""
  return [line for line in lines
          if any(_name(line) == n or (n.endswith("_") and _name(line).startswith(n))
                 for n in names)]


def rows(cpu_lines, minutes, cosine_epochs):
  """[(name, label, train_args, train)]: the cumulative rows; `train` False = re-decode only."""
  budget = [f"--max_train_minutes={minutes:g}"]
  result = [("baseline_cpu", "baseline_cpu.cfg (paper recipe, argmax)", budget, True)]
  args = list(budget)
  for name, label, names in STEPS:
    args = args + take(cpu_lines, names)
    if any(line.startswith("--lr_schedule=cosine") for line in args):
      args = [a for a in args if not a.startswith("--epochs=")] + [f"--epochs={cosine_epochs}"]
    result.append((name, label, list(args), "decode_method" not in names))
  return result


def _fmt(report):
  m, a = report["mre_512"], report["aop_error_deg"]
  return (f"{m['mean']:.2f} | {m['PS1']:.2f} | {m['PS2']:.2f} | {m['FH1']:.2f} | "
          f"{a['mean']:.2f} | {a['median']:.2f} | {report['inference_ms_per_image']:.1f}")


def table(results):
  """Markdown table of the rows (FH1 from its heatmap; tangent rows where a seg head exists)."""
  out = ["| row | training | MRE 512 | PS1 | PS2 | FH1 | AoP err mean | median | ms/img |",
         "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    minutes = (r["train_seconds"] or 0) / 60
    for method, report in r["reports"].items():
      label = r["label"] + ("" if method == "heatmap" else ", FH1 by tangent")
      out.append(f"| {label} | {r['epochs_done']} ep, {minutes:.1f} min | {_fmt(report)} |")
  return "\n".join(out) + "\n"


def main(argv):
  del argv
  accuracy.ensure_dataset(accuracy.FLAGS.dataset_dir, accuracy.FLAGS.psfhs_dir)
  baseline = os.path.join(accuracy.CONFIGS, "baseline_cpu.cfg")
  cpu_lines = flagfile_lines(FLAGS.cpu_flagfile)
  results = []
  model_dir = None
  for name, label, args, train in rows(cpu_lines, FLAGS.minutes, FLAGS.cosine_epochs):
    if train:
      model_dir = os.path.join(FLAGS.runs_dir, name)
      result = accuracy.measure(baseline, model_dir, accuracy.FLAGS.dataset_dir, args)
    else:  # re-decode the previous row's weights with this row's decoding
      decode = dict(a[2:].split("=", 1) for a in args if a.startswith("--decode_"))
      result = accuracy.measure(baseline, model_dir, accuracy.FLAGS.dataset_dir, args,
                                train=False, decode_method=decode["decode_method"],
                                blur_sigma_cells=float(decode["decode_blur_sigma"]),
                                eval_name=f"eval_val_{name}")
    result.update(name=name, label=label)
    results.append(result)
    print("\n".join(accuracy.summary_lines(name, result)), flush=True)
  if os.path.exists(FLAGS.full_result):
    with open(FLAGS.full_result) as f:
      full = json.load(f)
    full.update(name="cpu_full", label="cpu.cfg, full budget (benchmarks.accuracy)")
    results.append(full)
  out_dir = os.path.join(accuracy.REPO_ROOT, "benchmarks", "results")
  accuracy.write_json(os.path.join(out_dir, "ablation.json"),
                      {"minutes": FLAGS.minutes, "cosine_epochs": FLAGS.cosine_epochs,
                       "command": " ".join(["python -m benchmarks.ablation"] + sys.argv[1:]),
                       "rows": results})
  with open(os.path.join(out_dir, "ablation.md"), "w") as f:
    f.write(table(results))
  print(table(results))


if __name__ == "__main__":
  app.run(main)
