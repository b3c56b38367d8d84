"""Training: flagfiles, losses, LR schedule, and end-to-end runs on a tiny phantom dataset.

The end-to-end runs use a 64x64 model with 4..16 channels on 8 training / 4 validation phantom
images (2 steps per epoch), a few seconds each on 2 CPU cores.
"""

import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import keras
import numpy as np
import pytest

from aop_tf import augment as augment_lib
from aop_tf import callbacks as callbacks_lib
from aop_tf import losses
from aop_tf import model as model_lib
from aop_tf import model_dir as model_dir_lib
from aop_tf import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "aop_tf", "configs")
# Resumed and uninterrupted runs must agree to this (no XLA, same process: exact in practice).
RESUME_ATOL = 1e-6


# ------------------------------------------------------------------------------------------------
# Flagfiles.


def _parse(*args):
  flag_values = flags.FlagValues()
  train.define_flags(flag_values)
  flag_values(train._flagfiles_first(["train", *args]))
  return train.config_from_flags(flag_values)


@pytest.mark.parametrize("name", ["paper", "cpu", "smoke", "baseline_cpu"])
def test_flagfiles_parse_and_check(name):
  config = _parse(f"--flagfile={os.path.join(CONFIGS, name + '.cfg')}")
  train.check_config(config)
  assert config.data_dir == "data/phantom"
  assert config.model_dir == f"runs/{name}"


def test_flagfiles_name_every_knob():
  flag_values = flags.FlagValues()
  train.define_flags(flag_values)
  knobs = {f.name for f in dataclasses.fields(train.TrainConfig)} - {"augment_config", "verbose"}
  aug_knobs = {name for name in flag_values if name.startswith("aug_")}
  for name in ("paper", "cpu", "baseline_cpu", "smoke"):
    with open(os.path.join(CONFIGS, name + ".cfg")) as f:
      lines = f.read().splitlines()
    named = {line.split("=")[0][2:] for line in lines if line.startswith("--")}
    named |= {n[2:] for n in named if n.startswith("no") and n[2:] in knobs}
    # The augmentation knobs matter only where augmentation is on.
    expected = knobs | (aug_knobs if "--augment" in lines else set())
    assert expected <= named, f"{name}.cfg misses {sorted(expected - named)}"


def test_paper_flagfile_is_the_paper_recipe():
  config = _parse(f"--flagfile={os.path.join(CONFIGS, 'paper.cfg')}")
  assert train.model_kwargs(config) == dict(model_lib.PAPER, norm="batch", seg_classes=0,
                                           mixed_precision=False)
  assert (config.sigma_cells, config.loss, config.heatmap_scale) == (2.0, "mse", 1.0)
  assert (config.optimizer, config.learning_rate, config.weight_decay) == ("adam", 1e-4, 1e-4)
  assert (config.lr_schedule, config.lr_step_epochs, config.lr_step_factor) == ("step", 15, 0.5)
  assert (config.epochs, config.batch_size, config.checkpoint_every) == (150, 4, 50)
  assert not config.augment and config.decode_method == "argmax"


def test_cpu_flagfiles():
  base = _parse(f"--flagfile={os.path.join(CONFIGS, 'baseline_cpu.cfg')}")
  cpu = _parse(f"--flagfile={os.path.join(CONFIGS, 'cpu.cfg')}")
  paper = _parse(f"--flagfile={os.path.join(CONFIGS, 'paper.cfg')}")
  cpu_model = dict(input_size=256, input_channels=1, base_filters=16, depth=4, heatmap_size=64,
                   decode_to_full=False, norm="batch")
  assert train.model_kwargs(base) == dict(cpu_model, seg_classes=0, mixed_precision=False)
  assert train.model_kwargs(cpu) == dict(
      cpu_model, seg_classes=3, mixed_precision=cpu.mixed_precision,
      heatmap_activation="spatial_softmax",
      softmax_peak_scale=pytest.approx(2 * math.pi * cpu.sigma_cells ** 2))
  for config in (base, cpu):
    assert config.max_train_minutes == 60
  for key in ("sigma_cells", "loss", "heatmap_scale", "optimizer", "learning_rate",
              "weight_decay", "lr_schedule", "lr_step_epochs", "lr_step_factor", "batch_size"):
    assert getattr(base, key) == getattr(paper, key), key
  assert not base.augment and base.decode_method == "argmax"
  assert cpu.augment and cpu.decode_method == "dark"
  assert cpu.augment_config["scale_range"] == (0.75, 1.3)
  assert cpu.weight_decay == 0.05 and cpu.epochs == 44 and cpu.mixed_precision
  assert not base.mixed_precision and not paper.mixed_precision


def test_command_line_overrides_flagfile_wherever_it_stands():
  smoke = os.path.join(CONFIGS, "smoke.cfg")
  assert _parse("--learning_rate=0.5", f"--flagfile={smoke}").learning_rate == 0.5
  assert _parse(f"--flagfile={smoke}", "--learning_rate=0.25").learning_rate == 0.25
  assert _parse("--flagfile", smoke, "--noaugment").augment is False


@pytest.mark.parametrize("changes,match", [
    (dict(loss="l1"), "--loss"),
    (dict(lr_schedule="poly"), "--lr_schedule"),
    (dict(batch_size=0), "--batch_size"),
    (dict(data_dir=""), "--data_dir"),
    (dict(model_dir=""), "--model_dir"),
    (dict(input_size=100), "input_size"),
    (dict(augment=True, augment_config={"affine_prob": 2.0}), "affine_prob"),
    (dict(aop_loss_weight=0.1), "--aop_loss_weight need --loss"),
    (dict(loss="softmax_ce", coord_loss_weight=-1.0), "--coord_loss_weight"),
])
def test_check_config_names_the_flag(changes, match):
  config = dataclasses.replace(train.TrainConfig(data_dir="d", model_dir="m"), **changes)
  with pytest.raises(train.ConfigError, match=match):
    train.check_config(config)


# ------------------------------------------------------------------------------------------------
# Losses and schedule.


def _targets(batch=2, size=16, sigma=1.5):
  from aop_tf import heatmap
  points = np.random.default_rng(0).uniform(2, size - 3, (batch, 3, 2)).astype("float32")
  return heatmap.gaussian_heatmaps(points, (size, size), sigma).numpy()


def test_mse_is_the_elementwise_mean():
  y = _targets()
  pred = y + np.random.default_rng(1).normal(0, 0.1, y.shape).astype("float32")
  got = float(losses.heatmap_loss("mse")(y, pred))
  assert got == pytest.approx(float(np.mean((pred - y) ** 2)), rel=1e-5)
  scaled = float(losses.heatmap_loss("mse", heatmap_scale=10.0)(y, pred))
  assert scaled == pytest.approx(float(np.mean((pred - 10 * y) ** 2)), rel=1e-5)


def test_weighted_mse_weights_the_foreground():
  y = _targets()
  pred = np.zeros_like(y)
  plain = float(losses.heatmap_loss("mse")(y, pred))
  weighted = float(losses.heatmap_loss("weighted_mse", foreground_weight=10.0)(y, pred))
  assert weighted == pytest.approx(float(np.mean(y ** 2 * (1 + 10 * y))), rel=1e-5)
  assert weighted > plain
  with pytest.raises(ValueError, match="foreground_weight"):
    losses.heatmap_loss("weighted_mse", foreground_weight=0.0)


def test_adaptive_wing_zero_at_target_and_smooth_at_theta():
  y = _targets()
  awing = losses.heatmap_loss("awing", heatmap_scale=2.0)
  assert float(awing(y, 2.0 * y)) == pytest.approx(0.0, abs=1e-6)
  assert float(awing(y, 2.0 * y + 0.3)) > 0.0
  # The two pieces meet at |d| = theta (continuity), for any target value.
  loss = losses.AdaptiveWingLoss(map_weight=0.0)
  y0 = np.full((1, 1, 1, 1), 0.4, np.float32)
  below = float(loss(y0, y0 + 0.5 - 1e-4))
  above = float(loss(y0, y0 + 0.5 + 1e-4))
  assert below == pytest.approx(above, abs=1e-2)
  with pytest.raises(ValueError, match="Unknown loss"):
    losses.heatmap_loss("l1")


def test_masked_segmentation_loss_ignores_unlabelled_examples():
  probs = np.full((2, 4, 4, 3), 1.0 / 3.0, np.float32)
  labels = np.zeros((2, 4, 4), np.int32)
  labels[1] = -1
  per_example = losses.MaskedSegmentationLoss()(labels, probs)
  # Mean over the batch: example 0 contributes log(3), example 1 (no mask) 0.
  assert float(per_example) == pytest.approx(math.log(3.0) / 2, rel=1e-5)


def test_paper_step_schedule_and_warmup():
  def lr(epoch, **kw):
    return callbacks_lib.learning_rate_at(epoch * 10, 10, 1e-4, **kw)
  assert lr(0) == lr(14) == pytest.approx(1e-4)
  assert lr(15) == lr(29) == pytest.approx(5e-5)
  assert lr(30) == pytest.approx(2.5e-5)
  assert lr(149) == pytest.approx(1e-4 * 0.5 ** 9)
  assert lr(0, schedule="cosine", epochs=10) == pytest.approx(1e-4)
  assert lr(5, schedule="cosine", epochs=10) == pytest.approx(5e-5)
  assert lr(0, schedule="constant", warmup_epochs=1) == pytest.approx(1e-5)
  assert lr(1, schedule="constant", warmup_epochs=1) == pytest.approx(1e-4)


# ------------------------------------------------------------------------------------------------
# End to end on a tiny phantom dataset.


def _config(data_dir, model_dir, **changes):
  config = train.TrainConfig(
      data_dir=data_dir, model_dir=str(model_dir), input_size=64, input_channels=1,
      base_filters=4, depth=2, heatmap_size=16, sigma_cells=1.0, learning_rate=1e-3,
      lr_schedule="step", lr_step_epochs=2, epochs=3, batch_size=4, checkpoint_every=2,
      num_tb_images=2, decode_method="dark", decode_blur_sigma=1.0, verbose=0)
  return dataclasses.replace(config, **changes)


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
  config = model_dir_lib.read_config(model_dir)
  assert set(config) == {"model", "pipeline", "decode", "flags"}
  assert config["model"] == dict(input_size=64, input_channels=1, base_filters=4, depth=2,
                                 heatmap_size=16, decode_to_full=False, norm="batch",
                                 seg_classes=0, mixed_precision=False)
  assert config["pipeline"] == dict(input_size=64, input_channels=1, heatmap_size=16,
                                    sigma_cells=1.0)
  assert config["decode"] == {"method": "dark", "blur_sigma_cells": 1.0,
                              "fh1_method": "heatmap"}
  assert config["flags"]["learning_rate"] == 1e-3
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


class _SignalAt(keras.callbacks.Callback):
  """Sends SIGTERM to this process after batch `batch` of epoch `epoch` (0-based)."""

  def __init__(self, epoch, batch):
    super().__init__()
    self.epoch, self.batch, self._current = epoch, batch, -1

  def on_epoch_begin(self, epoch, logs=None):
    self._current = epoch

  def on_train_batch_end(self, batch, logs=None):
    if self._current == self.epoch and batch == self.batch:
      os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_then_resume_matches_uninterrupted_run(reference_run, phantom_dir, tmp_path):
  config = _config(phantom_dir, tmp_path / "resumed")
  batch = 0  # of 2 steps per epoch (8 phantom images, batch 4)
  # SIGTERM after step `batch + 1` of epoch 2: latest.keras is saved there, mid-epoch.
  stopped = train.train(config, extra_callbacks=[_SignalAt(epoch=1, batch=batch)])
  assert (stopped.stop_reason, stopped.signal_name, stopped.epochs_done,
          stopped.steps_into_epoch) == ("signal", "SIGTERM", 1, batch + 1)
  state = model_dir_lib.read_json(str(tmp_path / "resumed" / "state.json"))
  assert state["epoch"] == 1 and state["partial"]["epoch"] == 2
  assert state["partial"]["batches"] == batch + 1 and "loss" in state["partial"]["logs"]
  model = train.build_compiled_model(config)
  model.optimizer.build(model.trainable_variables)
  model.load_weights(model_dir_lib.checkpoint_path(str(tmp_path / "resumed"), "latest"))
  steps = state["partial"]["steps_per_epoch"]
  assert int(model.optimizer.iterations.numpy()) == steps + batch + 1
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
  resumed = train.train(config)
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
  config = _config(phantom_dir, tmp_path / "run")
  train.train(config, extra_callbacks=[_SignalAt(epoch=1, batch=0)])
  state_path = str(tmp_path / "run" / "state.json")
  state = model_dir_lib.read_json(state_path)
  del state["partial"]
  model_dir_lib.write_json(state_path, state)
  with pytest.raises(train.ConfigError, match="not a whole number of epochs"):
    train.train(config)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(reference_run, phantom_dir, tmp_path):
  model_dir = tmp_path / "nan"
  shutil.copytree(reference_run.model_dir, model_dir)
  latest = model_dir_lib.checkpoint_path(str(model_dir), "latest")
  with open(latest, "rb") as f:
    before = f.read()
  # Resume for a 4th epoch with an absurd learning rate: the activations overflow.
  config = _config(phantom_dir, model_dir, epochs=4, learning_rate=1e35)
  with pytest.raises(train.TrainingDiverged, match=r"NaN/inf at epoch 4.*\(epoch 3\) is kept"):
    train.train(config)
  with open(latest, "rb") as f:
    assert f.read() == before
  assert model_dir_lib.read_json(str(model_dir / "state.json"))["epoch"] == 3


def test_time_budget_stops_after_the_epoch(phantom_dir, tmp_path):
  config = _config(phantom_dir, tmp_path / "budget", max_train_minutes=1e-6, num_tb_images=0,
                   val_every=5)
  result = train.train(config)
  assert (result.stop_reason, result.epochs_done) == ("time_budget", 1)
  assert "val_mre_512" in result.history  # validated at the last epoch although val_every=5
  again = train.train(config)  # budget already spent: nothing more
  assert (again.stop_reason, again.epochs_done) == ("time_budget", 1)


def test_resume_refuses_other_settings(reference_run, phantom_dir):
  with pytest.raises(train.ConfigError, match="--batch_size: 4 -> 2"):
    train.train(_config(phantom_dir, reference_run.model_dir, batch_size=2))
  with pytest.raises(train.ConfigError, match="--resume"):
    train.train(_config(phantom_dir, reference_run.model_dir, resume=False))
  done = train.train(_config(phantom_dir, reference_run.model_dir))
  assert done.epochs_done == 3


def test_flags_an_old_run_lacks_count_at_their_defaults(tmp_path):
  """A config.json from before a flag existed compares as if it held the flag's default."""
  def config_json(**changes):
    aug = dict(augment_lib.AugmentConfig().to_dict(), **changes.pop("aug", {}))
    return train.config_json(_config("data", tmp_path / "run", augment_config=aug, **changes))

  old = config_json()
  del old["flags"]["mixed_precision"], old["flags"]["augment_config"]["noise_std"]
  train._check_resumable(old, config_json(), "run")  # the defaults: nothing changed
  with pytest.raises(train.ConfigError, match="--mixed_precision: False -> True"):
    train._check_resumable(old, config_json(mixed_precision=True), "run")
  with pytest.raises(train.ConfigError, match="--aug_noise_std: 3.0 -> 5.0"):
    train._check_resumable(old, config_json(aug={"noise_std": 5.0}), "run")


def test_segmentation_head_and_other_losses(phantom_dir, tmp_path):
  config = _config(phantom_dir, tmp_path / "seg", seg_classes=3, seg_loss_weight=0.5,
                   loss="awing", heatmap_scale=2.0, epochs=1, augment=True, num_tb_images=1)
  result = train.train(config)
  for key in ("heatmaps_loss", "segmentation_loss", "val_segmentation_loss", "val_mre_px"):
    assert all(math.isfinite(v) for v in result.history[key]), key


def test_missing_data_dir_is_a_config_error(tmp_path):
  with pytest.raises(train.ConfigError, match="does not exist"):
    train.train(_config(str(tmp_path / "nothing"), tmp_path / "run"))


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


def test_cli_flag_errors_are_one_line(tmp_path):
  code, lines = _run_cli("--loss=l1")
  assert code != 0 and len(lines) == 1 and "--loss" in lines[0], lines
  code, lines = _run_cli(f"--data_dir={tmp_path / 'missing'}", f"--model_dir={tmp_path / 'run'}")
  assert code != 0 and len(lines) == 1 and "does not exist" in lines[0], lines


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


def test_mixed_precision_trains_resumes_and_evaluates_in_float32(phantom_dir, tmp_path):
  config = _config(phantom_dir, tmp_path / "bf16", mixed_precision=True, seg_classes=3,
                   loss="softmax_ce", epochs=1, num_tb_images=1)
  result = train.train(config)
  assert all(math.isfinite(v) for v in result.history["loss"])
  assert model_dir_lib.read_json(str(tmp_path / "bf16" / "config.json"))["model"][
      "mixed_precision"] is True
  again = train.train(dataclasses.replace(config, epochs=2))
  assert again.epochs_done == 2
  model, _ = model_dir_lib.load_model(str(tmp_path / "bf16"))
  assert model.get_layer("enc1_conv1").dtype_policy.name == "float32"
  with pytest.raises(train.ConfigError, match="--mixed_precision"):
    train.train(dataclasses.replace(config, mixed_precision=False, epochs=3))
