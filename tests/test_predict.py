"""predict: files, folders and globs in; CSV/JSON of landmarks, AoP, confidence out."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from aop_tf import LANDMARK_NAMES
from aop_tf import codec
from aop_tf import export
from aop_tf import predict
from aop_tf.io import frames
from aop_tf.io import inputs
from aop_tf import predictor
from aop_tf import predictor_tf
from aop_tf.model import build_unet
import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = helpers.tiny_spec()


def make_image(shape, seed=0):
  height, width, channels = shape
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  rng = np.random.default_rng(seed)
  base = 120 + 90 * np.sin(xx / width * 4.0 + seed) * np.cos(yy / height * 2.5)
  return np.clip(base[..., None] + rng.normal(0, 15, (height, width, channels)), 0,
                 255).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict")
  keras.utils.set_random_seed(3)
  model = build_unet(**SPEC.model_kwargs())
  export_dir = str(root / "saved_models" / "tiny")
  export.export(model, SPEC, export_dir, test_images=[make_image((80, 80, 1))])
  images_dir = root / "images"
  (images_dir / "sub").mkdir(parents=True)
  good = {}
  for i, (name, shape) in enumerate([("a.png", (100, 120, 1)), ("b.png", (100, 120, 1)),
                                     ("c.png", (64, 64, 3)), ("sub/d.png", (150, 90, 1)),
                                     ("e.png", (100, 120, 1))]):
    image = make_image(shape, seed=i)
    (images_dir / name).write_bytes(tf.io.encode_png(image).numpy())
    good[str(images_dir / name)] = image
  jpeg = tf.io.encode_jpeg(make_image((70, 90, 3), seed=9), quality=95).numpy()
  (images_dir / "f.jpg").write_bytes(jpeg)
  # predict decodes JPEGs with OpenCV's accurate IDCT (TF's decode_image uses the fast one).
  good[str(images_dir / "f.jpg")] = frames.decode_still(jpeg, "f.jpg")[0]
  (images_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  (images_dir / "empty.png").write_bytes(b"")
  (images_dir / "notes.txt").write_text("not an image")
  return {"root": root, "export_dir": export_dir, "images_dir": str(images_dir), "good": good,
          "bad": [str(images_dir / "broken.png"), str(images_dir / "empty.png")],
          "reference": predictor_tf.KerasPredictor(model, SPEC.heatmap_codec())}


def test_find_inputs(setup):
  d = setup["images_dir"]
  paths, unmatched = inputs.find_inputs(f"{d},{d}/a.png, {d}/*.jpg,{d}/nothing*.png")
  assert unmatched == [f"{d}/nothing*.png"]
  assert paths == sorted(set(paths))
  assert os.path.join(d, "sub", "d.png") in paths  # folders are searched recursively
  assert not any(p.endswith(".txt") for p in paths)
  assert set(paths) == set(setup["good"]) | set(setup["bad"])


def test_read_image_errors_name_the_file(setup):
  for path in setup["bad"]:
    with pytest.raises(ValueError, match=os.path.basename(path)):
      frames.read_still(path)
  with pytest.raises(ValueError, match="cannot read"):
    frames.read_still(os.path.join(setup["images_dir"], "missing.png"))


@pytest.mark.parametrize("backend", ["savedmodel", "tflite"])
def test_predict_files_skips_bad_and_matches_keras(setup, backend):
  path = setup["export_dir"]
  if backend == "tflite":
    path = os.path.join(path, "model.tflite")
  model = predictor.load(path)
  paths, _ = inputs.find_inputs(setup["images_dir"])
  rows, failures = predict.predict_files(model, paths, batch_size=3, num_workers=2,
                                         progress=False)
  assert sorted(p for p, _ in failures) == sorted(setup["bad"])
  assert [r["filename"] for r in rows] == [p for p in paths if p in setup["good"]]
  for row in rows:
    want = setup["reference"].predict([setup["good"][row["filename"]]])
    got = np.array([[row[f"{n}_x"], row[f"{n}_y"]] for n in LANDMARK_NAMES])
    np.testing.assert_allclose(got, want["landmarks"][0], atol=0.5)
    assert abs(row["aop_deg"] - want["aop_deg"][0]) < 0.1
    conf = [row[f"{n}_confidence"] for n in LANDMARK_NAMES]
    np.testing.assert_allclose(conf, want["confidence"][0], atol=1e-3)
    assert row["low_confidence"] == (min(conf) < 0.3)


def test_tflite_interpreters_side_by_side_agree(setup):
  path = os.path.join(setup["export_dir"], "model.tflite")
  images = [setup["good"][p] for p in sorted(setup["good"])]  # mixed sizes and channels
  one = predictor.TFLitePredictor(path).predict(images)
  three = predictor.TFLitePredictor(path, num_threads=1, num_interpreters=3).predict(images)
  for key in codec.OUTPUT_KEYS:
    np.testing.assert_allclose(three[key], one[key], rtol=1e-5, atol=1e-5)
  model = predictor.load(path, num_interpreters=2)
  assert model.predict(images[:1])["landmarks"].shape == (1, 3, 2)
  assert model.predict([])["landmarks"].shape == (0, 3, 2)


def test_savedmodel_bfloat16_is_close_and_stays_with_its_model(setup):
  images = [setup["good"][p] for p in sorted(setup["good"])]
  want = predictor_tf.SavedModelPredictor(setup["export_dir"]).predict(images)
  fast = predictor.load(setup["export_dir"], bfloat16=True).predict(images)
  np.testing.assert_allclose(fast["heatmaps"], want["heatmaps"], atol=0.1)
  assert np.all(np.isfinite(fast["landmarks"]))
  again = predictor_tf.SavedModelPredictor(setup["export_dir"]).predict(images)  # float32 again
  np.testing.assert_array_equal(again["heatmaps"], want["heatmaps"])


def test_bfloat16_default_follows_the_cpu_flags(tmp_path):
  def cpuinfo(flags):
    path = tmp_path / f"cpuinfo_{len(flags)}"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\nbogomips\t: 1\n")
    return str(path)
  assert predictor.native_bfloat16(cpuinfo("avx2 avx512f avx512_bf16"))
  assert predictor.native_bfloat16(cpuinfo("avx2 amx_bf16 amx_tile"))
  assert not predictor.native_bfloat16(cpuinfo("avx2 avx512f avx512_vnni"))
  assert not predictor.native_bfloat16(str(tmp_path / "no_such_file"))


def test_model_failure_skips_only_the_culprit(setup):
  class Flaky:
    def predict(self, images):
      if any(im.shape[0] == 150 for im in images):
        raise RuntimeError("boom")
      return {"landmarks": np.zeros((len(images), 3, 2), np.float32),
              "aop_deg": np.zeros(len(images), np.float32),
              "confidence": np.ones((len(images), 3), np.float32),
              "heatmaps": np.zeros((len(images), 16, 16, 3), np.float32)}

  paths = sorted(setup["good"])
  rows, failures = predict.predict_files(Flaky(), paths, batch_size=4, progress=False)
  assert [os.path.basename(p) for p, _ in failures] == ["d.png"]
  assert "boom" in failures[0][1]
  assert len(rows) == len(paths) - 1


def test_load_rejects_other_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match="aop_tf.export"):
    predictor.load(str(tmp_path))


def test_cli_csv_json_and_overlays(setup, tmp_path, entry_points):
  d = setup["images_dir"]
  flagfile = tmp_path / "predict.cfg"
  flagfile.write_text(f"--model={setup['export_dir']}\n--inputs={d}/*.png,{d}/sub,{d}/f.jpg\n"
                      f"--output={tmp_path / 'out.csv'}\n--overlay_dir={tmp_path / 'overlays'}\n"
                      "--batch_size=2\n--nobfloat16\n")  # float32, to compare with TFLite
  code, stdout, stderr = entry_points.run("aop_tf.predict", [f"--flagfile={flagfile}"])
  assert code == 0, stdout + stderr
  with open(tmp_path / "out.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(setup["good"])
  assert list(rows[0]) == (["filename", "source", "frame", "time_s", "width", "height",
                            "PS1_x", "PS1_y", "PS2_x", "PS2_y", "FH1_x", "FH1_y",
                            "aop_deg", "aop_spread_deg", "aop_uncertainty_deg",
                            "quality_score_deg", "aop_low_deg", "aop_high_deg", "PS1_confidence",
                            "PS2_confidence", "FH1_confidence", "ps_length_mm", "low_confidence",
                            "flag_reason", "degenerate"])
  assert "2 skipped" in stdout
  assert "broken.png" in stderr and "empty.png" in stderr
  overlays = sorted(os.listdir(tmp_path / "overlays"))
  assert len(overlays) == len(setup["good"]) and "sub__d.png" in overlays

  code, stdout, stderr = entry_points.run("aop_tf.predict", [
      f"--model={setup['export_dir']}/model.tflite", f"--inputs={d}",
      f"--output={tmp_path / 'out.json'}"])
  assert code == 0, stdout + stderr
  with open(tmp_path / "out.json") as f:
    payload = json.load(f)
  assert payload["n_images"] == len(setup["good"]) and payload["n_failed"] == 2
  assert {os.path.basename(x["filename"]) for x in payload["failed"]} == {"broken.png",
                                                                          "empty.png"}
  by_name = {r["filename"]: r for r in payload["predictions"]}
  for row in rows:  # SavedModel (CSV, 3 decimals) and TFLite (JSON) agree
    other = by_name[row["filename"]]
    assert abs(float(row["PS1_x"]) - other["PS1_x"]) < 0.01
    assert abs(float(row["aop_deg"]) - other["aop_deg"]) < 0.01

