"""Export: SavedModel signatures and TFLite agree with the Keras model + shared decoder."""

import base64
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from aop_tf import codec
from aop_tf import config
from aop_tf import data
from aop_tf import export
from aop_tf import predictor
from aop_tf import predictor_tf
from aop_tf import serving
import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = helpers.tiny_spec()
# (height, width, channels): down- and up-scaling, non-square, gray, RGB, RGBA.
SHAPES = [(64, 64, 1), (100, 130, 1), (256, 256, 3), (37, 53, 3), (90, 70, 4), (300, 200, 1)]


def make_image(shape, seed=0):
  """Smooth structure plus noise, so heatmap peaks are distinct (no argmax near-ties)."""
  height, width, channels = shape
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  rng = np.random.default_rng(seed)
  base = 120 + 90 * np.sin(xx / width * 4.0 + seed) * np.cos(yy / height * 2.5)
  image = base[..., None] + rng.normal(0, 15, (height, width, channels))
  return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  model = helpers.write_model_dir(str(root / "run"), SPEC)
  export_dir = str(root / "saved_models" / "tiny")
  info = export.export_model_dir(str(root / "run"), export_dir)
  return {"model": model, "dir": export_dir, "info": info, "root": root,
          "reference": predictor_tf.KerasPredictor(model, SPEC.heatmap_codec())}


def reference(ex, image):
  """The Keras model + `data.preprocess_image` + the codec on one image."""
  return ex["reference"].predict([image])


def assert_close(got, want, tol_px=0.5, tol_deg=0.1):
  np.testing.assert_allclose(got["landmarks"], want["landmarks"], atol=tol_px, rtol=0)
  np.testing.assert_allclose(got["aop_deg"], want["aop_deg"], atol=tol_deg, rtol=0)
  np.testing.assert_allclose(got["confidence"], want["confidence"], atol=1e-3, rtol=0)


def test_export_layout_and_info(exported):
  names = set(os.listdir(exported["dir"]))
  assert {"saved_model.pb", "variables", "model.tflite", "export_info.json"} <= names
  info = export.model_dir_lib.read_json(os.path.join(exported["dir"], "export_info.json"))
  assert info["source"]["checkpoint"] == "latest"
  assert info["quantization"] == "none"
  assert config.from_json(info["config"]) == SPEC
  assert info["versions"]["tensorflow"] == tf.__version__
  assert info["verification"]["tflite"]["landmarks_px"] <= export.LANDMARK_TOL_PX
  leftovers = [n for n in os.listdir(os.path.dirname(exported["dir"])) if n.startswith(".")]
  assert not leftovers, leftovers


def test_resize_matrix_equals_data_resize():
  for shape in SHAPES:
    image = make_image(shape)
    want = data.preprocess_image(image, 64, 1).numpy()
    got = serving.preprocess_image_tflite(tf.constant(image[None]), 64, 1)[0].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-3, err_msg=str(shape))
    rgb = serving.preprocess_image_tflite(tf.constant(image[None]), 48, 3)[0].numpy()
    np.testing.assert_allclose(rgb, data.preprocess_image(image, 48, 3).numpy(), atol=2e-3)


def test_saved_model_signatures_match_keras(exported):
  loaded = tf.saved_model.load(exported["dir"])
  for i, shape in enumerate(SHAPES):
    image = make_image(shape, seed=i)
    want = reference(exported, image)
    out = loaded.signatures["serve_images"](images=tf.constant(image[None]))
    assert_close({k: v.numpy() for k, v in out.items()}, want)
    assert out["heatmaps"].shape == (1, 16, 16, 3)
    png = tf.io.encode_png(image).numpy()
    out = loaded.signatures["serving_default"](images=tf.constant([png]))
    assert_close({k: v.numpy() for k, v in out.items()}, want)


def test_serving_default_mixed_sizes_and_jpeg(exported):
  loaded = tf.saved_model.load(exported["dir"])
  images = [make_image(s, seed=i) for i, s in enumerate(SHAPES[:4])]
  encoded = [tf.io.encode_png(im).numpy() for im in images[:3]]
  jpeg = tf.io.encode_jpeg(images[3], quality=90).numpy()
  encoded.append(jpeg)
  images[3] = tf.io.decode_image(jpeg, expand_animations=False).numpy()  # what JPEG gives back
  out = loaded.signatures["serving_default"](images=tf.constant(encoded))
  assert out["landmarks"].shape == (4, 3, 2)
  for i, image in enumerate(images):
    want = reference(exported, image)
    assert_close({k: v.numpy()[i:i + 1] for k, v in out.items()}, want)


def test_batch_of_equal_size_images(exported):
  loaded = tf.saved_model.load(exported["dir"])
  batch = np.stack([make_image((120, 90, 3), seed=s) for s in range(3)])
  out = loaded.signatures["serve_images"](images=tf.constant(batch))
  for i in range(3):
    assert_close({k: v.numpy()[i:i + 1] for k, v in out.items()}, reference(exported, batch[i]))


def test_tflite_matches_keras(exported):
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_path=os.path.join(exported["dir"], "model.tflite"))
  runner = interpreter.get_signature_runner("serving_default")
  index = runner.get_input_details()["images"]["index"]
  outputs = {k: v["index"] for k, v in runner.get_output_details().items()}
  del runner  # it holds views of the interpreter's buffers, which forbid resizing
  assert set(outputs) == set(codec.OUTPUT_KEYS)
  for i, shape in enumerate(SHAPES):
    image = make_image(shape, seed=i)
    interpreter.resize_tensor_input(index, [1, *shape], strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, image[None])
    interpreter.invoke()
    got = {k: interpreter.get_tensor(j) for k, j in outputs.items()}
    assert got["heatmaps"].shape == (1, 16, 16, 3)
    assert_close(got, reference(exported, image))


def test_tflite_has_only_builtin_ops(exported):
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_path=os.path.join(exported["dir"], "model.tflite"))
  ops = {op["op_name"] for op in interpreter._get_ops_details()}  # pylint: disable=protected-access
  assert not any("Flex" in op or "Custom" in op.title() for op in ops), ops


def test_saved_model_cli_lists_signatures(exported):
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  result = subprocess.run([cli, "show", "--dir", exported["dir"], "--all"], capture_output=True,
                          text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  text = result.stdout
  for name in ("serving_default", "serve_images"):
    assert f"signature_def['{name}']" in text
  assert "inputs['images']" in text and "DT_STRING" in text and "DT_UINT8" in text
  for key in codec.OUTPUT_KEYS:
    assert f"outputs['{key}']" in text


def tf_serving_decode(body):
  """Decodes a REST predict body the way TF Serving does: {"b64": ...} -> bytes -> tf.string."""
  request = json.loads(body)
  values = []
  for instance in request["instances"]:
    if isinstance(instance, dict) and set(instance) == {"images"}:
      instance = instance["images"]  # named-input form
    assert set(instance) == {"b64"}
    values.append(base64.b64decode(instance["b64"]))
  return request.get("signature_name", "serving_default"), tf.constant(values, tf.string)


def test_tf_serving_rest_request(exported):
  loaded = tf.saved_model.load(exported["dir"])
  images = [make_image((128, 160, 1), seed=5), make_image((64, 48, 3), seed=6)]
  body = json.dumps({"instances": [
      {"b64": base64.b64encode(tf.io.encode_png(im).numpy()).decode("ascii")} for im in images]})
  name, tensor = tf_serving_decode(body)
  out = loaded.signatures[name](images=tensor)
  for i, image in enumerate(images):
    assert_close({k: v.numpy()[i:i + 1] for k, v in out.items()}, reference(exported, image))
  # TF Serving's JSON response carries these values as lists; they must be finite floats.
  response = {"predictions": [{k: out[k][i].numpy().tolist() for k in codec.OUTPUT_KEYS}
                              for i in range(len(images))]}
  json.dumps(response, allow_nan=False)


# Largest heatmap difference from the float Keras model, as a fraction of the float heatmaps'
# range, per quantization. Measured on this model: float16 0.0005, dynamic 0.012, int8 0.016; the
# bounds leave 5-10x room. (Landmark drift is no measure on an untrained model: its flat maps let
# a tiny change move a peak by cells.)
QUANT_HEATMAP_TOL = {"float16": 0.005, "dynamic": 0.06, "int8": 0.08}


def test_quantized_variants_stay_within_their_drift_bounds(exported, tmp_path):
  calibration = [make_image((96, 96, 1), seed=s) for s in range(8)]
  images = [make_image(s, seed=10 + i) for i, s in enumerate(SHAPES[:3])]
  want = exported["reference"].predict(images)
  scale = float(np.ptp(want["heatmaps"]))
  # The whole export once (the CLI's default quantization); the other variants straight from the
  # converter, on the same TFLite graph.
  info = export.export(exported["model"], SPEC, str(tmp_path / "dynamic"), "dynamic",
                       test_images=images)
  assert info["quantization"] == "dynamic"
  assert info["verification"]["savedmodel"]["landmarks_px"] <= export.LANDMARK_TOL_PX
  recorded = info["verification"]["tflite"]  # export_info.json records the comparison
  assert info["verification"]["tflite_real"] is None  # test images given: none counts as real
  assert recorded["heatmaps"] <= QUANT_HEATMAP_TOL["dynamic"] * scale + 1e-6, recorded
  graph = str(tmp_path / "graph")
  serving.tflite_archive(exported["model"], SPEC.heatmap_codec()).write_out(graph, verbose=False)
  paths = {"dynamic": str(tmp_path / "dynamic" / "model.tflite")}
  for quantize in ("float16", "int8"):
    paths[quantize] = str(tmp_path / f"{quantize}.tflite")
    with open(paths[quantize], "wb") as f:
      f.write(export.convert_tflite(graph, quantize, calibration))
  for quantize, path in paths.items():
    out = predictor.TFLitePredictor(path).predict(images)
    assert out["landmarks"].shape == (3, 3, 2)
    assert np.all(np.isfinite(out["landmarks"])) and np.all(np.isfinite(out["heatmaps"]))
    drift = float(np.max(np.abs(out["heatmaps"] - want["heatmaps"]))) / scale
    assert drift <= QUANT_HEATMAP_TOL[quantize], (quantize, drift)
  float_size = os.path.getsize(os.path.join(exported["dir"], "model.tflite"))
  assert all(os.path.getsize(paths[q]) < float_size for q in ("float16", "dynamic"))


def test_int8_needs_calibration(exported, tmp_path):
  with pytest.raises(ValueError, match="calibration"):
    export.export_model_dir(os.path.join(str(exported["root"]), "run"), str(tmp_path / "x"),
                            quantize="int8")
  assert not os.path.exists(tmp_path / "x")


def test_failed_export_leaves_previous_intact(exported, tmp_path, monkeypatch):
  target = str(tmp_path / "saved_models" / "tiny")
  shutil.copytree(exported["dir"], target)
  before = {n: os.path.getmtime(os.path.join(target, n)) for n in os.listdir(target)}
  info_before = export.model_dir_lib.read_json(os.path.join(target, "export_info.json"))

  def broken_convert(*args, **kwargs):
    raise RuntimeError("converter crashed")

  monkeypatch.setattr(export, "convert_tflite", broken_convert)
  with pytest.raises(RuntimeError, match="converter crashed"):
    export.export(exported["model"], SPEC, target)
  # A first export that fails leaves nothing behind at all.
  with pytest.raises(RuntimeError, match="converter crashed"):
    export.export(exported["model"], SPEC, str(tmp_path / "saved_models" / "fresh"))
  monkeypatch.undo()

  real_predict = predictor_tf.KerasPredictor.predict

  def shifted_predict(self, images):  # verification fails: the export is not the model it claims
    out = real_predict(self, images)
    out["landmarks"] = out["landmarks"] + 3.0
    return out

  monkeypatch.setattr(predictor_tf.KerasPredictor, "predict", shifted_predict)
  with pytest.raises(export.ExportError, match="disagrees"):
    export.export(exported["model"], SPEC, target)
  after = {n: os.path.getmtime(os.path.join(target, n)) for n in os.listdir(target)}
  assert after == before
  assert export.model_dir_lib.read_json(os.path.join(target, "export_info.json")) == info_before
  assert "serve_images" in tf.saved_model.load(target).signatures
  assert sorted(os.listdir(os.path.dirname(target))) == ["tiny"]  # no leftovers, no "fresh"


def test_cli_with_flagfile(exported, tmp_path, entry_points):
  flagfile = tmp_path / "export.cfg"
  flagfile.write_text(f"--model_dir={exported['root'] / 'run'}\n--name=cli\n"
                      f"--output_root={tmp_path / 'saved_models'}\n--checkpoint=latest\n")
  code, stdout, stderr = entry_points.run("aop_tf.export", [f"--flagfile={flagfile}"])
  assert code == 0, stdout + stderr
  assert os.path.exists(tmp_path / "saved_models" / "cli" / "model.tflite")
  assert "drift vs Keras" in stdout
  # A bad --model_dir is one line and exit 1: tests/test_robustness_cli.py.
