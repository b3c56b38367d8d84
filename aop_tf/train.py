"""Trains the landmark U-Net: `python -m aop_tf.train --flagfile=aop_tf/configs/cpu.cfg`.

Writes a training directory (layout in `aop_tf.model_dir`): `config.json` before the first step,
then after every complete epoch `latest.keras` + `state.json`, the best checkpoints, periodic
`epoch_NNNN.keras`, and TensorBoard logs in `logs/` (`tensorboard --logdir <model_dir>/logs`).

Running the same command again resumes from `latest.keras` (weights, optimizer state, epoch
counter; the data continue at the next epoch), and ends with the same weights as an uninterrupted
run. SIGTERM / Ctrl-C stop after the current step and save `latest.keras` there (mid-epoch:
`state.json["partial"]`; the resumed run continues at the next batch of that epoch, with the same
batches as an uninterrupted run); `--max_train_minutes` stops after the epoch in which the budget
(counted over all resumed runs) runs out.

Flags given on the command line override those of `--flagfile`, wherever they stand.
Library use: `train(TrainConfig(...))`.
"""

import dataclasses
import json
import math
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

from aop_tf import augment as augment_lib  # noqa: E402
from aop_tf import callbacks as callbacks_lib  # noqa: E402
from aop_tf import cli  # noqa: E402
from aop_tf import data  # noqa: E402
from aop_tf import decode as decode_lib  # noqa: E402
from aop_tf import heatmap  # noqa: E402
from aop_tf import losses  # noqa: E402
from aop_tf import model as model_lib  # noqa: E402
from aop_tf import model_dir as model_dir_lib  # noqa: E402

OPTIMIZERS = ("adam", "adamw")
NORMS = ("batch", "group", "none")
# build_unet keyword arguments, stored as config.json["model"].
MODEL_KEYS = ("input_size", "input_channels", "base_filters", "depth", "heatmap_size",
              "decode_to_full", "norm", "seg_classes", "mixed_precision")


class ConfigError(ValueError):
  """A bad flag value or a missing/unsuitable directory; the message says what to do."""


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainConfig:
  """Every knob of a training run; the flags of `python -m aop_tf.train` map onto these 1:1.

  Defaults are the CPU model with the paper's loss, optimizer and schedule. Units: sizes in pixels
  (input) or cells (heatmap), `sigma_cells` in heatmap cells, `lr_step_epochs`/`warmup_epochs`/
  `checkpoint_every`/`val_every` in epochs, `max_train_minutes` in minutes of wall time.
  """
  # Data.
  data_dir: str = ""
  train_split: str = "train"
  val_split: str = "val"
  cache: bool = True
  shuffle_buffer: int = 0
  # Model (build_unet).
  input_size: int = 256
  input_channels: int = 1
  base_filters: int = 16
  depth: int = 4
  heatmap_size: int = 64
  decode_to_full: bool = False
  norm: str = "batch"
  seg_classes: int = 0
  mixed_precision: bool = False
  # Targets and loss.
  sigma_cells: float = 2.0
  loss: str = "mse"
  heatmap_scale: float = 1.0
  foreground_weight: float = 10.0
  seg_loss_weight: float = 1.0
  coord_loss_weight: float = 0.0
  aop_loss_weight: float = 0.0
  # Optimizer and schedule.
  optimizer: str = "adam"
  learning_rate: float = 1e-4
  weight_decay: float = 1e-4
  lr_schedule: str = "step"
  lr_step_epochs: int = 15
  lr_step_factor: float = 0.5
  warmup_epochs: float = 0.0
  epochs: int = 150
  batch_size: int = 4
  steps_per_epoch: int = 0
  # Augmentation: `augment_config` holds `augment.AugmentConfig` fields (its defaults if empty).
  augment: bool = False
  augment_config: dict = dataclasses.field(default_factory=dict)
  # Decoding (validation metrics, TensorBoard, and config.json for evaluate/export).
  decode_method: str = "argmax"
  decode_blur_sigma: float = 0.0
  fh1_method: str = "heatmap"
  # Run.
  model_dir: str = ""
  resume: bool = True
  checkpoint_every: int = 50
  val_every: int = 1
  num_tb_images: int = 4
  seed: int = 42
  jit_compile: bool = False
  max_train_minutes: float = 0.0
  verbose: int = -1


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


# --------------------------------------------------------------------------------------------
# Config -> config.json, checks.


def _check_choice(name, value, choices):
  if value not in choices:
    raise ConfigError(f"--{name}={value!r} is not one of {', '.join(map(str, choices))}.")


def _check_positive(config, *names, allow_zero=False):
  for name in names:
    value = getattr(config, name)
    if value < 0 or (value == 0 and not allow_zero):
      raise ConfigError(f"--{name}={value} must be {'>= 0' if allow_zero else '> 0'}.")


def check_config(config):
  """Raises ConfigError naming the flag for any unusable value."""
  _check_choice("loss", config.loss, losses.HEATMAP_LOSSES)
  _check_choice("optimizer", config.optimizer, OPTIMIZERS)
  _check_choice("lr_schedule", config.lr_schedule, callbacks_lib.LR_SCHEDULES)
  _check_choice("decode_method", config.decode_method, heatmap.DECODE_METHODS)
  _check_choice("norm", config.norm, NORMS)
  try:
    decode_lib.check_fh1_method(config.fh1_method, config.seg_classes)
  except ValueError as e:
    raise ConfigError(f"--fh1_method: {e}") from None
  _check_choice("input_channels", config.input_channels, (1, 3))
  _check_positive(config, "input_size", "base_filters", "depth", "heatmap_size", "sigma_cells",
                  "heatmap_scale", "learning_rate", "epochs", "batch_size", "lr_step_epochs",
                  "lr_step_factor", "val_every")
  _check_positive(config, "seg_classes", "seg_loss_weight", "weight_decay", "warmup_epochs",
                  "steps_per_epoch", "checkpoint_every", "num_tb_images", "max_train_minutes",
                  "decode_blur_sigma", "foreground_weight", "shuffle_buffer", "coord_loss_weight",
                  "aop_loss_weight", allow_zero=True)
  if config.loss == "weighted_mse" and config.foreground_weight <= 0:
    raise ConfigError("--loss=weighted_mse needs --foreground_weight > 0.")
  if (config.coord_loss_weight or config.aop_loss_weight) and \
      config.loss not in losses.SOFTMAX_LOSSES:
    raise ConfigError(f"--coord_loss_weight/--aop_loss_weight need --loss in "
                      f"{losses.SOFTMAX_LOSSES}; got --loss={config.loss}.")
  if not config.data_dir:
    raise ConfigError("--data_dir is required (a dataset written by `python -m data_prep.build`).")
  if not config.model_dir:
    raise ConfigError("--model_dir is required (the training directory to write or resume).")
  try:
    model_lib.decoder_blocks(config.input_size, config.heatmap_size, config.depth,
                             config.decode_to_full)
    if config.input_size % 2 ** config.depth:
      raise ValueError(f"--input_size={config.input_size} must be a multiple of 2**depth = "
                       f"{2 ** config.depth}.")
    augment_config(config)
  except ValueError as e:
    raise ConfigError(f"Model/augmentation flags: {e}") from None


def augment_config(config=None):
  """The `augment.AugmentConfig` of a run, or None when `config.augment` is off."""
  if config is None or not config.augment:
    return None
  return augment_lib.AugmentConfig.from_dict(dict(config.augment_config))


def model_kwargs(config):
  """`build_unet` keyword arguments (config.json["model"]).

  A softmax loss gets the spatial-softmax head, scaled by 2 pi sigma^2 so that a target-shaped
  output peaks at about 1, like the unit-peak Gaussians of the other losses.
  """
  kwargs = {key: getattr(config, key) for key in MODEL_KEYS}
  if config.loss in losses.SOFTMAX_LOSSES:
    kwargs["heatmap_activation"] = "spatial_softmax"
    kwargs["softmax_peak_scale"] = 2.0 * math.pi * config.sigma_cells ** 2
  return kwargs


def pipeline_config(config, seed=None):
  """The `data.PipelineConfig` of a run."""
  return data.PipelineConfig(
      input_size=config.input_size, input_channels=config.input_channels,
      heatmap_size=config.heatmap_size, sigma_cells=config.sigma_cells,
      batch_size=config.batch_size, augment=augment_config(config),
      with_mask=config.seg_classes > 0, cache=config.cache, shuffle_buffer=config.shuffle_buffer,
      seed=config.seed if seed is None else seed)


def config_json(config):
  """config.json of a run, as ARCHITECTURE.md and `aop_tf.model_dir` describe it."""
  return {
      "model": model_kwargs(config),
      "pipeline": {"input_size": config.input_size, "input_channels": config.input_channels,
                   "heatmap_size": config.heatmap_size, "sigma_cells": config.sigma_cells},
      "decode": {"method": config.decode_method, "blur_sigma_cells": config.decode_blur_sigma,
                 "fh1_method": config.fh1_method},
      "flags": dataclasses.asdict(config),
  }


# Flags that may change between a run and its resumption; any other difference is refused.
# The learning-rate knobs may change (e.g. a lower rate after a NaN), at the cost of exactness.
_RESUMABLE = {"epochs", "model_dir", "resume", "checkpoint_every", "val_every", "num_tb_images",
              "max_train_minutes", "verbose", "data_dir", "jit_compile", "cache", "decode_method",
              "decode_blur_sigma", "fh1_method", "learning_rate", "lr_schedule", "lr_step_epochs",
              "lr_step_factor", "warmup_epochs"}


def _flat(flag_dict):
  """{"a": 1, "augment_config": {"b": 2}} -> {"a": 1, "augment_config.b": 2}, JSON-normalised."""
  out = {}
  for key, value in json.loads(json.dumps(flag_dict)).items():
    if isinstance(value, dict):
      out.update({f"{key}.{k}": v for k, v in value.items()})
    else:
      out[key] = value
  return out


def _check_resumable(old, new, path):
  """Raises ConfigError when `new` config.json differs from `old` in a flag that matters.

  A flag that `old` lacks (the run predates it) counts at its `TrainConfig` default, the behaviour
  of the code before the flag existed: e.g. a float32 run from before `--mixed_precision` is not
  resumed in bfloat16.
  """
  defaults = _flat({**dataclasses.asdict(TrainConfig()),
                    "augment_config": augment_lib.AugmentConfig().to_dict()})
  old_flags = {**defaults, **_flat(old.get("flags", {}))}
  new_flags = _flat(new["flags"])
  changed = sorted(k for k in new_flags if k.split(".")[0] not in _RESUMABLE and k in old_flags
                   and old_flags[k] != new_flags[k])
  if changed:
    details = ", ".join(f"--{k.replace('augment_config.', 'aug_')}: {old_flags[k]!r} -> "
                        f"{new_flags[k]!r}" for k in changed[:4])
    raise ConfigError(f"{path} was trained with other settings ({details}); resuming would mix "
                      "two runs. Use a new --model_dir, or the original flags.")


# --------------------------------------------------------------------------------------------
# Data.


def _resolve_data_dir(path):
  if not os.path.exists(path):
    raise ConfigError(f"--data_dir {path} does not exist; write a dataset there with "
                      "`python -m data_prep.build` (or pass the right folder).")
  try:
    return data.find_dataset_dir(path)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"--data_dir {path}: {e}") from None


def _keras_pair(with_seg):
  """Batch dict -> (x, y) for `fit`/`evaluate`; images without a real mask get label -1."""
  def fn(batch):
    x, y = data.to_keras(batch)
    if with_seg:
      mask = tf.cast(batch["mask"], tf.int32)
      has_mask = tf.reshape(tf.cast(batch["has_mask"], tf.bool), [-1, 1, 1])
      y = dict(y, segmentation=tf.where(has_mask, mask, -tf.ones_like(mask)))
    return x, y
  return fn


def _tb_batch(data_dir, split, pipeline, count):
  """The first `count` examples of `split` as numpy arrays (the fixed TensorBoard pictures).

  Read through their own uncached pipeline: a partly read `cache()` would be thrown away.
  """
  if count <= 0 or not split:
    return None
  small = dataclasses.replace(pipeline, batch_size=count, cache=False, with_mask=False)
  for batch in data.make_dataset(data_dir, split, small, training=False).take(1):
    return {key: np.asarray(batch[key], np.float32) for key in ("image", "landmarks", "size_px")}
  return None


# --------------------------------------------------------------------------------------------
# Model.


def build_compiled_model(config):
  """The U-Net of `config`, compiled with its loss(es) and optimizer.

  The learning rate is set before every step by `callbacks.LearningRateUpdater`.
  """
  model = model_lib.build_unet(**model_kwargs(config))
  loss = {"heatmaps": losses.heatmap_loss(config.loss, config.heatmap_scale,
                                          config.foreground_weight, config.coord_loss_weight,
                                          config.aop_loss_weight)}
  loss_weights = {"heatmaps": 1.0}
  if config.seg_classes:
    loss["segmentation"] = losses.MaskedSegmentationLoss()
    loss_weights["segmentation"] = config.seg_loss_weight
  # Keras' `weight_decay` is decoupled (AdamW-style: w -= lr * wd * w, outside the Adam moments),
  # for Adam as well as AdamW; PyTorch's Adam(weight_decay=...) instead adds wd * w to the gradient
  # (L2). The paper's "Adam, weight decay 1e-4" is therefore approximated, not replicated.
  optimizer_cls = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}[config.optimizer]
  optimizer = optimizer_cls(learning_rate=config.learning_rate,
                            weight_decay=config.weight_decay or None)
  model.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights,
                jit_compile=config.jit_compile)
  return model


def _restore(model, model_dir, steps_per_epoch, state):
  """Loads latest.keras (weights + optimizer state) into `model`.

  Returns `(epochs, batches)`: the completed epochs, and the batches of the next epoch already
  trained (non-zero where a stop signal saved mid-epoch; `state["partial"]` records it).
  """
  path = model_dir_lib.checkpoint_path(model_dir, "latest")
  model.optimizer.build(model.trainable_variables)
  try:
    model.load_weights(path)
  except Exception as e:  # A checkpoint of another architecture: say so in one line.
    raise ConfigError(f"{path} does not fit the model of these flags ({type(e).__name__}); "
                      "use a new --model_dir or the original flags.") from None
  iterations = int(model.optimizer.iterations.numpy())
  epoch, batches = divmod(iterations, steps_per_epoch)
  partial = state.get("partial") or {}
  if batches and (partial.get("epoch"), partial.get("batches"), partial.get(
      "steps_per_epoch")) != (epoch + 1, batches, steps_per_epoch):
    raise ConfigError(f"{path} stopped after {iterations} steps, not a whole number of epochs of "
                      f"{steps_per_epoch} steps nor the mid-epoch stop state.json records; "
                      "--batch_size or --steps_per_epoch changed? Use the original flags or a new "
                      "--model_dir.")
  if not batches:
    state.pop("partial", None)  # a kill between state.json and latest.keras of a mid-epoch save
  if epoch != state.get("epoch", epoch):
    # latest.keras is written before state.json; a kill in between leaves this mismatch.
    print(f"Note: {path} holds epoch {epoch}, state.json says {state.get('epoch')}; "
          f"continuing after epoch {epoch}.")
    state["epoch"] = epoch
    state["history"] = [h for h in state.get("history", []) if h.get("epoch", 0) <= epoch]
  return epoch, batches


# --------------------------------------------------------------------------------------------
# Training.


def train(config, extra_callbacks=()):
  """Trains (or resumes) one run.

  Args:
    config: a `TrainConfig`.
    extra_callbacks: Keras callbacks run before the built-in ones (library use, tests).

  Returns:
    `TrainResult`.

  Raises:
    ConfigError: bad flag values, missing data, or a model dir that cannot be resumed.
    TrainingDiverged: the loss became NaN/inf (`latest.keras` keeps the last good epoch).
  """
  check_config(config)
  data_dir = _resolve_data_dir(config.data_dir)
  model_dir = config.model_dir
  latest = model_dir_lib.checkpoint_path(model_dir, "latest")
  config_path = os.path.join(model_dir, model_dir_lib.CONFIG_FILE)
  state_path = os.path.join(model_dir, model_dir_lib.STATE_FILE)
  resuming = os.path.exists(latest)
  if resuming and not config.resume:
    raise ConfigError(f"{model_dir} already holds latest.keras; pass --resume to continue it or "
                      "choose a new --model_dir.")
  new_json = config_json(config)
  decode = new_json["decode"]
  if resuming and os.path.exists(config_path):
    _check_resumable(model_dir_lib.read_json(config_path), new_json, model_dir)
  state = model_dir_lib.read_json(state_path) if resuming and os.path.exists(state_path) else {}

  keras.utils.set_random_seed(config.seed)
  try:
    n_train = data.num_examples(data_dir, config.train_split)
  except (KeyError, ValueError, FileNotFoundError) as e:
    raise ConfigError(f"--train_split={config.train_split!r} in {data_dir}: {e}") from None
  if config.val_split:
    try:
      data.num_examples(data_dir, config.val_split)
    except (KeyError, ValueError, FileNotFoundError) as e:
      raise ConfigError(f"--val_split={config.val_split!r} in {data_dir}: {e} (pass "
                        "--val_split= to train without validation).") from None
  # Training epochs are whole batches only (data.make_dataset drops the remainder of each epoch so
  # that batches never straddle two epochs and resumption is exact).
  full_steps = n_train // config.batch_size
  if full_steps < 1:
    raise ConfigError(f"--train_split={config.train_split!r} of {data_dir} has {n_train} examples, "
                      f"fewer than one batch; lower --batch_size={config.batch_size}.")
  steps_per_epoch = config.steps_per_epoch or full_steps

  model = build_compiled_model(config)
  initial_epoch, done_batches = (_restore(model, model_dir, steps_per_epoch, state) if resuming
                                 else (0, 0))
  os.makedirs(model_dir, exist_ok=True)
  for path in model_dir_lib.remove_stale_temp_files(model_dir):  # left by a killed run
    print(f"Removed {path}, a partial file of an interrupted run.")
  model_dir_lib.write_json(config_path, new_json)
  history = _history_of(state)
  if initial_epoch >= config.epochs:
    print(f"{model_dir}: already trained for {initial_epoch} of {config.epochs} epochs.")
    return TrainResult(model_dir, history, initial_epoch)
  spent_s = float(state.get("train_seconds", 0.0))
  if config.max_train_minutes and spent_s >= 60.0 * config.max_train_minutes:
    print(f"{model_dir}: the time budget (--max_train_minutes={config.max_train_minutes:g}) was "
          f"spent after epoch {initial_epoch}; raise it to train on.")
    return TrainResult(model_dir, history, initial_epoch, "time_budget")
  if resuming:
    within = (f" and step {done_batches} of {steps_per_epoch} of epoch {initial_epoch + 1}"
              if done_batches else "")
    print(f"Resuming {model_dir} after epoch {initial_epoch}{within}.")

  pipeline = pipeline_config(config)

  def train_batches(start_epoch, skip=0, take=-1):
    ds = data.make_dataset(data_dir, config.train_split, pipeline, training=True,
                           start_epoch=start_epoch).skip(skip).take(take)
    return ds.map(_keras_pair(config.seg_classes > 0),
                  num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  val_ds = val_keras = None
  if config.val_split:
    val_ds = data.make_dataset(data_dir, config.val_split, pipeline, training=False)
    val_keras = val_ds.map(_keras_pair(config.seg_classes > 0))

  partial = state.get("partial") or {}
  status = callbacks_lib.RunStatus(steps_per_epoch, initial_epoch,
                                   budget_s=60.0 * config.max_train_minutes,
                                   spent_s=spent_s, resume_batches=done_batches,
                                   resume_logs=partial.get("logs") if done_batches else None)
  guard = callbacks_lib.StopGuard(status)
  callbacks = [
      *extra_callbacks,
      callbacks_lib.LearningRateUpdater(
          steps_per_epoch, base_lr=config.learning_rate, schedule=config.lr_schedule,
          epochs=config.epochs, step_epochs=config.lr_step_epochs,
          step_factor=config.lr_step_factor, warmup_epochs=config.warmup_epochs),
      guard,
      callbacks_lib.Validation(status, val_ds, val_keras, decode, config.val_every,
                               config.epochs),
      callbacks_lib.TensorBoardLogger(
          status, os.path.join(model_dir, "logs"),
          _tb_batch(data_dir, config.val_split, pipeline, config.num_tb_images), decode,
          config.heatmap_scale, steps_per_epoch * config.batch_size),
      callbacks_lib.Checkpointer(status, model_dir, config.checkpoint_every, state),
  ]
  verbose = config.verbose if config.verbose >= 0 else (1 if sys.stdout.isatty() else 2)
  with guard.signals_handled():
    if done_batches:  # the rest of the epoch a stop signal interrupted, as its own fit call
      model.fit(train_batches(initial_epoch, done_batches, steps_per_epoch - done_batches),
                epochs=initial_epoch + 1, initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch - done_batches, callbacks=callbacks,
                verbose=verbose, shuffle=False)
      initial_epoch += 1
    if status.stop_reason is None and initial_epoch < config.epochs:
      model.fit(train_batches(initial_epoch), epochs=config.epochs, initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose,
                shuffle=False)

  if status.stop_reason == "nan":
    epoch, step = status.nan_at
    kept = (f"{latest} (epoch {status.epochs_done}) is kept as the last good checkpoint"
            if status.epochs_done else "No epoch completed, so no checkpoint was written")
    raise TrainingDiverged(f"Loss became NaN/inf at epoch {epoch}, step {step}; stopped. {kept}. "
                           "Lower --learning_rate (or use --warmup_epochs) and check the data.")
  # A signal that arrives after the last epoch stopped nothing.
  stop_reason = None if status.epochs_done >= config.epochs else status.stop_reason
  steps_saved = (state.get("partial") or {}).get("batches", 0) if stop_reason == "signal" else 0
  return TrainResult(model_dir, _history_of(state), status.epochs_done, stop_reason,
                     status.signal_name, steps_saved)


def _history_of(state):
  history = {}
  for record in state.get("history", []):
    for key, value in record.items():
      history.setdefault(key, []).append(value)
  return history


# --------------------------------------------------------------------------------------------
# Command line.


def define_flags(flag_values=flags.FLAGS):
  """One absl flag per `TrainConfig` field (and one per `AugmentConfig` field, prefixed aug_)."""
  d = TrainConfig()
  f = _FlagDefiner(flag_values)
  f.DEFINE_string("data_dir", d.data_dir, "Dataset folder written by `python -m data_prep.build` "
                  "(the folder with dataset_info.json, or one above it).")
  f.DEFINE_string("train_split", d.train_split, "Training split.")
  f.DEFINE_string("val_split", d.val_split, "Validation split; empty: no validation.")
  f.DEFINE_boolean("cache", d.cache, "Cache decoded examples in memory.")
  f.DEFINE_integer("shuffle_buffer", d.shuffle_buffer, "0: shuffle the whole split each epoch; "
                   "n: shuffle within blocks of n examples.")
  f.DEFINE_integer("input_size", d.input_size, "Model input side S, pixels.")
  f.DEFINE_enum("input_channels", str(d.input_channels), ["1", "3"], "Model input channels.")
  f.DEFINE_integer("base_filters", d.base_filters, "Channels of the first encoder block.")
  f.DEFINE_integer("depth", d.depth, "Encoder (pooling) blocks.")
  f.DEFINE_integer("heatmap_size", d.heatmap_size, "Heatmap side R, cells.")
  f.DEFINE_boolean("decode_to_full", d.decode_to_full, "Decode back to S and resize to R (paper); "
                   "false stops the decoder at R.")
  f.DEFINE_enum("norm", d.norm, list(NORMS), "Normalisation layers.")
  f.DEFINE_integer("seg_classes", d.seg_classes, "Segmentation head classes (0: none; 3: bg, PS, "
                   "FH, trained where the dataset has masks).")
  f.DEFINE_boolean("mixed_precision", d.mixed_precision, "Train in bfloat16 compute with float32 "
                   "variables (cpu.cfg epochs 1.34x faster on an AVX512-BF16 CPU); evaluation and "
                   "export run float32.")
  f.DEFINE_float("sigma_cells", d.sigma_cells, "Gaussian target sigma, heatmap cells.")
  f.DEFINE_enum("loss", d.loss, list(losses.HEATMAP_LOSSES), "Heatmap loss.")
  f.DEFINE_float("heatmap_scale", d.heatmap_scale, "Target peak amplitude multiplier.")
  f.DEFINE_float("foreground_weight", d.foreground_weight, "weighted_mse: extra weight at peaks.")
  f.DEFINE_float("seg_loss_weight", d.seg_loss_weight, "Weight of the segmentation loss.")
  f.DEFINE_float("coord_loss_weight", d.coord_loss_weight, "softmax_ce: weight of the soft-argmax "
                 "coordinate term (mean landmark distance, heatmap cells).")
  f.DEFINE_float("aop_loss_weight", d.aop_loss_weight, "softmax_ce: weight of the soft-argmax AoP "
                 "term (absolute AoP difference, degrees).")
  f.DEFINE_enum("optimizer", d.optimizer, list(OPTIMIZERS), "Optimizer (weight decay decoupled).")
  f.DEFINE_float("learning_rate", d.learning_rate, "Peak learning rate.")
  f.DEFINE_float("weight_decay", d.weight_decay, "Decoupled weight decay; 0 disables it.")
  f.DEFINE_enum("lr_schedule", d.lr_schedule, list(callbacks_lib.LR_SCHEDULES), "LR schedule.")
  f.DEFINE_integer("lr_step_epochs", d.lr_step_epochs, "step schedule: epochs per step.")
  f.DEFINE_float("lr_step_factor", d.lr_step_factor, "step schedule: factor per step.")
  f.DEFINE_float("warmup_epochs", d.warmup_epochs, "Linear LR warm-up, epochs.")
  f.DEFINE_integer("epochs", d.epochs, "Total epochs.")
  f.DEFINE_integer("batch_size", d.batch_size, "Batch size.")
  f.DEFINE_integer("steps_per_epoch", d.steps_per_epoch, "Steps per epoch; 0: one pass over the "
                   "training split (for smoke tests only: resume is exact with full epochs).")
  f.DEFINE_boolean("augment", d.augment, "Augment training images (knobs: --aug_*).")
  aug_help = _arg_docs(augment_lib.AugmentConfig.__doc__)
  for field in dataclasses.fields(augment_lib.AugmentConfig):
    default = field.default
    name = f"aug_{field.name}"
    help_text = f"Augmentation: {aug_help.get(field.name, 'AugmentConfig.' + field.name)}"
    if isinstance(default, bool):
      f.DEFINE_boolean(name, default, help_text)
    elif isinstance(default, int):
      f.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float):
      f.DEFINE_float(name, default, help_text)
    elif isinstance(default, tuple):
      f.DEFINE_list(name, [str(v) for v in default], help_text + " Comma-separated min,max.")
  f.DEFINE_enum("decode_method", d.decode_method, list(heatmap.DECODE_METHODS),
                "Heatmap decoding for validation and config.json.")
  f.DEFINE_float("decode_blur_sigma", d.decode_blur_sigma, "dark: pre-blur sigma, cells.")
  f.DEFINE_enum("fh1_method", d.fh1_method, list(decode_lib.FH1_METHODS),
                "FH1 from its heatmap, or the tangent from PS1 to the predicted fetal head "
                "(needs --seg_classes=3).")
  f.DEFINE_string("model_dir", d.model_dir, "Training directory (created; resumed if it holds "
                  "latest.keras).")
  f.DEFINE_boolean("resume", d.resume, "Continue a model dir that holds latest.keras.")
  f.DEFINE_integer("checkpoint_every", d.checkpoint_every, "epoch_NNNN.keras every N epochs; 0: "
                   "none.")
  f.DEFINE_integer("val_every", d.val_every, "Validate every N epochs (and at the end).")
  f.DEFINE_integer("num_tb_images", d.num_tb_images, "Validation images shown in TensorBoard.")
  f.DEFINE_integer("seed", d.seed, "Random seed (weights, shuffling, augmentation).")
  f.DEFINE_boolean("jit_compile", d.jit_compile, "XLA-compile the train step.")
  f.DEFINE_float("max_train_minutes", d.max_train_minutes, "Stop after the epoch in which this "
                 "much training time (all resumed runs together) is spent; 0: no limit.")
  f.DEFINE_integer("verbose", d.verbose, "Keras verbosity: 1 progress bar, 2 one line per epoch, "
                   "-1 bar on a terminal, lines otherwise.")


def _arg_docs(docstring):
  """{name: text} of the `Args:` section of a Google-style docstring."""
  docs, name = {}, None
  in_args = False
  for line in (docstring or "").splitlines():
    stripped = line.strip()
    if stripped == "Args:":
      in_args = True
      continue
    if not in_args or not stripped:
      continue
    head, sep, text = stripped.partition(": ")
    if sep and line.startswith("    ") and not line.startswith("      "):
      for key in head.split(", "):
        docs[key] = text
      name = head
    elif name:
      for key in name.split(", "):
        docs[key] += " " + stripped
  return docs


class _FlagDefiner:
  """`flags.DEFINE_*` bound to one FlagValues (tests parse flagfiles into a fresh one)."""

  def __init__(self, flag_values):
    self._flag_values = flag_values

  def __getattr__(self, name):
    define = getattr(flags, name)
    return lambda *args, **kwargs: define(*args, flag_values=self._flag_values, **kwargs)


def config_from_flags(flag_values=flags.FLAGS):
  """TrainConfig from parsed absl flags."""
  kwargs = {}
  for field in dataclasses.fields(TrainConfig):
    if field.name == "augment_config":
      continue
    value = flag_values[field.name].value
    kwargs[field.name] = int(value) if field.name == "input_channels" else value
  aug = {}
  for field in dataclasses.fields(augment_lib.AugmentConfig):
    value = flag_values[f"aug_{field.name}"].value
    if isinstance(field.default, tuple):
      try:
        value = tuple(float(v) for v in value)
      except ValueError:
        raise ConfigError(f"--aug_{field.name}={','.join(value)}: expected numbers min,max."
                          ) from None
      if len(value) != 2:
        raise ConfigError(f"--aug_{field.name}={','.join(map(str, value))}: expected min,max.")
    aug[field.name] = value
  kwargs["augment_config"] = aug
  return TrainConfig(**kwargs)


_flagfiles_first = cli.flagfiles_first  # one implementation, shared by every entry point


def main(argv):
  if len(argv) > 1:
    print(f"train: error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # TFDS logs every split it opens at INFO.
  try:
    result = train(config_from_flags(flags.FLAGS))
  except (ConfigError, TrainingDiverged) as e:
    print(f"train: error: {e}", file=sys.stderr)
    sys.exit(1)
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
  define_flags()
  app.run(main, flags_parser=cli.flags_parser("train"))
