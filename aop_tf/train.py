"""Trains the landmark U-Net: `python -m aop_tf.train --flagfile=aop_tf/configs/cpu.cfg`.

Every flag is a knob of the run spec (`aop_tf.config`, where each is documented); flags given on
the command line override those of `--flagfile`, wherever they stand. The run writes a training
directory (layout in `aop_tf.model_dir`): `config.json` (the spec) before the first step, then
after every complete epoch `latest.keras` + `state.json`, the best checkpoints, periodic
`epoch_NNNN.keras`, and TensorBoard logs in `logs/` (`tensorboard --logdir <model_dir>/logs`).

Running the same command again resumes from `latest.keras` (weights, optimizer state, epoch
counter; the data continue at the next epoch), and ends with the same weights as an uninterrupted
run. SIGTERM / Ctrl-C stop after the current step and save `latest.keras` there (mid-epoch:
`state.json["partial"]`; the resumed run continues at the next batch of that epoch, with the same
batches as an uninterrupted run); `--max_train_minutes` stops after the epoch in which the budget
(counted over all resumed runs) runs out.

Library use: `train(config.RunSpec().replace(data_dir=..., model_dir=..., epochs=...))`.
"""

import dataclasses
import functools
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from aop_tf import callbacks as callbacks_lib  # noqa: E402
from aop_tf import cli  # noqa: E402
from aop_tf import config as config_lib  # noqa: E402
from aop_tf import data  # noqa: E402
from aop_tf import distill  # noqa: E402
from aop_tf import distribute  # noqa: E402
from aop_tf import model_dir as model_dir_lib  # noqa: E402
from aop_tf import optim  # noqa: E402
from aop_tf import predictor as predictor_lib  # noqa: E402
from aop_tf import sources  # noqa: E402
from aop_tf import task  # noqa: E402
from aop_tf import zoo  # noqa: E402

ConfigError = config_lib.ConfigError


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
  """What `train` returns.

  Attributes:
    model_dir: the training directory.
    history: per-epoch logs of all epochs so far (resumed runs included), key -> list.
    epochs_done: last complete epoch, 1-based.
    stop_reason: None (all epochs ran), "signal" (with `signal_name`) or "time_budget".
    steps_into_epoch: after a stop signal, the steps of the next epoch saved in latest.keras.
  """
  model_dir: str
  history: dict
  epochs_done: int
  stop_reason: str = None
  signal_name: str = None
  steps_into_epoch: int = 0  # a stop signal's mid-epoch save: steps of epoch `epochs_done + 1`


@dataclasses.dataclass
class _Run:
  """What `train` works with once the spec and the directory are checked. `spec` is the run's
  (config.json); `batched` is how its replicas run it together (global batches, scaled rate)."""
  spec: config_lib.RunSpec
  batched: config_lib.RunSpec
  strategy: tf.distribute.Strategy
  data_dir: str
  steps_per_epoch: int
  state: dict
  resuming: bool
  teacher: object = None  # distill.TeacherMaps of a distilled run


def _resolve_data_dir(path):
  if not os.path.exists(path):
    raise ConfigError(f"--data_dir {path} does not exist; write a dataset there with "
                      "`python -m data_prep.build` (or pass the right folder).")
  try:
    return data.find_dataset_dir(path)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"--data_dir {path}: {e}") from None


def _split_size(data_dir, split, flag, hint=""):
  try:
    return data.num_examples(data_dir, split)
  except (KeyError, ValueError, FileNotFoundError) as e:
    raise ConfigError(f"--{flag}={split!r} in {data_dir}: {e}{hint}") from None


def _open(spec, data_dir, strategy):
  """Checks the data and the training directory; reads the state of a resumed run."""
  model_dir = spec.run.model_dir
  resuming = os.path.exists(model_dir_lib.checkpoint_path(model_dir, "latest"))
  if resuming and not spec.run.resume:
    raise ConfigError(f"{model_dir} already holds latest.keras; pass --resume to continue it or "
                      "choose a new --model_dir.")
  if resuming and os.path.exists(os.path.join(model_dir, model_dir_lib.CONFIG_FILE)):
    config_lib.check_resumable(model_dir_lib.read_spec(model_dir), spec, model_dir)
  n_train = _split_size(data_dir, spec.data.train_split, "train_split")
  if spec.data.val_split:
    _split_size(data_dir, spec.data.val_split, "val_split",
                " (pass --val_split= to train without validation)")
  if spec.semi.unlabeled_split:
    _split_size(data_dir, spec.semi.unlabeled_split, "unlabeled_split",
                " (build one with data_prep.build --unlabeled_dir or --labeled_list)")
  if spec.loss.aop_loss_weight:
    data.check_square(data_dir, spec.data.train_split, "--aop_loss_weight")
  # Training epochs are whole batches only (data.make_dataset drops the remainder of each epoch so
  # that batches never straddle two epochs and resumption is exact).
  batched = distribute.scaled_spec(spec, strategy.num_replicas_in_sync)
  full_steps = n_train // batched.data.batch_size
  if full_steps < 1:
    raise ConfigError(f"--train_split={spec.data.train_split!r} of {data_dir} has {n_train} "
                      f"examples, fewer than one batch of {batched.data.batch_size}; lower "
                      f"--batch_size={spec.data.batch_size} (per replica).")
  state = model_dir_lib.read_state(model_dir) if resuming else {}
  return _Run(spec, batched, strategy, data_dir, spec.optim.steps_per_epoch or full_steps, state,
              resuming)


def _tb_batch(data_dir, spec):
  """The first `num_tb_images` validation examples as numpy arrays (the fixed TensorBoard
  pictures), read through their own uncached pipeline (a partly read `cache()` is thrown away)."""
  count, split = spec.run.num_tb_images, spec.data.val_split
  if count <= 0 or not split:
    return None
  small = spec.replace(batch_size=count, cache=False, seg_classes=0, fh1_method="heatmap")
  for batch in data.make_dataset(data_dir, split, small, training=False).take(1):
    return {key: np.asarray(batch[key], np.float32) for key in ("image", "landmarks", "size_px")}
  return None


def _callbacks(run, status, extra_callbacks):
  """The callbacks of one run, in the order `callbacks.ORDER` requires (checked)."""
  spec, batched, model_dir = run.spec, run.batched, run.spec.run.model_dir
  codec = spec.heatmap_codec()
  val_ds = val_keras = None
  if spec.data.val_split:
    val_ds = data.make_dataset(run.data_dir, spec.data.val_split, batched, training=False)
    val_keras = val_ds.map(data.to_keras)
  evaluate = distribute.evaluate if distribute.is_multi_worker(run.strategy) else None
  return callbacks_lib.check_order([
      *extra_callbacks,
      callbacks_lib.LearningRateUpdater(run.steps_per_epoch, **optim.schedule_of(batched.optim)),
      callbacks_lib.StopGuard(status),
      callbacks_lib.Validation(status, val_ds, val_keras, codec, spec.run.val_every,
                               spec.optim.epochs, evaluate),
      callbacks_lib.TensorBoardLogger(status, os.path.join(model_dir, "logs"),
                                      _tb_batch(run.data_dir, spec), codec,
                                      run.steps_per_epoch * batched.data.batch_size),
      callbacks_lib.Checkpointer(status, model_dir, spec.run.checkpoint_every, run.state),
  ])


def _fit(run, model, initial_epoch, done_batches, extra_callbacks):
  """Runs Keras `fit` (`distribute.fit` on several workers) from where the run stands; returns
  the `callbacks.RunStatus`."""
  spec, steps = run.batched, run.steps_per_epoch
  partial = run.state.get("partial") or {}
  status = callbacks_lib.RunStatus(steps, initial_epoch,
                                   budget_s=60.0 * spec.run.max_train_minutes,
                                   spent_s=float(run.state.get("train_seconds", 0.0)),
                                   resume_batches=done_batches,
                                   resume_logs=partial.get("logs") if done_batches else None)
  callbacks = _callbacks(run, status, extra_callbacks)
  guard = next(c for c in callbacks if isinstance(c, callbacks_lib.StopGuard))
  verbose = spec.run.verbose if spec.run.verbose >= 0 else (1 if sys.stdout.isatty() else 2)

  def batches(start_epoch, skip=0, take=-1):
    ds = data.make_dataset(run.data_dir, spec.data.train_split, spec, training=True,
                           start_epoch=start_epoch, teacher=run.teacher).skip(skip).take(take)
    ds = ds.map(data.to_keras, num_parallel_calls=tf.data.AUTOTUNE)
    if spec.semi.unlabeled_split:  # step s of the run always meets the same unlabeled batch
      unlabeled = data.make_unlabeled_dataset(run.data_dir, spec.semi.unlabeled_split, spec,
                                              start_step=start_epoch * steps + skip)
      ds = tf.data.Dataset.zip(ds, unlabeled).map(
          lambda labeled, images: {"labeled": labeled, "unlabeled": images})
    return ds.prefetch(tf.data.AUTOTUNE)

  fit = (functools.partial(distribute.fit, model) if distribute.is_multi_worker(run.strategy)
         else model.fit)
  kwargs = dict(callbacks=callbacks, verbose=verbose, shuffle=False)
  with guard.signals_handled():
    if done_batches:  # the rest of the epoch a stop signal interrupted, as its own fit call
      fit(batches(initial_epoch, done_batches, steps - done_batches),
          epochs=initial_epoch + 1, initial_epoch=initial_epoch,
          steps_per_epoch=steps - done_batches, **kwargs)
      initial_epoch += 1
    if status.stop_reason is None and initial_epoch < spec.optim.epochs:
      fit(batches(initial_epoch), epochs=spec.optim.epochs, initial_epoch=initial_epoch,
          steps_per_epoch=steps, **kwargs)
  return status


def train(spec, extra_callbacks=()):
  """Trains (or resumes) one run.

  Args:
    spec: a `config.RunSpec` (`data.data_dir` and `run.model_dir` set).
    extra_callbacks: Keras callbacks run before the built-in ones (library use, tests).

  Returns:
    `TrainResult`.

  Raises:
    ConfigError: bad knob values, missing data, or a model dir that cannot be resumed.
    TrainingDiverged: the loss became NaN/inf (`latest.keras` keeps the last good epoch).
  """
  strategy = distribute.make_strategy(spec.run.distribute)  # before any other TF work
  if not spec.data.data_dir:
    raise ConfigError("--data_dir is required (a dataset written by `python -m data_prep.build`).")
  data_dir = _resolve_data_dir(spec.data.data_dir)
  model_dir = spec.run.model_dir
  if not model_dir:
    raise ConfigError("--model_dir is required (the training directory to write or resume).")
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise ConfigError(f"--model_dir {model_dir} is a file; pass a folder (created if missing) "
                      "for the training directory.")
  if distribute.is_chief(strategy):
    with model_dir_lib.locked(model_dir):
      return _train_locked(spec, data_dir, strategy, extra_callbacks)
  resumed_from = (model_dir_lib.CONFIG_FILE, model_dir_lib.STATE_FILE,
                  os.path.basename(model_dir_lib.checkpoint_path(model_dir, "latest")))
  with distribute.worker_dir(model_dir, resumed_from) as private:  # another worker: its own copy
    result = _train_locked(spec.replace(model_dir=private), data_dir, strategy, extra_callbacks)
  return dataclasses.replace(result, model_dir=model_dir)


def _train_locked(spec, data_dir, strategy, extra_callbacks):
  """`train` while holding the training directory."""
  run = _open(spec, data_dir, strategy)
  model_dir = spec.run.model_dir
  keras.utils.set_random_seed(spec.run.seed)
  with strategy.scope():
    model = task.build_compiled_model(run.batched, run.steps_per_epoch)
    initial_epoch, done_batches = (
        model_dir_lib.restore(model, model_dir, run.steps_per_epoch, run.state) if run.resuming
        else (0, 0))
  os.makedirs(model_dir, exist_ok=True)
  for path in model_dir_lib.remove_stale_temp_files(model_dir):  # left by a killed run
    print(f"Removed {path}, a partial file of an interrupted run.")
  if spec.run.init_from and not run.resuming:
    source = spec.run.init_from
    where = model_dir_lib.init_from(model, source, zoo.resolve(source))
    print(f"Initialised from {where}.")
  run.teacher = _teacher_maps(spec, data_dir) if spec.distill.teacher else None
  model_dir_lib.write_spec(model_dir, spec)
  if initial_epoch >= spec.optim.epochs:
    print(f"{model_dir}: already trained for {initial_epoch} of {spec.optim.epochs} epochs.")
    return TrainResult(model_dir, _history_of(run.state), initial_epoch)
  if spec.run.max_train_minutes and (float(run.state.get("train_seconds", 0.0)) >=
                                     60.0 * spec.run.max_train_minutes):
    print(f"{model_dir}: the time budget (--max_train_minutes={spec.run.max_train_minutes:g}) "
          f"was spent after epoch {initial_epoch}; raise it to train on.")
    return TrainResult(model_dir, _history_of(run.state), initial_epoch, "time_budget")
  if run.resuming:
    within = (f" and step {done_batches} of {run.steps_per_epoch} of epoch {initial_epoch + 1}"
              if done_batches else "")
    print(f"Resuming {model_dir} after epoch {initial_epoch}{within}.")
  try:
    status = _fit(run, model, initial_epoch, done_batches, extra_callbacks)
  except tf.errors.DataLossError as e:
    raise data.corrupt_data_error(run.data_dir, e) from None
  if status.stop_reason == "nan":
    epoch, step = status.nan_at
    latest = model_dir_lib.checkpoint_path(model_dir, "latest")
    kept = (f"{latest} (epoch {status.epochs_done}) is kept as the last good checkpoint"
            if status.epochs_done else "No epoch completed, so no checkpoint was written")
    raise TrainingDiverged(f"Loss became NaN/inf at epoch {epoch}, step {step}; stopped. {kept}. "
                           "Lower --learning_rate (or use --warmup_epochs) and check the data.")
  # A signal that arrives after the last epoch stopped nothing.
  stop_reason = None if status.epochs_done >= spec.optim.epochs else status.stop_reason
  steps_saved = ((run.state.get("partial") or {}).get("batches", 0) if stop_reason == "signal"
                 else 0)
  return TrainResult(model_dir, _history_of(run.state), status.epochs_done, stop_reason,
                     status.signal_name, steps_saved)


def _teacher_maps(spec, data_dir):
  """The distillation teacher's maps of the train split (`distill`), computed once per run."""
  teacher = spec.distill.teacher

  def compute():
    print(f"Distillation: the teacher {teacher} predicts the train images once.")
    folder = zoo.resolve(teacher) or teacher
    # A training directory teaches with its last checkpoint: best_val_* were picked on val.
    last = ("latest" if os.path.isfile(os.path.join(folder, config_lib.CONFIG_FILE))
            else None)
    model = predictor_lib.load(teacher, checkpoint=last, num_interpreters=os.cpu_count() or 1)
    source = sources.TfdsSource(data_dir, spec.data.train_split)
    maps = distill.teacher_heatmaps(model, source, total=len(source),
                                    progress=spec.run.verbose != 0)
    if maps.cells != spec.model.heatmap_size:
      raise ConfigError(f"--teacher={teacher} gives {maps.cells}x{maps.cells} heatmaps, this run "
                        f"{spec.model.heatmap_size}x{spec.model.heatmap_size}; distill into the "
                        "teacher's --heatmap_size.")
    return maps

  return distill.cached_teacher_maps(spec.run.model_dir, teacher, compute)


def _history_of(state):
  history = {}
  for record in state.get("history", []):
    for key, value in record.items():
      history.setdefault(key, []).append(value)
  return history


# --------------------------------------------------------------------------------------------
# Command line.


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # TFDS logs every split it opens at INFO.
  try:
    result = train(config_lib.from_flags(flags.FLAGS))
  except KeyboardInterrupt:
    print("train: aborted (second Ctrl-C); latest.keras holds the last checkpoint written.",
          file=sys.stderr)
    sys.exit(130)
  within = (f" + {result.steps_into_epoch} steps of epoch {result.epochs_done + 1}"
            if result.steps_into_epoch else "")
  where = f"{result.model_dir} (latest.keras: epoch {result.epochs_done}{within})"
  if result.stop_reason == "signal":
    print(f"Stopped by {result.signal_name}; {where}. Run the same command to resume.")
    sys.exit(128 + int(getattr(signal, result.signal_name, signal.SIGTERM)))
  if result.stop_reason == "time_budget":
    print(f"Time budget of --max_train_minutes spent; stopped after epoch {result.epochs_done}. "
          f"{where}.")
  else:
    print(f"Done: {where}.")


if __name__ == "__main__":
  config_lib.define_flags()
  cli.run(main, "train", errors=cli.EXPECTED_ERRORS + (TrainingDiverged, tf.errors.OpError))
