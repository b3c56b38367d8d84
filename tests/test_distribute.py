"""`--distribute`: mirrored replicas match one device; several workers train, checkpoint, resume.

The fast test splits the CPU into two logical devices (possible only before TensorFlow starts,
hence a fresh process) and trains the same tiny run on one device at batch 8 and mirrored over
both at 4 per replica. The slow test starts two worker processes on 127.0.0.1 ports.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from aop_tf import config
from aop_tf import distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Mirrored and one-device training losses, per epoch: the same sums in another order.
LOSS_RTOL = 1e-3

_MIRRORED_VS_ONE = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from aop_tf import config, train
    data_dir, out = sys.argv[1], sys.argv[2]
    histories = {}
    for kind, batch in (("none", 8), ("mirrored", 4)):
      spec = config.RunSpec().replace(
          data_dir=data_dir, model_dir=os.path.join(out, kind), input_size=64, base_filters=4,
          depth=2, heatmap_size=16, sigma_cells=1.0, loss="softmax_ce", seg_classes=3,
          learning_rate=1e-3, lr_scaling="none", epochs=3, batch_size=batch, num_tb_images=0,
          verbose=0, distribute=kind)
      histories[kind] = train.train(spec).history
    print(json.dumps(histories))
""")


def test_mirrored_over_two_cpus_follows_the_one_device_trajectory(phantom_dir, tmp_path):
  out = subprocess.run([sys.executable, "-c", _MIRRORED_VS_ONE, phantom_dir, str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  histories = json.loads(out.stdout.strip().splitlines()[-1])
  one, mirrored = histories["none"], histories["mirrored"]
  for key in ("loss", "heatmaps_loss", "segmentation_loss"):
    assert len(one[key]) == len(mirrored[key]) == 3
    for a, b in zip(one[key], mirrored[key]):
      assert abs(a - b) <= LOSS_RTOL * abs(a), (key, one[key], mirrored[key])
  assert one["loss"][-1] < one["loss"][0]  # it trained


def test_global_batch_and_learning_rate_follow_the_replicas():
  spec = config.RunSpec().replace(batch_size=8, learning_rate=1e-3)
  assert distribute.scaled_spec(spec, 1) is spec
  four = distribute.scaled_spec(spec, 4)
  assert four.data.batch_size == 32
  assert four.optim.learning_rate == pytest.approx(4e-3)
  sqrt = distribute.scaled_spec(spec.replace(lr_scaling="sqrt"), 4)
  assert sqrt.optim.learning_rate == pytest.approx(2e-3)
  assert distribute.scaled_spec(spec.replace(lr_scaling="none"), 4).optim.learning_rate == 1e-3


def test_the_mean_teacher_is_refused_with_a_reason():
  with pytest.raises(config.ConfigError, match="--distribute=mirrored with --unlabeled_split"):
    config.RunSpec().replace(distribute="mirrored", unlabeled_split="unlabeled")


def test_multi_worker_without_tf_config_is_one_line(entry_points, phantom_dir, tmp_path):
  assert "TF_CONFIG" not in os.environ
  code, stdout, stderr = entry_points.run("aop_tf.train", [
      f"--data_dir={phantom_dir}", f"--model_dir={tmp_path / 'run'}", "--distribute=multi_worker",
      "--epochs=1"])
  assert code == 1, stderr
  assert stderr.strip().splitlines() == [
      "train: error: --distribute=multi_worker needs TF_CONFIG, e.g. {\"cluster\": {\"worker\": "
      "[\"host1:port\", \"host2:port\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}"], stdout


# ------------------------------------------------------------------------------------------------
# Two worker processes on this host.


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(phantom_dir, model_dir, epochs, log_dir, tag):
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  procs = []
  for index in range(2):
    os.makedirs(os.path.join(log_dir, "tmp"), exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=os.path.join(log_dir, "tmp"),
               TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                  "index": index}}))
    log = open(os.path.join(log_dir, f"{tag}_worker{index}.log"), "w")  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-m", "aop_tf.train", "--flagfile=aop_tf/configs/smoke.cfg",
         f"--data_dir={phantom_dir}", f"--model_dir={model_dir}", "--distribute=multi_worker",
         f"--epochs={epochs}", "--batch_size=2", "--steps_per_epoch=2", "--checkpoint_every=1",
         "--num_tb_images=0", "--verbose=2"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, timeout):
  deadline = time.monotonic() + timeout
  for proc in procs:
    try:
      proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
  return [proc.returncode for proc in procs]


def _state(model_dir):
  with open(os.path.join(model_dir, "state.json")) as f:
    return json.load(f)


def _log(log_dir, name):
  with open(os.path.join(log_dir, name)) as f:
    return f.read()


@pytest.mark.slow
def test_two_workers_train_checkpoint_and_resume_after_a_worker_is_killed(phantom_dir, tmp_path):
  model_dir = str(tmp_path / "run")
  codes = _wait(_start_workers(phantom_dir, model_dir, 1, tmp_path, "first"), timeout=300)
  assert codes == [0, 0], _log(tmp_path, "first_worker0.log")[-3000:]
  assert _state(model_dir)["epoch"] == 1
  assert os.path.exists(os.path.join(model_dir, "latest.keras"))
  assert not os.listdir(tmp_path / "tmp")  # worker 1's private copy is gone

  # Kill worker 1 once the second epoch has begun; the chief cannot go on without it.
  procs = _start_workers(phantom_dir, model_dir, 3, tmp_path, "second")
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and "Epoch 3/3" not in _log(tmp_path, "second_worker0.log"):
    if procs[0].poll() is not None:
      break
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGKILL)
  _wait(procs, timeout=60)  # the chief fails or is killed at the deadline
  epochs_kept = _state(model_dir)["epoch"]
  assert 1 <= epochs_kept < 3

  codes = _wait(_start_workers(phantom_dir, model_dir, 3, tmp_path, "third"), timeout=300)
  chief_log = _log(tmp_path, "third_worker0.log")
  assert codes == [0, 0], chief_log[-3000:]
  assert f"Resuming {model_dir} after epoch {epochs_kept}" in chief_log
  assert _state(model_dir)["epoch"] == 3


def test_distributed_evaluation_is_traced_once_per_model():
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
  model.compile(loss="mse")
  rng = np.random.default_rng(0)
  data = tf.data.Dataset.from_tensor_slices(
      (rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")))
  first = distribute.evaluate(model, data.batch(4))
  second = distribute.evaluate(model, data.batch(4))  # the next validation: no new trace
  assert first == second
  assert first["loss"] == pytest.approx(model.evaluate(data.batch(4), verbose=0), rel=1e-5)
  step = distribute._TEST_STEPS[model]  # pylint: disable=protected-access
  assert step.experimental_get_tracing_count() == 1
