"""The one predictor interface (aop_tf/predictor.py) and evaluation's loop over it.

A Keras "model" whose heatmaps are fixed Gaussians makes the expected landmarks hand-workable:
the peak cell maps to `(i + 0.5) * size / R - 0.5` pixels of each image, whatever its size.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aop_tf import codec as codec_lib
from aop_tf import evaluate
from aop_tf import heatmap
from aop_tf import predictor
from aop_tf import predictor_tf

CODEC = codec_lib.HeatmapCodec(input_size=32, heatmap_size=8, sigma_cells=1.0,
                               decode_method="argmax")
PEAK_CELLS = np.array([[3.0, 1.0], [6.0, 2.0], [2.0, 5.0]], np.float32)  # (x, y) per landmark


def _fixed_model():
  """Input [B, 32, 32, 1] -> heatmaps [B, 8, 8, 3] peaking at `PEAK_CELLS`, whatever the image."""
  maps = heatmap.gaussian_heatmaps(PEAK_CELLS, (8, 8), 1.0)
  inputs = keras.Input((32, 32, 1))
  out = keras.layers.Lambda(lambda x: tf.zeros_like(x[:, :8, :8, :1]) + maps[None])(inputs)
  return keras.Model(inputs, {"heatmaps": out})


def _expected_px(width, height):
  return (PEAK_CELLS + 0.5) * np.array([width, height], np.float32) / 8 - 0.5


class _Recorder(predictor.Predictor):
  """Records the shape of every model call; answers zeros."""

  def __init__(self):
    super().__init__("fake", heatmap_cells=4)
    self.calls = []

  def _run(self, images):
    self.calls.append(images.shape)
    n = len(images)
    return {"landmarks": np.zeros((n, 3, 2), np.float32), "aop_deg": np.zeros(n, np.float32),
            "confidence": np.ones((n, 3), np.float32),
            "heatmaps": np.zeros((n, 4, 4, 3), np.float32)}


def test_keras_predictor_answers_in_each_images_own_pixels():
  model = predictor_tf.KerasPredictor(_fixed_model(), CODEC)
  images = [np.zeros((60, 100, 1), np.uint8), np.zeros((60, 100, 3), np.uint8),
            np.zeros((32, 32), np.uint8), np.zeros((200, 80, 4), np.uint8)]
  out = model.predict(images)
  assert out["landmarks"].shape == (4, 3, 2) and out["heatmaps"].shape == (4, 8, 8, 3)
  for i, image in enumerate(images):
    np.testing.assert_allclose(out["landmarks"][i], _expected_px(image.shape[1], image.shape[0]),
                               atol=1e-4)
  np.testing.assert_allclose(out["confidence"], 1.0, atol=1e-6)
  prepared = model.predict_prepared(np.zeros((2, 32, 32, 1), np.float32), [[100, 60], [64, 64]])
  np.testing.assert_allclose(prepared["landmarks"][0], _expected_px(100, 60), atol=1e-4)
  np.testing.assert_allclose(prepared["landmarks"][1], _expected_px(64, 64), atol=1e-4)


def test_equal_size_stretches_go_to_the_model_together():
  fake = _Recorder()
  shapes = [(10, 20, 1), (10, 20, 1), (30, 30, 3), (10, 20, 1), (10, 20, 1), (10, 20, 1)]
  out = fake.predict([np.zeros(s, np.uint8) for s in shapes])
  assert fake.calls == [(2, 10, 20, 1), (1, 30, 30, 3), (3, 10, 20, 1)]
  assert out["landmarks"].shape == (6, 3, 2)
  empty = fake.predict([])
  assert empty["landmarks"].shape == (0, 3, 2) and empty["heatmaps"].shape == (0, 4, 4, 3)
  assert [len(c) for c in predictor.chunks(range(7), 3)] == [3, 3, 1]


@pytest.mark.parametrize("bad,match", [
    (np.zeros((8, 8, 1), np.uint16), "pixel type uint16"),
    (np.zeros((8, 8, 5), np.uint8), r"shape \(8, 8, 5\)"),
    (np.zeros((0, 8, 1), np.uint8), r"shape \(0, 8, 1\)"),
])
def test_images_are_checked_before_the_model_runs(bad, match):
  fake = _Recorder()
  with pytest.raises(ValueError, match=match):
    fake.predict([np.zeros((8, 8), np.uint8), bad])
  assert not fake.calls


def test_redecoding_uses_the_other_codec():
  inner = predictor_tf.KerasPredictor(_fixed_model(), CODEC)
  dark = predictor_tf.RedecodingPredictor(inner, codec_lib.HeatmapCodec(
      input_size=32, heatmap_size=8, sigma_cells=1.0, decode_method="dark", heatmap_scale=2.0))
  out = dark.predict([np.zeros((60, 100, 1), np.uint8)])
  np.testing.assert_allclose(out["landmarks"][0], _expected_px(100, 60), atol=1e-3)
  np.testing.assert_allclose(out["confidence"], 0.5, atol=1e-6)  # peaks / heatmap_scale


def test_predict_source_keeps_order_sizes_and_timing():
  fake = _Recorder()
  examples = [{"image": np.zeros((h, w, 1), np.uint8), "landmarks": np.full((3, 2), i, np.float32),
               "filename": f"{i}.png"} for i, (h, w) in enumerate([(10, 20), (10, 20), (7, 9)])]

  class Source(list):
    def describe(self):
      return {}

  preds, timing = evaluate.predict_source(fake, Source(examples), batch_size=2,
                                          keep_heatmaps=True)
  assert preds["filename"].tolist() == ["0.png", "1.png", "2.png"]
  np.testing.assert_allclose(preds["size_px"], [[20, 10], [20, 10], [9, 7]])
  np.testing.assert_allclose(preds["gt_px"][:, 0, 0], [0, 1, 2])
  assert preds["heatmaps"].shape == (3, 4, 4, 3)
  assert timing["batch_n"] == [2, 1] and len(timing["batch_s"]) == 2
  assert fake.calls == [(2, 10, 20, 1), (1, 7, 9, 1)]
