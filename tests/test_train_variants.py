"""Training variants on a tiny phantom dataset: mixed precision, a segmentation head and other
losses, the time budget, refused data, and the callback order (resume: tests/test_train.py)."""

import math
import os

import keras
import numpy as np
import pytest

from aop_tf import callbacks as callbacks_lib
from aop_tf import model_dir as model_dir_lib
from aop_tf import train
import helpers


def _config(data_dir, model_dir, **changes):
  return helpers.train_spec(data_dir, model_dir, **changes)


def test_time_budget_stops_after_the_epoch(phantom_dir, tmp_path):
  spec = _config(phantom_dir, tmp_path / "budget", max_train_minutes=1e-6, num_tb_images=0,
                 val_every=5)
  result = train.train(spec)
  assert (result.stop_reason, result.epochs_done) == ("time_budget", 1)
  assert "val_mre_512" in result.history  # validated at the last epoch although val_every=5
  again = train.train(spec)  # budget already spent: nothing more
  assert (again.stop_reason, again.epochs_done) == ("time_budget", 1)


def test_segmentation_head_and_other_losses(phantom_dir, tmp_path):
  spec = _config(phantom_dir, tmp_path / "seg", seg_classes=3, seg_loss_weight=0.5,
                 loss="awing", heatmap_scale=2.0, epochs=1, augment=True, num_tb_images=0)
  result = train.train(spec)
  for key in ("heatmaps_loss", "segmentation_loss", "val_segmentation_loss", "val_mre_px"):
    assert all(math.isfinite(v) for v in result.history[key]), key


def test_callbacks_must_run_in_their_order():
  status = callbacks_lib.RunStatus(2)
  guard = callbacks_lib.StopGuard(status)
  validation = callbacks_lib.Validation(status, None, None, None, 1, 1)
  checkpointer = callbacks_lib.Checkpointer(status, "m", 0, {})
  callbacks_lib.check_order([keras.callbacks.Callback(), guard, validation, checkpointer])
  # Checkpointer before Validation would save best_val_mre from the previous epoch's figures.
  with pytest.raises(ValueError, match="out of order"):
    callbacks_lib.check_order([guard, checkpointer, validation])
  with pytest.raises(ValueError, match="out of order"):
    callbacks_lib.check_order([guard, keras.callbacks.Callback(), validation])


def test_aop_loss_refuses_non_square_images(tmp_path):
  # The AoP term is measured on the square heatmap grid, which is not the image's angle on a
  # non-square image; such data is refused before anything trains.
  from data_prep import build  # pylint: disable=import-outside-toplevel
  import cv2  # pylint: disable=import-outside-toplevel
  folder = tmp_path / "wide"
  folder.mkdir()
  rows = ["Filename,PS1,PS2,FH1"]
  for i in range(4):
    cv2.imwrite(str(folder / f"{i}.png"), np.full((48, 64), 60 + i, np.uint8))
    rows.append(f'{i}.png,"(40, 10)","(20, 12)","(50, 40)"')
  (folder / "train.csv").write_text("\n".join(rows) + "\n")
  data_dir = build.build_dataset("csv", data_dir=str(folder), out_dir=str(tmp_path / "ds"),
                                 verbose=False)
  spec = _config(data_dir, tmp_path / "run", val_split="", loss="softmax_ce",
                 aop_loss_weight=0.1)
  with pytest.raises(ValueError, match="needs square images.*0.png of .* is 64x48"):
    train.train(spec)
  assert not os.path.exists(tmp_path / "run" / "config.json")


def test_missing_data_dir_is_a_config_error(tmp_path):
  with pytest.raises(train.ConfigError, match="does not exist"):
    train.train(_config(str(tmp_path / "nothing"), tmp_path / "run"))


def test_mixed_precision_trains_resumes_and_evaluates_in_float32(phantom_dir, tmp_path):
  spec = _config(phantom_dir, tmp_path / "bf16", mixed_precision=True, seg_classes=3,
                 loss="softmax_ce", epochs=1, num_tb_images=0)
  result = train.train(spec)
  assert all(math.isfinite(v) for v in result.history["loss"])
  assert model_dir_lib.read_spec(str(tmp_path / "bf16")).model.mixed_precision is True
  again = train.train(spec.replace(epochs=2))
  assert again.epochs_done == 2
  model, _ = model_dir_lib.load_model(str(tmp_path / "bf16"))
  assert model.get_layer("enc1_conv1").dtype_policy.name == "float32"
  with pytest.raises(train.ConfigError, match="--mixed_precision"):
    train.train(spec.replace(mixed_precision=False, epochs=3))
