"""aop_tf.zoo: shipped models by name, in predict and evaluate; paths always win over names;
aop_tf.ship builds them."""

import json
import os
import shutil

import numpy as np
import pytest

from aop_tf import export
from aop_tf import predictor as predictor_lib
from aop_tf import results
from aop_tf import ship
from aop_tf import zoo
import helpers


@pytest.fixture(scope="module")
def shipped_root(tmp_path_factory):
  """A zoo folder holding one tiny model, 'tiny', as the shipped models are laid out."""
  root = tmp_path_factory.mktemp("zoo")
  run = str(root / "run")
  helpers.write_model_dir(run, helpers.tiny_spec(loss="softmax_ce"))
  exported = str(root / "export")
  export.export_model_dir(run, exported, quantize="dynamic")
  os.makedirs(root / "models" / "tiny")
  for name in ("model.tflite", "export_info.json"):
    shutil.copy(os.path.join(exported, name), root / "models" / "tiny")
  (root / "models" / "tiny" / zoo.CARD_FILE).write_text('{"name": "tiny"}')
  return str(root / "models")


def test_names_resolve_to_their_folders_and_paths_win(shipped_root, tmp_path, monkeypatch):
  assert zoo.names(shipped_root) == ["tiny"]
  assert zoo.resolve("tiny", shipped_root) == os.path.join(shipped_root, "tiny")
  assert zoo.card("tiny", shipped_root) == {"name": "tiny"}
  assert zoo.resolve("nothing", shipped_root) is None
  monkeypatch.chdir(tmp_path)
  os.makedirs("tiny")  # a folder of that name in the working directory is that folder
  assert zoo.resolve("tiny", shipped_root) == "tiny"


def test_predictor_loads_a_shipped_model_by_name(shipped_root, monkeypatch):
  monkeypatch.setattr(zoo, "ROOT", shipped_root)
  model = predictor_lib.load("tiny")
  assert isinstance(model, predictor_lib.TFLitePredictor)
  out = model.predict([np.full((70, 90, 1), 80, np.uint8)])
  assert out["landmarks"].shape == (1, 3, 2)


def test_an_unknown_name_lists_the_shipped_ones(shipped_root, monkeypatch):
  monkeypatch.setattr(zoo, "ROOT", shipped_root)
  with pytest.raises(FileNotFoundError, match=r"nor a shipped model \(tiny\)"):
    predictor_lib.load("psfhs_v0")


def test_a_models_card_sets_predicts_flag_threshold(shipped_root, tmp_path, monkeypatch):
  monkeypatch.setattr(zoo, "ROOT", shipped_root)
  assert zoo.flag_min_confidence("tiny") == 0.3  # no flag in its card: the default
  folder = tmp_path / "export"
  folder.mkdir()
  (folder / "model.tflite").write_bytes(b"")
  (folder / zoo.CARD_FILE).write_text('{"flag": {"min_confidence": 0.69}}')
  assert zoo.flag_min_confidence(str(folder)) == 0.69
  assert zoo.flag_min_confidence(str(folder / "model.tflite")) == 0.69


def test_evaluate_takes_a_shipped_name_and_writes_outside_the_package(shipped_root, phantom_dir,
                                                                      tmp_path, monkeypatch):
  from aop_tf import evaluate  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(zoo, "ROOT", shipped_root)
  monkeypatch.chdir(tmp_path)
  report = evaluate.evaluate("tiny", data_dir=phantom_dir, split="val", overlays=0,
                             progress=False, verbose=False)
  assert report["n_images"] == 4
  assert os.path.isfile(os.path.join("runs", "tiny_eval_val", "report.json"))
  assert sorted(os.listdir(os.path.join(shipped_root, "tiny"))) == [
      "export_info.json", "model.tflite", zoo.CARD_FILE]
  with pytest.raises(FileNotFoundError, match=r"shipped model \(tiny\)"):
    evaluate.evaluate("psfhs_v0", data_dir=phantom_dir, progress=False, verbose=False)


def _hand_made_fit(path):
  """A quality fit as `benchmarks.quality --fit` writes it (all weights zero: score = e^1 - 1)."""
  from aop_tf import quality  # pylint: disable=import-outside-toplevel
  n = len(quality.FEATURES)
  fit = {"created": "2026-12-03T00:00:00+00:00", "command": "python -m benchmarks.quality --fit",
         "fitted": {"features": list(quality.FEATURES), "mean": [0.0] * n, "scale": [1.0] * n,
                    "coef": [0.0] * n, "intercept": 1.0, "interval_q": 2.0, "coverage": 0.9,
                    "flag_score_deg": 5.0, "bad_deg": 10.0, "chosen_on": "out-of-fold train"},
         "oof": {"auroc_cross_fitted": 0.6}}
  path.write_text(json.dumps(fit))
  return fit


def test_build_installs_a_measured_ensemble_with_its_card(phantom_dir, tmp_path, monkeypatch):
  from aop_tf import evaluate  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  members = []
  for seed in (1, 2):
    members.append(str(tmp_path / f"member{seed}"))
    helpers.write_model_dir(members[-1], helpers.tiny_spec(loss="softmax_ce", seed=seed), seed=seed)
  fit = _hand_made_fit(tmp_path / "fit.json")
  card = ship.build("twin", members, phantom_dir, root=str(tmp_path / "models"),
                    command="python -m aop_tf.zoo --name=twin", quality_fit=str(tmp_path / "fit.json"))
  installed = tmp_path / "models" / "twin"
  assert sorted(os.listdir(installed)) == ["export_info.json", "model.tflite", zoo.CARD_FILE]
  assert zoo.card("twin", str(tmp_path / "models")) == card
  assert [m["seed"] for m in card["members"]] == [1, 2]
  assert card["export"]["quantization"] == "int8"
  # The card's figures are those of the installed file.
  report = evaluate.evaluate(str(installed / "model.tflite"), data_dir=phantom_dir, split="val",
                             output_dir=str(tmp_path / "check"), overlays=0, progress=False,
                             verbose=False)
  assert card["val"]["mre_512"]["mean"] == pytest.approx(report["mre_512"]["mean"], abs=1e-6)
  # Nothing is chosen on val: the quality section is the out-of-fold fit, copied.
  assert "flag" not in card and "uncertainty" not in card and "val" in card["protocol"]
  assert zoo.quality_fit(str(installed))["coef"] == fit["fitted"]["coef"]
  assert card["quality"]["out_of_fold"] == fit["oof"]
  # evaluate, like predict, gives every row the card's score and range: all-zero weights score
  # e - 1 deg everywhere, so the range is the AoP +/- 2 e (interval_q 2 times score + 1).
  rows = results.read_csv(str(tmp_path / "check" / "per_image.csv"))
  np.testing.assert_allclose(rows["quality_score_deg"], np.e - 1, atol=1e-3)
  np.testing.assert_allclose(rows["aop_high_deg"] - rows["aop_deg"], 2 * np.e, atol=1e-2)
  assert not np.any(np.asarray(rows["low_confidence"], bool))  # 1.7 deg < the threshold, 5.0


def test_build_ships_one_run_with_its_float_weights(phantom_dir, tmp_path, monkeypatch):
  from aop_tf import model_dir  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  run = str(tmp_path / "student")
  trained = helpers.write_model_dir(run, helpers.tiny_spec(loss="softmax_ce"))
  card = ship.build("solo", [run], phantom_dir, root=str(tmp_path / "models"),
                    quality_fit=str(tmp_path / "absent.json"))
  installed = tmp_path / "models" / "solo"
  assert sorted(os.listdir(installed)) == ["export_info.json", "model.tflite", zoo.CARD_FILE,
                                           model_dir.WEIGHTS_FILE]
  assert card["export"]["weights_file"]["bytes"] == os.path.getsize(
      installed / model_dir.WEIGHTS_FILE)
  assert "quality" not in card and "One U-Net" in card["summary"]
  shipped = model_dir.load_keras_file(str(installed / model_dir.WEIGHTS_FILE))
  for got, want in zip(shipped.get_weights(), trained.get_weights()):
    np.testing.assert_array_equal(got, want)


def test_python_m_zoo_runs_the_builder(entry_points):
  """`python -m aop_tf.zoo` (the README's command) is `aop_tf.ship`; the registry imports none
  of it."""
  code, _, stderr = entry_points.run("aop_tf.zoo", ["--members="])
  assert code == 2 and "--members needs one training directory" in stderr, stderr

def test_the_shipped_psfhs_model_measures_the_bundled_examples():
  import csv  # pylint: disable=import-outside-toplevel
  import cv2  # pylint: disable=import-outside-toplevel
  if "psfhs" not in zoo.names():
    pytest.skip("no shipped psfhs model in aop_tf/models (python -m aop_tf.zoo builds it)")
  examples = os.path.join(helpers.REPO, "examples", "psfhs")
  with open(os.path.join(examples, "labels.csv"), newline="") as f:
    labels = {row["Filename"]: float(row["AoP"]) for row in csv.DictReader(f)}
  model = predictor_lib.load("psfhs")
  names = sorted(labels)
  images = [cv2.imread(os.path.join(examples, n), cv2.IMREAD_GRAYSCALE)[..., None] for n in names]
  out = model.predict(images)
  errors = np.abs(out["aop_deg"] - np.array([labels[n] for n in names]))
  # A broken or swapped file is far off (the six are within 13 deg, docs/models.md).
  assert errors.mean() < 8.0, errors
  assert zoo.card("psfhs")["val"]["mre_512"]["mean"] < 14.0


def test_the_aop_uncertainty_adds_the_cards_floor_to_the_spread():
  assert results.aop_uncertainty_deg(3.0, 4.0) == pytest.approx(5.0)
  assert results.aop_uncertainty_deg(float("nan"), 4.0) == pytest.approx(4.0)  # one model
  assert results.aop_uncertainty_deg(1.5, None) == 1.5  # no card: the spread alone
