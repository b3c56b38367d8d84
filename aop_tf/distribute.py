"""Training on several devices and hosts with `tf.distribute` (`--distribute`).

  none          the default strategy: one device.
  mirrored      `tf.distribute.MirroredStrategy` over the local GPUs, or over the logical CPUs
                where there is no GPU (the tests split the CPU in two); Keras `fit`.
  multi_worker  `tf.distribute.MultiWorkerMirroredStrategy` over the hosts of `TF_CONFIG`.

Keras 3.15 `fit` does not run under MultiWorkerMirroredStrategy with TF 2.21 (keras#20585): its
`_maybe_symbolic_build` reduces the first batch eagerly ("Attempt to convert a value (PerReplica
...) with an unsupported type ... to a Tensor"), and with that skipped its log reduction fails on
scalars ("Invalid reduction dimension 0 for input with 0 dimensions"). `fit` below is the same
protocol as a custom loop: `model.train_step` on each replica under `strategy.run`, the logs
averaged over the replicas, and the run's callbacks called as Keras calls them.

The global batch is `batch_size` x replicas and the learning rate follows `--lr_scaling`
(`scaled_spec`). Batch norm averages its statistics over the replicas (`sync_batch_norm`), so the
replicas together compute what one device computes on the global batch. Semi-supervised runs
train on one device for now: Keras' distributed build takes a batch for an `(x, y)` pair, and the
mean teacher's `{"labeled", "unlabeled"}` batches are not one.

Only the chief (worker 0, or the "chief" task) writes the training directory. Another worker
trains in a private copy of it (`worker_dir`: the files a resume reads, so it resumes from the
same checkpoint) that is removed at the end: the training directory must be
readable by every worker (one host, or a shared file system). Stop signals, the time budget and
the NaN guard end every worker at the same step: each step's stop requests are combined over the
workers.
"""

import contextlib
import json
import math
import os
import shutil
import tempfile
import weakref

import keras
import numpy as np
import tensorflow as tf

from aop_tf import config


class DistributeError(ValueError):
  """A distribution setting that cannot work here (no TF_CONFIG, a malformed one)."""


def make_strategy(kind):
  """The `tf.distribute.Strategy` of `--distribute=kind`; build it before any other TF work."""
  if kind == "none":
    return tf.distribute.get_strategy()
  if kind == "mirrored":
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  if kind != "multi_worker":
    raise DistributeError(f"--distribute={kind!r} is not one of {', '.join(config.STRATEGIES)}.")
  raw = os.environ.get("TF_CONFIG", "")
  try:
    cluster = json.loads(raw)["cluster"]
    if not isinstance(cluster, dict) or not cluster:
      raise ValueError
  except (ValueError, KeyError, TypeError):
    raise DistributeError("--distribute=multi_worker needs TF_CONFIG, e.g. {\"cluster\": "
                          "{\"worker\": [\"host1:port\", \"host2:port\"]}, \"task\": {\"type\": "
                          "\"worker\", \"index\": 0}}" + (f"; got {raw[:200]!r}" if raw else "")
                          ) from None
  return tf.distribute.MultiWorkerMirroredStrategy()


def is_multi_worker(strategy):
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy):
  """True where this process writes the training directory."""
  if not is_multi_worker(strategy):
    return True
  resolver = strategy.cluster_resolver
  task_type, task_id = resolver.task_type, resolver.task_id
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def lr_factor(scaling, replicas):
  """The learning-rate multiplier of `--lr_scaling` for `replicas` replicas."""
  return {"linear": float(replicas), "sqrt": math.sqrt(replicas), "none": 1.0}[scaling]


def scaled_spec(spec, replicas):
  """`spec` (`config.RunSpec`) as the replicas run it together: global batches, scaled rate."""
  if replicas == 1:
    return spec
  return spec.replace(
      batch_size=spec.data.batch_size * replicas,
      learning_rate=spec.optim.learning_rate * lr_factor(spec.optim.lr_scaling, replicas))


@contextlib.contextmanager
def worker_dir(model_dir, names):
  """A private copy of the files `names` of the chief's `model_dir` for another worker."""
  private = tempfile.mkdtemp(prefix="aop_tf_worker_")
  try:
    for name in names:
      if os.path.isfile(os.path.join(model_dir, name)):
        shutil.copy2(os.path.join(model_dir, name), private)
    yield private
  finally:
    shutil.rmtree(private, ignore_errors=True)


def _distributed(strategy, dataset):
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return strategy.experimental_distribute_dataset(dataset.with_options(options))


def _step_function(strategy, step):
  """A compiled step: `step` (train_step / test_step) on each replica's part of a distributed
  batch, the logs averaged, and the stop request (1.0 on any replica) summed over the replicas."""
  @tf.function
  def run(batch, stop):
    logs = strategy.run(step, args=(batch,))
    logs = {key: strategy.reduce("MEAN", value, axis=None) for key, value in logs.items()}
    stop = strategy.reduce("SUM", strategy.run(lambda: tf.identity(stop)), axis=None) > 0
    return logs, stop
  return run


def _numpy_logs(logs):
  return {key: float(np.asarray(value)) for key, value in logs.items()}


def fit(model, dataset, *, epochs, initial_epoch, steps_per_epoch, callbacks, verbose, **unused):
  """`model.fit(dataset, ...)` as a loop over `strategy.run(model.train_step)` (see the module
  docstring); calls `callbacks` as Keras does. Returns the `keras.callbacks.History`."""
  del unused
  strategy = model.distribute_strategy
  callback_list = keras.callbacks.CallbackList(
      list(callbacks), add_history=True, add_progbar=verbose != 0, model=model, verbose=verbose,
      epochs=epochs, steps=steps_per_epoch)
  step = _step_function(strategy, model.train_step)
  iterator = iter(_distributed(strategy, dataset))
  model.stop_training = False
  callback_list.on_train_begin()
  for epoch in range(initial_epoch, epochs):
    model.reset_metrics()
    callback_list.on_epoch_begin(epoch)
    logs = {}
    for batch in range(steps_per_epoch):
      callback_list.on_train_batch_begin(batch)
      step_logs, stop = step(next(iterator), tf.constant(float(model.stop_training)))
      logs = _numpy_logs(step_logs)
      model.stop_training = bool(stop.numpy())
      callback_list.on_train_batch_end(batch, logs)
      if model.stop_training:
        break
    epoch_logs = dict(logs)
    callback_list.on_epoch_end(epoch, epoch_logs)
    if model.stop_training:
      break
  callback_list.on_train_end(logs)
  return model.history


_TEST_STEPS = weakref.WeakKeyDictionary()  # model -> its compiled distributed test step


def evaluate(model, dataset):
  """`model.evaluate(dataset, return_dict=True)` as a loop over `strategy.run(model.test_step)`."""
  strategy = model.distribute_strategy
  step = _TEST_STEPS.get(model)
  if step is None:  # traced once per model, not at every validation
    step = _TEST_STEPS[model] = _step_function(strategy, model.test_step)
  model.reset_metrics()
  logs = {}
  iterator = iter(_distributed(strategy, dataset))
  while (batch := iterator.get_next_as_optional()).has_value():  # the workers agree on the end
    logs = _numpy_logs(step(batch.get_value(), tf.constant(0.0))[0])
  return logs
