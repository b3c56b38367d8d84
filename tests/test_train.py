"""Training: flagfiles, losses, LR schedule, and end-to-end runs on a tiny phantom dataset.

The end-to-end runs use a 64x64 model with 4..16 channels on 8 training / 4 validation phantom
images (2 steps per epoch), a few seconds each on 2 CPU cores.
"""

import math
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from aop_tf import config
from aop_tf import model_dir as model_dir_lib
from aop_tf import task
from aop_tf import train
import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "aop_tf", "configs")
# Resumed and uninterrupted runs must agree to this (no XLA, same process: exact in practice).
RESUME_ATOL = 1e-6


# ------------------------------------------------------------------------------------------------
# End to end on a tiny phantom dataset.


def _config(data_dir, model_dir, **changes):
  return helpers.train_spec(data_dir, model_dir, **changes)


@pytest.fixture(scope="module")
def reference_run(phantom_dir, tmp_path_factory):
  """An uninterrupted 3-epoch run, shared by the tests below."""
  model_dir = tmp_path_factory.mktemp("runs") / "reference"
  result = train.train(_config(phantom_dir, model_dir))
  return result


def _weights(path):
  model = keras.saving.load_model(path, compile=False, safe_mode=True)
  return [np.asarray(w) for w in model.weights]


def _tags(log_dir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(log_dir, size_guidance={"tensors": 0})
  acc.Reload()
  return {tag: [event.step for event in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}


def test_smoke_run_writes_the_training_directory(reference_run, phantom_dir):
  model_dir = reference_run.model_dir
  assert reference_run.epochs_done == 3 and reference_run.stop_reason is None
  assert model_dir_lib.read_spec(model_dir) == _config(phantom_dir, model_dir)
  written = model_dir_lib.read_json(os.path.join(model_dir, "config.json"))
  assert set(written) == {"format"} | set(config.SECTIONS)
  assert written["model"] == dict(input_size=64, input_channels=1, base_filters=4, depth=2,
                                  heatmap_size=16, decode_to_full=False, norm="batch",
                                  seg_classes=0, mixed_precision=False, dropout=0.0)
  assert written["codec"] == dict(sigma_cells=1.0, heatmap_scale=1.0, decode_method="dark",
                                  decode_blur_sigma=1.0, fh1_method="heatmap")
  for name in ("latest", "best_val_loss", "best_val_mre", "epoch_0002"):
    assert os.path.exists(model_dir_lib.checkpoint_path(model_dir, name)), name
  assert not os.path.exists(model_dir_lib.checkpoint_path(model_dir, "epoch_0001"))
  state = model_dir_lib.read_json(os.path.join(model_dir, "state.json"))
  assert state["epoch"] == 3 and len(state["history"]) == 3
  assert state["best_val_loss_epoch"] in (1, 2, 3)
  history = reference_run.history
  assert len(history["loss"]) == 3 and all(math.isfinite(v) for v in history["loss"])
  assert len(history["val_mre_512"]) == 3
  # The step schedule: x0.5 after 2 epochs.
  assert history["learning_rate"] == pytest.approx([1e-3, 1e-3, 5e-4])
  # Evaluation rebuilds from the directory alone.
  model, _ = model_dir_lib.load_model(model_dir)
  assert model(np.zeros((1, 64, 64, 1), np.float32))["heatmaps"].shape == (1, 16, 16, 3)
  tags = _tags(os.path.join(model_dir, "logs"))
  for tag in ("loss/train", "loss/val", "learning_rate", "val_mre_px/PS1", "val_mre_512/FH1",
              "val_mre_512/mean", "val_aop_error_deg/mean", "val/overlay", "val/heatmaps"):
    assert tags.get(tag) == [1, 2, 3], tag


def test_sigterm_then_resume_matches_uninterrupted_run(reference_run, phantom_dir, tmp_path):
  spec = _config(phantom_dir, tmp_path / "resumed")
  batch = 0  # of 2 steps per epoch (8 phantom images, batch 4)
  # SIGTERM after step `batch + 1` of epoch 2: latest.keras is saved there, mid-epoch.
  stopped = train.train(spec, extra_callbacks=[helpers.SignalAt(epoch=1, batch=batch)])
  assert (stopped.stop_reason, stopped.signal_name, stopped.epochs_done,
          stopped.steps_into_epoch) == ("signal", "SIGTERM", 1, batch + 1)
  state = model_dir_lib.read_json(str(tmp_path / "resumed" / "state.json"))
  assert state["epoch"] == 1 and state["partial"]["epoch"] == 2
  assert state["partial"]["batches"] == batch + 1 and "loss" in state["partial"]["logs"]
  model = task.build_compiled_model(spec)
  model.optimizer.build(model.trainable_variables)
  model.load_weights(model_dir_lib.checkpoint_path(str(tmp_path / "resumed"), "latest"))
  steps = state["partial"]["steps_per_epoch"]
  assert int(model.optimizer.iterations.numpy()) == steps + batch + 1
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
  resumed = train.train(spec)
  assert resumed.epochs_done == 3 and resumed.stop_reason is None
  assert "partial" not in model_dir_lib.read_json(str(tmp_path / "resumed" / "state.json"))
  assert len(resumed.history["loss"]) == 3
  # Epoch 2's loss merges the logs of its two parts, batch-weighted.
  np.testing.assert_allclose(resumed.history["loss"], reference_run.history["loss"], rtol=1e-4)
  ours = _weights(model_dir_lib.checkpoint_path(str(tmp_path / "resumed"), "latest"))
  ref = _weights(model_dir_lib.checkpoint_path(reference_run.model_dir, "latest"))
  assert len(ours) == len(ref)
  worst = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, ref))
  assert worst <= RESUME_ATOL, worst
  print(f"resume: max |weight difference| = {worst:.3g}")


def test_a_mid_epoch_checkpoint_without_its_state_is_refused(reference_run, phantom_dir,
                                                             tmp_path):
  spec = _config(phantom_dir, tmp_path / "run")
  train.train(spec, extra_callbacks=[helpers.SignalAt(epoch=1, batch=0)])
  state_path = str(tmp_path / "run" / "state.json")
  state = model_dir_lib.read_json(state_path)
  del state["partial"]
  model_dir_lib.write_json(state_path, state)
  with pytest.raises(train.ConfigError, match="not a whole number of epochs"):
    train.train(spec)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(reference_run, phantom_dir, tmp_path):
  model_dir = tmp_path / "nan"
  shutil.copytree(reference_run.model_dir, model_dir)
  latest = model_dir_lib.checkpoint_path(str(model_dir), "latest")
  with open(latest, "rb") as f:
    before = f.read()
  # Resume for a 4th epoch with an absurd learning rate: the activations overflow.
  spec = _config(phantom_dir, model_dir, epochs=4, learning_rate=1e35)
  with pytest.raises(train.TrainingDiverged, match=r"NaN/inf at epoch 4.*\(epoch 3\) is kept"):
    train.train(spec)
  with open(latest, "rb") as f:
    assert f.read() == before
  assert model_dir_lib.read_json(str(model_dir / "state.json"))["epoch"] == 3


def test_resume_refuses_other_settings(reference_run, phantom_dir):
  with pytest.raises(train.ConfigError, match="--batch_size: 4 -> 2"):
    train.train(_config(phantom_dir, reference_run.model_dir, batch_size=2))
  with pytest.raises(train.ConfigError, match="--resume"):
    train.train(_config(phantom_dir, reference_run.model_dir, resume=False))
  done = train.train(_config(phantom_dir, reference_run.model_dir))
  assert done.epochs_done == 3


# ------------------------------------------------------------------------------------------------
# Command line.


def _run_cli(*args, timeout=120):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-m", "aop_tf.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  # TF's C++ start-up notes ("WARNING: All log messages...", "I0000 ... oneDNN") are not ours.
  lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip() and
           not line.startswith(("WARNING: All log messages", "I0000 "))]
  return proc.returncode, lines


# Bad flags and a missing --data_dir give one line: tests/test_robustness_cli.py.


@pytest.mark.slow
def test_cli_smoke_flagfile_runs_and_resumes(phantom_dir, tmp_path):
  args = [f"--flagfile={os.path.join(CONFIGS, 'smoke.cfg')}", f"--data_dir={phantom_dir}",
          f"--model_dir={tmp_path / 'smoke'}", "--verbose=2"]
  code, lines = _run_cli(*args)
  assert code == 0, lines
  assert any(line.startswith("Done:") for line in lines), lines
  code, lines = _run_cli(*args, "--epochs=3")
  assert code == 0 and any("Resuming" in line for line in lines), lines


@pytest.mark.slow
def test_cli_sigterm_exits_cleanly(phantom_dir, tmp_path):
  model_dir = tmp_path / "sig"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.Popen(
      [sys.executable, "-m", "aop_tf.train", f"--flagfile={os.path.join(CONFIGS, 'smoke.cfg')}",
       f"--data_dir={phantom_dir}", f"--model_dir={model_dir}", "--epochs=1000",
       "--steps_per_epoch=2", "--verbose=2"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  state = model_dir / "state.json"
  deadline = time.monotonic() + 120
  while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM, out
  assert "Traceback" not in out and "Stopped by SIGTERM" in out, out
  epoch = model_dir_lib.read_json(str(state))["epoch"]
  model = keras.saving.load_model(model_dir_lib.checkpoint_path(str(model_dir), "latest"),
                                  compile=False)
  assert epoch >= 1 and model is not None
