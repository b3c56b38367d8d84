"""aop_tf.ensemble: the average of runs is a training directory that evaluates, exports, predicts."""

import os

import numpy as np
import pytest

from aop_tf import config
from aop_tf import ensemble
from aop_tf import export
from aop_tf import model_dir as model_dir_lib
from aop_tf import predictor as predictor_lib
import helpers


@pytest.fixture(scope="module")
def members(tmp_path_factory):
  root = tmp_path_factory.mktemp("members")
  spec = helpers.tiny_spec(loss="softmax_ce", seg_classes=3)
  folders = []
  for seed in (1, 2, 3):
    folder = str(root / f"run{seed}")
    helpers.write_model_dir(folder, spec, seed=seed)
    folders.append(folder)
  return folders


def test_the_ensemble_predicts_the_mean_of_its_members(members, tmp_path):
  out = str(tmp_path / "ens")
  spec = ensemble.build(members, out)
  assert os.path.exists(os.path.join(out, ensemble.ENSEMBLE_FILE))
  model, loaded = model_dir_lib.load_model(out)
  assert loaded == spec and not loaded.model.mixed_precision
  images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)).astype(np.float32)
  got = model(images, training=False)
  outs = [model_dir_lib.load_model(m)[0](images, training=False) for m in members]
  for key in ("heatmaps", "segmentation"):
    np.testing.assert_allclose(got[key], np.mean([o[key] for o in outs], axis=0), atol=1e-6)
  np.testing.assert_allclose(got["member_heatmaps"], np.stack([o["heatmaps"] for o in outs], 1),
                             atol=1e-6)
  # A predictor reads it like any run: landmarks decoded from the averaged heatmaps, and the
  # spread of the members' AoPs as its uncertainty (NaN for one run).
  uint8 = [np.full((64, 64, 1), 100, np.uint8), np.full((64, 64, 1), 30, np.uint8)]
  result = predictor_lib.load(out).predict(uint8)
  assert result["landmarks"].shape == (2, 3, 2)
  member_aops = np.stack([predictor_lib.load(m).predict(uint8)["aop_deg"] for m in members], 1)
  np.testing.assert_allclose(result["aop_spread_deg"], np.std(member_aops, axis=1), atol=1e-3)
  assert np.all(np.isnan(predictor_lib.load(members[0]).predict(uint8)["aop_spread_deg"]))


def test_the_ensemble_exports_and_the_export_agrees(members, tmp_path):
  out = str(tmp_path / "ens")
  ensemble.build(members[:2], out)
  info = export.export_model_dir(out, str(tmp_path / "export"))
  assert info["verification"]["tflite"]["landmarks_px"] < 1.0
  images = [np.full((64, 64, 1), 100, np.uint8)]
  want = predictor_lib.load(out).predict(images)["aop_spread_deg"]
  for exported in ("export", "export/model.tflite"):
    got = predictor_lib.load(str(tmp_path / exported)).predict(images)["aop_spread_deg"]
    np.testing.assert_allclose(got, want, atol=0.05)


def test_members_must_take_the_same_input(members, tmp_path):
  other = str(tmp_path / "other")
  helpers.write_model_dir(other, helpers.tiny_spec(input_size=32, loss="softmax_ce",
                                                   seg_classes=3))
  with pytest.raises(config.ConfigError, match="does not fit"):
    ensemble.build([members[0], other], str(tmp_path / "ens"))
  with pytest.raises(config.ConfigError, match="two or more"):
    ensemble.build([members[0]], str(tmp_path / "ens"))
