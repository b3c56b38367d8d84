"""The optimizer and the learning-rate schedule of a run (`config.OptimSpec`)."""

import math

import keras

from aop_tf import config


def make_optimizer(optim):
  """The Keras optimizer of an `OptimSpec`, at its peak learning rate (`LearningRateUpdater` sets
  the rate of each step).

  Keras' `weight_decay` is decoupled (AdamW-style: w -= lr * wd * w, outside the Adam moments), for
  Adam as well as AdamW; PyTorch's Adam(weight_decay=...) instead adds wd * w to the gradient
  (L2). The paper's "Adam, weight decay 1e-4" is therefore approximated, not replicated.
  """
  cls = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}[optim.optimizer]
  return cls(learning_rate=optim.learning_rate, weight_decay=optim.weight_decay or None,
             clipnorm=optim.clip_norm or None)


def learning_rate_at(step, steps_per_epoch, base_lr, schedule="step", epochs=150,
                     step_epochs=15, step_factor=0.5, warmup_epochs=0.0):
  """Learning rate for optimizer step `step` (0-based).

  `step`: `base_lr * step_factor ** floor(epoch / step_epochs)`, the epoch-wise StepLR of the paper.
  `cosine`: from `base_lr` to 0 over the epochs after warm-up, per step. `constant`: `base_lr`.
  A linear warm-up over the first `warmup_epochs` (fractions allowed) multiplies any of them.

  Args:
    step: global optimizer step (iterations so far).
    steps_per_epoch: optimizer steps in one epoch.
    base_lr: peak learning rate.
    schedule: one of `config.LR_SCHEDULES`.
    epochs: total epochs (for cosine).
    step_epochs, step_factor: the step schedule.
    warmup_epochs: linear warm-up length, epochs.
  """
  if schedule not in config.LR_SCHEDULES:
    raise ValueError(f"Unknown lr schedule {schedule!r}; expected one of "
                     f"{config.LR_SCHEDULES}.")
  epoch = step // steps_per_epoch
  warmup_steps = warmup_epochs * steps_per_epoch
  if schedule == "step":
    lr = base_lr * step_factor ** (epoch // max(1, step_epochs))
  elif schedule == "cosine":
    total = max(1.0, epochs * steps_per_epoch - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / total))
    lr = 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))
  else:
    lr = base_lr
  if warmup_steps > 0 and step < warmup_steps:
    lr *= (step + 1) / warmup_steps
  return float(lr)


def schedule_of(optim):
  """`learning_rate_at` keyword arguments of an `OptimSpec`."""
  return dict(base_lr=optim.learning_rate, schedule=optim.lr_schedule, epochs=optim.epochs,
              step_epochs=optim.lr_step_epochs, step_factor=optim.lr_step_factor,
              warmup_epochs=optim.warmup_epochs)
