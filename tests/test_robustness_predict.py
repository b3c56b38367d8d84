"""Robustness of prediction and serving (issue 7): bad images are reported, never answered.

predict skips and names each bad file and goes on (`rows + failures = inputs`); the serving
signatures either answer or raise a clear error; a degenerate AoP is NaN plus a flag, not a crash.
A tiny untrained model is exported once (SavedModel + TFLite, a few seconds).
"""

import csv
import io
import json
import math
import os
import struct
import time
import zlib

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from aop_tf import export
from aop_tf import predict
from aop_tf.io import frames
from aop_tf.io import inputs
from aop_tf import predictor
from aop_tf import serving
from aop_tf.model import build_unet
import helpers

SPEC = helpers.tiny_spec()


def _image(shape, seed=0):
  height, width, channels = shape
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  base = 120 + 90 * np.sin(xx / max(width, 1) * 4.0 + seed) * np.cos(yy / max(height, 1) * 2.5)
  noise = np.random.default_rng(seed).normal(0, 15, (height, width, channels))
  return np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)


def _png(image):
  return cv2.imencode(".png", image)[1].tobytes()


def _bomb(width, height):
  """A PNG header declaring `width` x `height` pixels, and no pixel data worth the name."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr +
          struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + b"\x00" * 32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("robust_predict")
  keras.utils.set_random_seed(5)
  model = build_unet(**SPEC.model_kwargs())
  export_dir = str(root / "export")
  export.export(model, SPEC, export_dir, test_images=[_image((80, 80, 1))])
  folder = root / "images"
  folder.mkdir()
  gray = _image((90, 110, 1))[..., 0]
  good = {
      "gray.png": _png(gray),
      "one_pixel.png": _png(np.full((1, 1), 130, np.uint8)),
      "gray_alpha.png": None,
      "rgb.jpg": cv2.imencode(".jpg", _image((90, 110, 3), 1))[1].tobytes(),
      "rgba.png": _png(np.dstack([gray] * 3 + [np.full_like(gray, 200)])),
      "deep16.png": _png(gray.astype(np.uint16) * 257),
      "deep16_rgba.png": _png(np.dstack([gray] * 4).astype(np.uint16) * 257),
      "cmyk.jpg": None,
      "png_named.jpg": _png(gray),
  }
  pil = pytest.importorskip("PIL.Image")
  buf = io.BytesIO()
  pil.fromarray(np.dstack([gray, np.full_like(gray, 255)]), "LA").save(buf, "PNG")
  good["gray_alpha.png"] = buf.getvalue()
  buf = io.BytesIO()
  pil.fromarray(gray).convert("CMYK").save(buf, "JPEG", quality=95)
  good["cmyk.jpg"] = buf.getvalue()
  jpeg = good["rgb.jpg"]
  bad = {
      "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
      "truncated.jpg": jpeg[:len(jpeg) // 3],
      "truncated.png": good["gray.png"][:60],
      "empty.png": b"",
      "text.png": b"hello, I am not an image\n",
      "bomb.png": _bomb(60000, 60000),
  }
  for name, data in {**good, **bad}.items():
    (folder / name).write_bytes(data)
  return {"root": root, "export_dir": export_dir, "folder": str(folder), "model": model,
          "good": sorted(str(folder / n) for n in good), "bad": sorted(str(folder / n) for n in bad),
          "gray": gray}


@pytest.fixture(scope="module")
def saved(setup):
  return predictor.load(setup["export_dir"])


@pytest.fixture(scope="module")
def loaded(setup):
  return tf.saved_model.load(setup["export_dir"])


# ------------------------------------------------------------------------------------------------
# predict: bad files are reported by name; every input accounted for.


@pytest.mark.parametrize("backend", ["savedmodel", "tflite"])
def test_one_bad_file_in_a_batch_is_skipped_and_named(setup, backend):
  path = setup["export_dir"]
  model = predictor.load(path if backend == "savedmodel" else os.path.join(path, "model.tflite"))
  paths = sorted(setup["good"] + setup["bad"])
  rows, failures = predict.predict_files(model, paths, batch_size=4, num_workers=2,
                                         progress=False)
  assert len(rows) + len(failures) == len(paths)
  assert sorted(p for p, _ in failures) == setup["bad"]
  assert [r["filename"] for r in rows] == setup["good"]
  for path, reason in failures:
    assert os.path.basename(path) in reason, reason
  reasons = {os.path.basename(p): r for p, r in failures}
  assert "empty file" in reasons["empty.png"]
  assert "declares 60000x60000 pixels" in reasons["bomb.png"]
  assert "cannot decode" in reasons["corrupt.png"]
  for row in rows:
    assert all(math.isfinite(row[k]) for k in row if k.endswith(("_x", "_y", "_confidence")))


def test_pixel_formats_agree_with_8_bit_gray(setup, saved):
  rows, failures = predict.predict_files(saved, setup["good"], progress=False)
  assert not failures
  by_name = {os.path.basename(r["filename"]): r for r in rows}
  want = by_name["gray.png"]
  for name in ("gray_alpha.png", "rgba.png", "deep16.png", "deep16_rgba.png", "png_named.jpg"):
    got = by_name[name]
    for key in ("PS1_x", "PS1_y", "FH1_x", "FH1_y"):
      assert abs(got[key] - want[key]) < 1.0, (name, key)
  assert by_name["one_pixel.png"]["PS1_x"] == pytest.approx(0.0, abs=0.5)


def test_max_pixels_and_read_errors(setup, tmp_path):
  gray = setup["folder"] + "/gray.png"
  image, size = frames.read_still(gray)
  assert image.shape == (90, 110, 1) and size == (110, 90)
  with pytest.raises(ValueError, match=r"gray.png: the file declares 110x90 pixels, more than"):
    frames.read_still(gray, max_pixels=5000)
  with pytest.raises(ValueError, match="nothing.png: cannot read file"):
    frames.read_still(str(tmp_path / "nothing.png"))
  os.mkdir(tmp_path / "dir.png")
  with pytest.raises(ValueError, match="dir.png: file is a folder, not a regular file"):
    frames.read_still(str(tmp_path / "dir.png"))


def test_empty_batch_and_wrong_arrays(setup, saved):
  assert predict.predict_files(saved, [], progress=False) == ([], [])
  tflite = predictor.load(os.path.join(setup["export_dir"], "model.tflite"))
  for model in (saved, tflite):
    out = model.predict([])
    assert out["landmarks"].shape == (0, 3, 2) and out["aop_deg"].shape == (0,)
    assert out["heatmaps"].shape == (0, 16, 16, 3)
    gray = setup["gray"]
    assert model.predict([gray])["landmarks"].shape == (1, 3, 2)  # [H, W] gains a channel
    for bad, match in ((gray.astype(np.uint16) * 257, "pixel type uint16"),
                       (gray.astype(np.float32), "pixel type float32"),
                       (np.zeros((8, 8, 5), np.uint8), r"shape \(8, 8, 5\)"),
                       (np.zeros((0, 8, 1), np.uint8), r"shape \(0, 8, 1\)"),
                       (np.zeros((2, 8, 8, 1), np.uint8), r"shape \(2, 8, 8, 1\)")):
      with pytest.raises(ValueError, match=match):
        model.predict([bad])


def test_10000_pixel_square_image(setup, saved, tmp_path):
  side = 10000
  big = np.zeros((side, side), np.uint8)
  small = setup["gray"]
  big[:] = cv2.resize(small, (side, side), interpolation=cv2.INTER_NEAREST)
  path = str(tmp_path / "big.png")
  cv2.imwrite(path, big)
  tflite = predictor.load(os.path.join(setup["export_dir"], "model.tflite"))
  for model in (saved, tflite):
    start = time.perf_counter()
    rows, failures = predict.predict_files(model, [path], progress=False)
    print(f"{type(model).__name__}: 10000x10000 in {time.perf_counter() - start:.1f} s")
    assert not failures and len(rows) == 1
    assert 0 <= rows[0]["PS1_x"] <= side and math.isfinite(rows[0]["PS1_confidence"])
  rows, failures = predict.predict_files(saved, [path], progress=False, max_pixels=side * side - 1)
  assert not rows and "more than" in failures[0][1]


# ------------------------------------------------------------------------------------------------
# Serving signatures: answer or raise, never garbage.


def test_serve_images_answers_or_raises(loaded):
  fn = loaded.signatures[serving.SERVE_IMAGES]
  out = fn(images=tf.zeros([0, 64, 64, 1], tf.uint8))
  assert out["landmarks"].shape == (0, 3, 2) and out["heatmaps"].shape == (0, 16, 16, 3)
  out = fn(images=tf.fill([2, 1, 1, 1], tf.constant(90, tf.uint8)))
  assert out["landmarks"].shape == (2, 3, 2)
  assert np.all(np.isfinite(out["landmarks"].numpy()))
  for shape in ([1, 0, 8, 1], [1, 8, 0, 1], [1, 8, 8, 0], [1, 8, 8, 5]):
    with pytest.raises(tf.errors.InvalidArgumentError, match="H, W >= 1 and C = 1"):
      fn(images=tf.zeros(shape, tf.uint8))
  for dtype in (tf.float32, tf.uint16, tf.int32):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError),
                       match="uint8"):
      fn(images=tf.zeros([1, 8, 8, 1], dtype))


def test_serving_default_answers_or_raises(loaded, setup):
  fn = loaded.signatures[serving.SERVING_DEFAULT]
  out = fn(images=tf.constant([], tf.string))
  assert out["landmarks"].shape == (0, 3, 2) and out["aop_deg"].shape == (0,)
  with open(os.path.join(setup["folder"], "gray.png"), "rb") as f:
    png = f.read()
  with open(os.path.join(setup["folder"], "deep16.png"), "rb") as f:
    deep = f.read()
  with open(os.path.join(setup["folder"], "one_pixel.png"), "rb") as f:
    one = f.read()
  out = fn(images=tf.constant([png, deep, one]))
  np.testing.assert_allclose(out["landmarks"][1], out["landmarks"][0], atol=1.0)
  for bad, match in ((b"garbage", "Unknown image file format"),
                     (png[:60], "Invalid PNG|corrupt|truncated"),
                     (b"", "Unknown image file format|empty")):
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
      fn(images=tf.constant([png, bad, png]))
  with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match="string"):
    fn(images=tf.constant([1.0]))


def test_tflite_refuses_wrong_dtype(setup):
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_path=os.path.join(setup["export_dir"], "model.tflite"))
  runner = interpreter.get_signature_runner(serving.SERVING_DEFAULT)
  out = runner(images=np.full((1, 1, 1, 1), 90, np.uint8))
  assert out["landmarks"].shape == (1, 3, 2)
  with pytest.raises(ValueError):
    runner(images=np.zeros((1, 8, 8, 1), np.float32))


# ------------------------------------------------------------------------------------------------
# Degenerate geometry: NaN plus a flag, everywhere.


def test_coincident_predicted_points_give_nan_and_a_flag(setup, tmp_path):
  # The shared decoder on heatmaps whose three peaks coincide.
  maps = np.zeros((1, 16, 16, 3), np.float32)
  maps[0, 5, 7, :] = 1.0
  decoded = SPEC.heatmap_codec().decode(maps, [[64.0, 64.0]])
  assert np.isnan(decoded["aop_deg"].numpy()[0])
  assert np.all(np.isfinite(decoded["landmarks"].numpy()))

  class Degenerate:
    """PS1 on PS2 for the first image; NaN peaks (a broken model) for the second."""

    def predict(self, images):
      n = len(images)
      out = {"landmarks": np.tile(np.array([[5, 5], [5, 5], [9, 2]], np.float32), (n, 1, 1)),
             "aop_deg": np.full(n, np.nan, np.float32),
             "confidence": np.ones((n, 3), np.float32),
             "heatmaps": np.zeros((n, 16, 16, 3), np.float32)}
      if n > 1:
        out["aop_deg"][1] = 100.0
        out["confidence"][1] = np.nan
      return out

  paths = setup["good"][:2]
  rows, failures = predict.predict_files(Degenerate(), paths, progress=False)
  assert not failures
  assert math.isnan(rows[0]["aop_deg"]) and rows[0]["degenerate"] and rows[0]["low_confidence"]
  assert not rows[1]["degenerate"] and rows[1]["low_confidence"]  # NaN peak is not confident
  predict.write_outputs(str(tmp_path / "p.csv"), "csv", rows, failures, "fake")
  with open(tmp_path / "p.csv") as f:
    written = list(csv.DictReader(f))
  assert written[0]["aop_deg"] == "nan" and written[0]["degenerate"] == "1"
  assert written[1]["degenerate"] == "0" and written[1]["low_confidence"] == "1"
  predict.write_outputs(str(tmp_path / "p.json"), "json", rows, failures, "fake")
  with open(tmp_path / "p.json") as f:
    payload = json.load(f)  # strict JSON: NaN written as null
  assert payload["predictions"][0]["aop_deg"] is None
  assert payload["predictions"][0]["degenerate"] is True


def test_overlay_of_a_thin_strip_stays_small(tmp_path):
  writer = predict.overlay_writer(str(tmp_path / "ov"))
  strip = np.full((1, 3000, 1), 100, np.uint8)
  out = {"landmarks": np.array([[[10, 0], [2000, 0], [10, 0]]], np.float32),
         "aop_deg": np.array([np.nan], np.float32)}
  writer([frames.Frame(strip, "strip.png", 0, math.nan, (3000, 1))], out)
  picture = cv2.imread(str(tmp_path / "ov" / "strip.png"))
  assert picture.shape[0] * picture.shape[1] <= 4096 * 3000 * 2
