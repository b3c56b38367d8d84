"""The viewer's TF Serving REST face answers as the exported SavedModel's signature does."""

import base64
import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from aop_tf import export
from aop_tf import serving
from aop_tf.viewer import server
import helpers
from test_viewer import Client

SHAPES = [(64, 64, 1), (100, 130, 1), (90, 70, 3), (37, 53, 1)]


def encoded(shape, seed):
  height, width, channels = shape
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  base = 120 + 90 * np.sin(xx / width * 4.0 + seed) * np.cos(yy / height * 2.5)
  noise = np.random.default_rng(seed).normal(0, 15, (height, width, channels))
  image = np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)
  ok, png = cv2.imencode(".png", image if channels == 1 else image[..., ::-1])
  assert ok
  return png.tobytes()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A tiny model exported with aop_tf.export, and a viewer serving that SavedModel."""
  root = tmp_path_factory.mktemp("serving")
  helpers.write_model_dir(str(root / "run"), helpers.tiny_spec())
  export_dir = str(root / "saved_models" / "tiny")
  export.export_model_dir(str(root / "run"), export_dir)
  viewer = server.Viewer(export_dir, labels=str(root / "labels.csv")).start()
  yield {"dir": export_dir, "viewer": viewer, "client": Client(viewer),
         "signature": tf.saved_model.load(export_dir).signatures[serving.SERVING_DEFAULT]}
  viewer.stop()


def test_model_status_is_tf_servings(exported):
  viewer = exported["viewer"]
  viewer.model.wait()
  status, body = exported["client"].json("GET", "/v1/models/tiny")
  assert status == 200
  assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
      "error_code": "OK", "error_message": ""}}]}
  assert exported["client"].json("GET", "/v1/models/tiny/versions/1")[0] == 200
  assert exported["client"].json("GET", "/v1/models/other")[0] == 404


@pytest.mark.parametrize("form", ["instances", "named", "columnar"])
def test_predict_equals_the_signature_on_the_same_bytes(exported, form):
  blobs = [encoded(shape, i) for i, shape in enumerate(SHAPES)]
  b64 = [{"b64": base64.b64encode(b).decode()} for b in blobs]
  body = {"instances": b64} if form == "instances" else (
      {"instances": [{"images": v} for v in b64]} if form == "named" else
      {"inputs": {"images": b64}})
  status, _, data = exported["client"].call("POST", "/v1/models/tiny:predict", body)
  assert status == 200, data[:300]
  answer = json.loads(data)
  for i, blob in enumerate(blobs):
    want = {k: v.numpy()[0] for k, v in exported["signature"](
        images=tf.constant([blob])).items()}
    if form == "columnar":
      got = {k: np.array(v[i]) for k, v in answer["outputs"].items()}
    else:
      got = {k: np.array(v) for k, v in answer["predictions"][i].items()}
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], atol=1e-4, rtol=1e-4, err_msg=key)


def test_an_empty_batch_answers_empty(exported):
  status, body = exported["client"].json("POST", "/v1/models/tiny:predict", {"instances": []})
  assert status == 200 and body == {"predictions": []}


def test_model_name_defaults_to_the_folder_or_the_shipped_name():
  assert server.default_model_name("psfhs") == "psfhs"
  assert server.default_model_name("saved_models/cpu/") == "cpu"
  assert server.default_model_name(os.path.join("x", "smoke", "model.tflite")) == "smoke"
  assert server.default_model_name("m/best.tflite") == "best"
