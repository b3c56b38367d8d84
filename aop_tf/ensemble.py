"""Averages trained runs into one model:

  python -m aop_tf.ensemble --members=runs/a,runs/b,runs/c --model_dir=runs/abc [--checkpoint=...]

The result is a training directory like any other (`config.json`, `latest.keras`, and
`ensemble.json` naming the members), so `evaluate`, `export` and `predict` take it as they take
one run: one input feeds every member (in float32) and their heatmaps (and segmentation maps) are
averaged before the one decoder (`codec.HeatmapCodec.decode`). Averaging spatial-softmax heatmaps
averages the members' probability maps; DARK then finds the peak of the mixture. The members' own
heatmaps are an output too (`member_heatmaps` [B, M, R, R, 3]): the decoder turns them into the
spread of the members' AoPs (`aop_spread_deg`), the ensemble's uncertainty. Members must take the
same input and share the codec; `config.json` is the first member's, in float32.
"""

import dataclasses
import os

from absl import app
from absl import flags
import keras

from aop_tf import cli
from aop_tf import config as config_lib
from aop_tf import model_dir as model_dir_lib

ENSEMBLE_FILE = "ensemble.json"
FLAGS = flags.FLAGS


def average(models, name="ensemble"):
  """One functional model whose outputs are the mean of `models`' outputs (keys all share)."""
  inputs = keras.Input(models[0].input_shape[1:], name="image")
  outputs = [keras.Model(m.input, m.output, name=f"member{i}")(inputs)
             for i, m in enumerate(models)]
  keys = [key for key in outputs[0] if all(key in out for out in outputs)]
  merged = {key: keras.layers.Average(name=key)([out[key] for out in outputs]) for key in keys}
  cells = tuple(outputs[0]["heatmaps"].shape[1:])
  merged["member_heatmaps"] = keras.layers.Concatenate(axis=1, name="member_heatmaps")([
      keras.layers.Reshape((1, *cells), name=f"member{i}_heatmaps")(out["heatmaps"])
      for i, out in enumerate(outputs)])
  return keras.Model(inputs, merged, name=name)


def _check_alike(specs, member_dirs):
  """Raises ConfigError naming the first member whose input or codec differs from the first's."""
  def signature(spec):
    return (spec.model.input_size, spec.model.input_channels, spec.model.heatmap_size,
            dataclasses.astuple(spec.heatmap_codec()))
  for spec, folder in zip(specs[1:], member_dirs[1:]):
    if signature(spec) != signature(specs[0]):
      raise config_lib.ConfigError(
          f"{folder} does not fit {member_dirs[0]}: input (size, channels), heatmap size and "
          f"codec must be the same; got {signature(spec)} vs {signature(specs[0])}.")


def build(member_dirs, model_dir, checkpoint=None):
  """Writes the ensemble of `member_dirs` (their `checkpoint`, default each run's best) to
  `model_dir`; returns the ensemble's `config.RunSpec`."""
  if len(member_dirs) < 2:
    raise config_lib.ConfigError(f"--members needs two or more training directories; got "
                                 f"{len(member_dirs)}.")
  models, specs, sources = [], [], []
  for folder in member_dirs:
    which, _ = model_dir_lib.resolve_checkpoint(folder, checkpoint)
    model, spec = model_dir_lib.load_model(folder, which)
    models.append(model)
    specs.append(spec)
    sources.append({"model_dir": os.path.abspath(folder), "checkpoint": which})
  _check_alike(specs, member_dirs)
  spec = specs[0].replace(mixed_precision=False, model_dir=model_dir, resume=False)
  os.makedirs(model_dir, exist_ok=True)
  model_dir_lib.save_model(average(models), model_dir_lib.checkpoint_path(model_dir, "latest"))
  model_dir_lib.write_spec(model_dir, spec)
  model_dir_lib.write_json(os.path.join(model_dir, ENSEMBLE_FILE), {"members": sources})
  return spec


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.model_dir:
    raise app.UsageError("--model_dir is required (where the ensemble is written).")
  build(FLAGS.members, FLAGS.model_dir, FLAGS.checkpoint)
  print(f"Wrote {FLAGS.model_dir}: the average of {len(FLAGS.members)} runs. Evaluate it with "
        f"python -m aop_tf.evaluate --model={FLAGS.model_dir}, export it with "
        f"python -m aop_tf.export --model_dir={FLAGS.model_dir}.")
  return 0


if __name__ == "__main__":
  flags.DEFINE_list("members", [], "Training directories to average (two or more).")
  flags.DEFINE_string("model_dir", None, "Where to write the ensemble (a training directory).")
  flags.DEFINE_string("checkpoint", None, "Checkpoint of every member (default: each run's "
                      "first of best_val_mre, best_val_loss, latest).")
  cli.run(main, "ensemble")
