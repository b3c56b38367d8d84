"""Keras callbacks of training: LR schedule, stop requests, validation, TensorBoard, checkpoints.

They must run in the order of `ORDER`, which `check_order` enforces (`train.py` calls it):
`LearningRateUpdater`, `StopGuard` (signals, NaN loss; merges the logs of a resumed partial
epoch), then per epoch `Validation` (adds `val_*` to the epoch logs), `TensorBoardLogger` (writes
them) and `Checkpointer` last (saves the best checkpoints by those `val_*` values, and stops on the
time budget). They share one `RunStatus`. An epoch cut short by a signal or a NaN loss is not
"complete": nothing is validated or saved for it, so `latest.keras` always holds the end of a
complete epoch and resuming from it is exact.

Epochs are 0-based inside Keras callbacks and 1-based everywhere a person reads them (file names,
`state.json`, TensorBoard steps, messages).
"""

import contextlib
import math
import os
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from aop_tf import LANDMARK_NAMES
from aop_tf import geometry
from aop_tf import metrics
from aop_tf import model_dir as model_dir_lib
from aop_tf import optim
from aop_tf import predictor_tf
from aop_tf import visualize


def _none_to_nan(value):
  """metrics.report writes None for undefined values; logs and TensorBoard want floats."""
  return float("nan") if value is None else float(value)


class RunStatus:
  """State shared by the callbacks of one `fit` call.

  Attributes:
    stop_reason: None, "signal", "nan" or "time_budget".
    signal_name: the signal that asked to stop ("SIGTERM", "SIGINT").
    nan_at: `(epoch, step)` 1-based, where the loss stopped being finite.
    batches: batches finished in the current epoch.
    epochs_done: last complete epoch (1-based), including those of earlier runs.
    budget_s: time budget over all runs, seconds (0 = none); `spent_s` before this run.
    val: the last validation report (`metrics.report`) and val loss.
    resume_batches, resume_logs: a run resumed mid-epoch: the batches of that epoch done before
      (the first epoch of this run starts counting there) and their mean training logs (merged
      into the epoch's logs so that they cover the whole epoch).
  """

  def __init__(self, steps_per_epoch, initial_epoch=0, budget_s=0.0, spent_s=0.0,
               resume_batches=0, resume_logs=None):
    self.steps_per_epoch = steps_per_epoch
    self.resume_batches = int(resume_batches)
    self.resume_logs = dict(resume_logs or {})
    self.stop_reason = None
    self.signal_name = None
    self.nan_at = None
    self.batches = 0
    self.epochs_done = initial_epoch
    self.budget_s = budget_s
    self.spent_s = spent_s
    self.start = time.monotonic()
    self.val = {}

  def train_seconds(self):
    """Training wall time over all runs, seconds."""
    return self.spent_s + time.monotonic() - self.start

  def budget_exhausted(self):
    return self.budget_s > 0 and self.train_seconds() >= self.budget_s

  def epoch_complete(self):
    """Whether the epoch that just ended ran all its batches with a finite loss."""
    return self.batches >= self.steps_per_epoch and self.stop_reason != "nan"


class LearningRateUpdater(keras.callbacks.Callback):
  """Sets the optimizer's learning rate before every step from `optim.learning_rate_at`.

  Computed from the optimizer's iteration counter, so a resumed run continues the schedule. The
  rate lives in the optimizer as a plain variable: checkpoints need no custom schedule class.
  """

  def __init__(self, steps_per_epoch, **schedule):
    super().__init__()
    self.steps_per_epoch = steps_per_epoch
    self.schedule = schedule
    self._step = 0
    optim.learning_rate_at(0, steps_per_epoch, **schedule)  # Fail early on a bad schedule.

  def on_train_begin(self, logs=None):
    self._step = int(self.model.optimizer.iterations.numpy())

  def on_train_batch_begin(self, batch, logs=None):
    self.model.optimizer.learning_rate = optim.learning_rate_at(
        self._step, self.steps_per_epoch, **self.schedule)
    self._step += 1

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))


def training_logs(logs):
  """The running-mean training entries of Keras epoch logs (no `val_*`, no learning rate)."""
  return {k: float(np.asarray(v)) for k, v in (logs or {}).items()
          if not k.startswith("val_") and k != "learning_rate"}


class StopGuard(keras.callbacks.Callback):
  """Stops after the current step on SIGTERM / SIGINT, or when the loss is not finite.

  Signal handlers are active inside `with guard.signals_handled(): model.fit(...)`. A second
  Ctrl-C raises KeyboardInterrupt at once. Counts the batches of each epoch (`status.batches`,
  starting at `status.resume_batches` in a run resumed mid-epoch, whose earlier logs it merges
  into the epoch's logs, batch-weighted, before the later callbacks see them).
  """

  def __init__(self, status):
    super().__init__()
    self.status = status
    self._epoch = 0
    self._offset = 0

  def _handler(self, signum, frame):
    name = signal.Signals(signum).name
    if self.status.stop_reason == "signal" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.status.stop_reason = "signal"
    self.status.signal_name = name
    print(f"\n{name} received: stopping after the current step "
          "(Ctrl-C again aborts at once).", flush=True)

  @contextlib.contextmanager
  def signals_handled(self):
    """Context in which SIGINT/SIGTERM request a stop (main thread only; else a no-op)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, self._handler)
    try:
      yield self
    finally:
      for signum, handler in previous.items():
        signal.signal(signum, handler)

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch
    self._offset, self.status.resume_batches = self.status.resume_batches, 0
    self.status.batches = self._offset

  def on_epoch_end(self, epoch, logs=None):
    earlier, self.status.resume_logs = self.status.resume_logs, {}
    n, k = self.status.batches, self._offset
    if logs is None or not earlier or not k or n <= k:
      return
    for key, value in training_logs(logs).items():
      if key in earlier:
        logs[key] = (k * earlier[key] + (n - k) * value) / n

  def on_train_batch_end(self, batch, logs=None):
    self.status.batches += 1
    loss = float(np.asarray((logs or {}).get("loss", 0.0)))
    if not math.isfinite(loss):
      self.status.stop_reason = "nan"
      self.status.nan_at = (self._epoch + 1, self.status.batches)
    if self.status.stop_reason in ("signal", "nan"):
      self.model.stop_training = True


class Validation(keras.callbacks.Callback):
  """Validation loss (`model.evaluate`) and landmark metrics (the model as a `KerasPredictor`).

  `dataset`: batches of `data.make_dataset(..., training=False)`; `keras_dataset`: the same as
  `(x, y)` pairs. Runs every `val_every` epochs, at the last epoch and when the time budget runs
  out (not after a stop signal); `evaluate` replaces `model.evaluate` (`distribute.evaluate` on
  several workers); adds to the epoch logs `val_loss` (and per-output losses),
  `val_mre_px`, `val_mre_512`, `val_aop_error_deg` (means over images), and keeps the full
  `metrics.report` in `status.val["report"]`. `codec`: the run's `codec.HeatmapCodec`. A model with
  several `networks` (`semi.MeanTeacher`) is measured for each: the first (the one that predicts)
  gives the figures above, the others `val_<name>_mre_512` and so on.
  """

  def __init__(self, status, dataset, keras_dataset, codec, val_every, epochs, evaluate=None):
    super().__init__()
    self.evaluate = evaluate  # (model, keras_dataset) -> {loss name: value}; None: model.evaluate
    self.status = status
    self.dataset = dataset
    self.keras_dataset = keras_dataset
    self.codec = codec
    self.val_every = max(1, int(val_every))
    self.epochs = epochs
    self._predictors = None

  def due(self, epoch):
    # Not after a stop request: the checkpoint should be written without delay.
    if self.status.stop_reason == "signal":
      return False
    return ((epoch + 1) % self.val_every == 0 or epoch + 1 >= self.epochs
            or self.status.budget_exhausted())

  def on_epoch_end(self, epoch, logs=None):
    self.status.val = {}
    if self.dataset is None or not self.status.epoch_complete() or not self.due(epoch):
      return
    losses = (self.evaluate(self.model, self.keras_dataset) if self.evaluate else
              self.model.evaluate(self.keras_dataset, verbose=0, return_dict=True))
    if self._predictors is None:  # traced once, reused every epoch
      networks = getattr(self.model, "networks", {"": self.model})
      self._predictors = {name: predictor_tf.KerasPredictor(net, self.codec)
                          for name, net in networks.items()}
    values = {f"val_{name}": float(value) for name, value in losses.items()}
    reports = {name: self._report(p) for name, p in self._predictors.items()}
    for i, (name, report) in enumerate(reports.items()):
      prefix = "val_" if i == 0 else f"val_{name}_"
      values.update({prefix + "mre_px": _none_to_nan(report["mre_px"]["mean"]),
                     prefix + "mre_512": _none_to_nan(report["mre_512"]["mean"]),
                     prefix + "aop_error_deg": _none_to_nan(report["aop_error_deg"]["mean"])})
    if logs is not None:
      logs.update(values)
    self.status.val = dict(values, report=next(iter(reports.values())))

  def _report(self, predictor):
    """`metrics.report` of one network on the validation batches."""
    pred, gt, size = [], [], []
    for batch in self.dataset:
      pred.append(predictor.predict_prepared(batch["image"], batch["size_px"])["landmarks"])
      gt.append(batch["landmarks"].numpy())
      size.append(batch["size_px"].numpy())
    return metrics.report(metrics.per_image_errors(np.concatenate(pred), np.concatenate(gt),
                                                   np.concatenate(size)))


class TensorBoardLogger(keras.callbacks.Callback):
  """Scalars and pictures in `<model_dir>/logs`, one step per (1-based) epoch.

  Scalars: `loss/train`, `loss/val` (and per-output losses), `learning_rate`,
  `val_mre_px/<landmark|mean>`, `val_mre_512/...`, `val_aop_error_deg/{mean,median,p90}`,
  `epoch_seconds` (training steps, without validation), `train_images_per_s`; semi-supervised runs
  add `unlabeled_loss/train`, `semi/pseudo_kept`, `semi/unlabeled_weight` and the other network's
  `val_student/mre_512` (or `val_teacher/...`) and `.../aop_error_deg`. Images (validation
  epochs, of the network that predicts): `val/overlay` (ground truth green, prediction orange, with the AoP arcs) and
  `val/heatmaps` (image | PS1 | PS2 | FH1, the paper's Figure 3) for a fixed set of validation
  images.

  Args:
    status: the shared `RunStatus`.
    log_dir: event-file folder.
    tb_batch: None, or a dict of numpy arrays of the fixed images: `image` [N,S,S,C] 0..255,
      `landmarks` [N,3,2] original pixels, `size_px` [N,2].
    codec: the run's `codec.HeatmapCodec` (decoding; heatmaps are shown divided by its
      `heatmap_scale`, on a 0..1 scale).
    images_per_epoch: training images per epoch (for throughput).
  """

  def __init__(self, status, log_dir, tb_batch, codec, images_per_epoch):
    super().__init__()
    self.status = status
    self.log_dir = log_dir
    self.tb_batch = tb_batch
    self.codec = codec
    self.images_per_epoch = images_per_epoch
    self.writer = None
    self._epoch_start = self._last_step_end = 0.0

  def on_train_begin(self, logs=None):
    self.writer = tf.summary.create_file_writer(self.log_dir)

  def on_train_end(self, logs=None):
    if self.writer is not None:
      self.writer.close()

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch_start = self._last_step_end = time.monotonic()

  def on_train_batch_end(self, batch, logs=None):
    self._last_step_end = time.monotonic()

  def on_epoch_end(self, epoch, logs=None):
    if not self.status.epoch_complete():
      return
    logs = logs or {}
    seconds = self._last_step_end - self._epoch_start  # training steps only, not validation
    step = epoch + 1
    with self.writer.as_default(step=step):
      for name, value in logs.items():
        if name == "loss" or name.endswith("_loss"):
          split = "val" if name.startswith("val_") else "train"
          base = name[4:] if split == "val" else name
          tf.summary.scalar(f"{base}/{split}", float(value))
      if "learning_rate" in logs:
        tf.summary.scalar("learning_rate", logs["learning_rate"])
      for name in ("pseudo_kept", "unlabeled_weight"):  # semi-supervised runs
        if name in logs:
          tf.summary.scalar(f"semi/{name}", float(logs[name]))
      for name, value in logs.items():  # the other networks of a semi-supervised run
        if name.startswith("val_") and name.endswith(("_mre_512", "_aop_error_deg")) and \
            name not in ("val_mre_512", "val_aop_error_deg"):
          network, _, metric = name[len("val_"):].partition("_")
          tf.summary.scalar(f"val_{network}/{metric}", float(value))
      tf.summary.scalar("epoch_seconds", seconds)
      tf.summary.scalar("train_images_per_s", self.images_per_epoch / max(seconds, 1e-9))
      report = self.status.val.get("report")
      if report:
        for space in ("mre_px", "mre_512"):
          for key in (*LANDMARK_NAMES, "mean"):
            tf.summary.scalar(f"val_{space}/{key}", _none_to_nan(report[space][key]))
        for key in ("mean", "median", "p90"):
          tf.summary.scalar(f"val_aop_error_deg/{key}",
                            _none_to_nan(report["aop_error_deg"][key]))
        if self.tb_batch is not None:
          overlays, panels = self.pictures()
          tf.summary.image("val/overlay", overlays, max_outputs=len(overlays))
          tf.summary.image("val/heatmaps", panels, max_outputs=len(panels))
    self.writer.flush()

  def pictures(self):
    """Overlays and heatmap panels of the fixed images: two uint8 arrays [N,H,W,3]."""
    batch = self.tb_batch
    network = getattr(self.model, "inference_network", self.model)
    out = predictor_tf.KerasPredictor(network, self.codec).predict_prepared(
        batch["image"], batch["size_px"])
    aop_gt = np.asarray(geometry.aop_deg(batch["landmarks"]))
    side = batch["image"].shape[1]
    # The pictures show the model input (S x S); points map there from the original frame, the AoP
    # written is the one of the original frame.
    size = batch["size_px"][:, None, :]
    pred_in = np.asarray(geometry.rescale_points(out["landmarks"], size, (side, side)))
    gt_in = np.asarray(geometry.rescale_points(batch["landmarks"], size, (side, side)))
    maps = out["heatmaps"] / self.codec.heatmap_scale
    overlays, panels = [], []
    for i in range(len(batch["image"])):
      overlays.append(visualize.overlay(batch["image"][i], pred=pred_in[i], gt=gt_in[i],
                                        aop_pred=float(out["aop_deg"][i]), aop_gt=float(aop_gt[i]),
                                        min_size=256))
      panels.append(visualize.heatmap_panel(batch["image"][i], maps[i], tile_px=192))
    return np.stack(overlays), np.stack(panels)


class Checkpointer(keras.callbacks.Callback):
  """Writes checkpoints and `state.json` after every complete epoch, atomically.

  After a stop signal mid-epoch it writes `latest.keras` there too (the optimizer's iteration
  count says how far), with `state.json["partial"]` = `{"epoch", "batches", "steps_per_epoch",
  "logs"}` so that the run resumes at the next batch of that epoch.

  `state.json` then `latest.keras` (with optimizer state) every epoch; `epoch_NNNN.keras` every
  `checkpoint_every` epochs; `best_val_loss.keras` / `best_val_mre.keras` when validation improves
  (MRE in 512 space, mean over landmarks). Stops training once the time budget is spent.

  `state.json`: `epoch`, `train_seconds` (over all runs), `best_val_loss`, `best_val_loss_epoch`,
  `best_val_mre_512`, `best_val_mre_epoch`, `history` (one dict of logs per epoch).
  """

  def __init__(self, status, model_dir, checkpoint_every, state):
    super().__init__()
    self.status = status
    self.model_dir = model_dir
    self.checkpoint_every = int(checkpoint_every)
    self.state = state

  def _save(self, which):
    model_dir_lib.save_model(self.model, model_dir_lib.checkpoint_path(self.model_dir, which))

  def _save_partial(self, epoch, logs):
    status = self.status
    self.state["partial"] = {"epoch": epoch + 1, "batches": status.batches,
                             "steps_per_epoch": status.steps_per_epoch,
                             "logs": training_logs(logs)}
    self.state["train_seconds"] = status.train_seconds()
    model_dir_lib.write_json(os.path.join(self.model_dir, model_dir_lib.STATE_FILE), self.state)
    self._save("latest")
    print(f"Saved {model_dir_lib.checkpoint_path(self.model_dir, 'latest')} after step "
          f"{status.batches} of {status.steps_per_epoch} of epoch {epoch + 1}.", flush=True)

  def on_epoch_end(self, epoch, logs=None):
    if not self.status.epoch_complete():
      if self.status.stop_reason == "signal" and self.status.batches > 0:
        self._save_partial(epoch, logs)
      return
    step = epoch + 1
    logs = {k: float(np.asarray(v)) for k, v in (logs or {}).items()}
    state = self.state
    val_loss, val_mre = logs.get("val_loss"), logs.get("val_mre_512")
    best = []
    if val_loss is not None and math.isfinite(val_loss) and val_loss < state.get(
        "best_val_loss", math.inf):
      state.update(best_val_loss=val_loss, best_val_loss_epoch=step)
      best.append("best_val_loss")
    if val_mre is not None and math.isfinite(val_mre) and val_mre < state.get(
        "best_val_mre_512", math.inf):
      state.update(best_val_mre_512=val_mre, best_val_mre_epoch=step)
      best.append("best_val_mre")
    for which in best:
      self._save(which)
    if self.checkpoint_every > 0 and step % self.checkpoint_every == 0:
      self._save(f"epoch_{step:04d}")
    # state.json before latest.keras: a kill between the two leaves state.json one epoch ahead of
    # the checkpoint, which resume detects from the optimizer's iteration count and trims; the
    # epoch is then trained again and its log written again, so nothing is lost. (The other order
    # lost the epoch's log line: tests/test_robustness_faults.py.)
    self.status.epochs_done = step
    state.pop("partial", None)
    state["epoch"] = step
    state["train_seconds"] = self.status.train_seconds()
    # JSON has no NaN: undefined values (e.g. no valid AoP) are written as null.
    record = {k: (v if math.isfinite(v) else None) for k, v in logs.items()}
    state.setdefault("history", []).append(dict(record, epoch=step))
    model_dir_lib.write_json(os.path.join(self.model_dir, model_dir_lib.STATE_FILE), state)
    self._save("latest")
    if self.status.budget_exhausted() and self.status.stop_reason is None:
      self.status.stop_reason = "time_budget"
    if self.status.stop_reason is not None:
      self.model.stop_training = True


# The order the callbacks must run in (see the module docstring).
ORDER = (LearningRateUpdater, StopGuard, Validation, TensorBoardLogger, Checkpointer)


def check_order(callbacks):
  """Raises ValueError unless the callbacks of `ORDER` in `callbacks` come in that order, after any
  others (which run first and see no `val_*` logs)."""
  ranks = [next((i for i, cls in enumerate(ORDER) if isinstance(c, cls)), -1) for c in callbacks]
  known = [r for r in ranks if r >= 0]
  if known != sorted(known) or (known and -1 in ranks[ranks.index(known[0]):]):
    names = [type(c).__name__ for c in callbacks]
    raise ValueError(f"Callbacks {names} are out of order; the built-in ones must come last, in "
                     f"the order {[cls.__name__ for cls in ORDER]} (see aop_tf/callbacks.py).")
  return callbacks
