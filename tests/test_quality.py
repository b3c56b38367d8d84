"""The quality score's features and the interval (aop_tf/quality.py), on maps worked by hand."""

import json
import math

import numpy as np
import pytest

from aop_tf import heatmap
from aop_tf import quality

CELLS = 32


def _maps(points, sigma=2.0, weights=None):
  """[1, R, R, 3] maps: a Gaussian per landmark (points [3, 2] cells), or several summed."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = np.zeros((CELLS, CELLS, 3))
  for k, (pts, w) in enumerate(zip(points, weights or [[1.0]] * 3)):
    for p, wi in zip(np.atleast_2d(pts), w):
      g = heatmap.gaussian_heatmaps(tf.constant([p], tf.float32), (CELLS, CELLS), sigma)
      out[..., k] += wi * np.asarray(g)[..., 0]
  return out[None]


def test_one_peak_has_no_second_and_the_gaussian_spread():
  maps = _maps([[10, 10], [20, 12], [16, 24]])
  entropy, second, spread = quality._map_stats(maps)  # pylint: disable=protected-access
  np.testing.assert_allclose(second, 0.0, atol=1e-6)
  np.testing.assert_allclose(spread, 2.0 * math.sqrt(2.0), rtol=0.02)  # sqrt(sx^2 + sy^2)
  np.testing.assert_allclose(entropy, math.log(2 * math.pi * math.e * 4.0), rtol=0.02)


def test_a_second_mode_is_measured_against_the_first():
  maps = _maps([[[8, 8], [24, 24]], [20, 12], [16, 24]], weights=[[1.0, 0.4], [1.0], [1.0]])
  _, second, _ = quality._map_stats(maps)  # pylint: disable=protected-access
  assert second[0, 0] == pytest.approx(0.4, abs=0.01) and second[0, 1] == 0.0


def test_features_and_aop_sensitivity():
  landmarks = np.array([[[160.0, 40.0], [80.0, 60.0], [200.0, 150.0]]])
  maps = _maps(landmarks[0] / 8.0)
  feats = quality.features(maps, landmarks, [120.0], [[0.9, 0.8, 0.7]], [[256, 256]])
  named = dict(zip(quality.FEATURES, feats[0]))
  assert named["peak_FH1"] == pytest.approx(0.7) and named["ensemble_spread_deg"] == 0.0
  assert named["ps_length_512"] == pytest.approx(2 * math.hypot(80, 20), rel=1e-6)
  # The AoP moves most with FH1 perpendicular to PS1->FH1: a 1 px spread there is 1 rad / |r|.
  one = quality.aop_sensitivity_deg(landmarks, np.array([[0.0, 0.0, 1.0]]))
  assert one[0] == pytest.approx(math.degrees(1 / math.hypot(40, 110)), rel=1e-3)


def test_score_interval_and_flag_round_trip():
  fitted = {"features": ["peak_FH1", "aop_sensitivity_deg"], "mean": [0.5, 10.0],
            "scale": [0.1, 5.0], "coef": [-0.5, 0.5], "intercept": 1.5, "interval_q": 2.0,
            "coverage": 0.9, "flag_score_deg": 5.0}
  model = quality.QualityModel(fitted)
  rows = np.zeros((2, len(quality.FEATURES)))
  rows[:, quality.FEATURES.index("peak_FH1")] = [0.5, 0.3]
  rows[:, quality.FEATURES.index("aop_sensitivity_deg")] = [10.0, 20.0]
  score = model.score(rows)
  np.testing.assert_allclose(score, [math.expm1(1.5), math.expm1(1.5 + 1.0 + 1.0)], rtol=1e-9)
  low, high = model.interval([120.0, 100.0], score)
  np.testing.assert_allclose(high - low, 4.0 * (score + 1.0))
  assert model.flagged(score).tolist() == [False, True]
  low, high = model.interval([178.0, 3.0], score)  # an AoP lies in 0-180 deg: so does the range
  assert high[0] == 180.0 and low[1] == 0.0 and low[0] < 178.0 and high[1] > 3.0
  assert quality.describe_interval(127.6, 119.2, 136.4) == "127.6 deg (90 %: 119-136)"
  assert quality.describe_interval(math.nan, 0, 0) == "undefined"


# A hand-made fit on the FH1 spread alone: a sharp map scores low, a wide one high (flagged).
FIT = {"features": ["spread_FH1_cells"], "mean": [2.0], "scale": [1.0], "coef": [0.5],
       "intercept": 1.0, "interval_q": 1.5, "coverage": 0.9, "flag_score_deg": 5.0}


class StandIn:
  """A predictor whose maps are sharp for dark images and wide for bright ones (AoP 120 deg)."""

  def __init__(self):
    points = [[16, 8], [8, 10], [24, 24]]
    self.sharp, self.wide = _maps(points, sigma=1.0)[0], _maps(points, sigma=4.0)[0]

  def predict(self, images):
    n = len(images)
    maps = np.stack([self.sharp if im.mean() < 100 else self.wide for im in images])
    return {"landmarks": np.tile(np.array([[130, 70], [66, 82], [194, 194]], np.float32),
                                 (n, 1, 1)),
            "aop_deg": np.full(n, 120.0, np.float32), "confidence": np.full((n, 3), 0.9),
            "heatmaps": maps.astype(np.float32)}


def _dark_and_bright(folder):
  import cv2  # pylint: disable=import-outside-toplevel
  paths = []
  for name, level in (("dark.png", 50), ("bright.png", 200)):
    paths.append(str(folder / name))
    cv2.imwrite(paths[-1], np.full((256, 256), level, np.uint8))
  return paths


def test_per_frame_is_the_score_and_interval_of_the_features():
  out = StandIn().predict([np.zeros((256, 256, 1), np.uint8), np.full((256, 256, 1), 200)])
  model = quality.QualityModel(FIT)
  got = quality.per_frame(model, out, [(256, 256)] * 2)
  score = model.score(quality.features(out["heatmaps"], out["landmarks"], out["aop_deg"],
                                       out["confidence"], [(256, 256)] * 2))
  np.testing.assert_allclose([g[0] for g in got], score)
  np.testing.assert_allclose([g[1:3] for g in got], np.stack(model.interval([120, 120], score), 1))
  assert [g[3] for g in got] == [5.0, 5.0]
  assert quality.per_frame(None, out, [(256, 256)] * 2) == [None, None]
  no_maps = {k: v for k, v in out.items() if k != "heatmaps"}
  assert quality.per_frame(model, no_maps, [(256, 256)] * 2) == [None, None]


def test_predict_rows_carry_the_score_interval_and_why_the_flag_fired(tmp_path):
  """predict with a card's fitted quality model: every row gets the expected error, the 90 %
  interval around its AoP, and a flag reason naming the score when it fires."""
  from aop_tf import predict  # pylint: disable=import-outside-toplevel
  paths = _dark_and_bright(tmp_path)
  rows, failures = predict.predict_files(StandIn(), paths, progress=False, quality_fit=FIT,
                                         min_confidence=0.99)
  assert not failures
  dark, bright = rows
  assert dark["quality_score_deg"] < bright["quality_score_deg"]
  for row in rows:
    half = 1.5 * (row["quality_score_deg"] + 1.0)
    assert row["aop_low_deg"] == pytest.approx(120.0 - half)
    assert row["aop_high_deg"] == pytest.approx(120.0 + half)
  assert not dark["low_confidence"] and dark["flag_reason"] == ""  # peaks 0.9 < 0.99 ignored
  assert bright["low_confidence"] and bright["flag_reason"].startswith("expected AoP error")
  plain, _ = predict.predict_files(StandIn(), paths, progress=False, min_confidence=0.99)
  assert math.isnan(plain[0]["quality_score_deg"]) and plain[0]["flag_reason"].startswith("low")


def test_the_viewer_rows_carry_what_predict_writes(tmp_path):
  """The viewer's rows (`workspace.result_rows`) with the card's quality model: the same score,
  interval and flag reason as predict's rows of the same images."""
  from aop_tf import config  # pylint: disable=import-outside-toplevel
  from aop_tf import predict  # pylint: disable=import-outside-toplevel
  from aop_tf.io import frames  # pylint: disable=import-outside-toplevel
  from aop_tf.viewer import workspace  # pylint: disable=import-outside-toplevel
  paths = _dark_and_bright(tmp_path)
  want, _ = predict.predict_files(StandIn(), paths, progress=False, quality_fit=FIT,
                                  min_confidence=0.99)
  card = tmp_path / "model" / "model_card.json"
  card.parent.mkdir()
  card.write_text(json.dumps({"quality": FIT}))
  model = workspace.Model(str(card.parent), min_confidence=0.99)  # its card, not started
  model.semi = config.SemiSpec()
  assert model.status()["quality"]["coverage"] == 0.9
  batch = [frames.StillSource(p).frame(0) for p in paths]
  got = workspace.result_rows(batch, StandIn().predict([f.image for f in batch]), model)
  columns = ("aop_deg", "quality_score_deg", "aop_low_deg", "aop_high_deg", "low_confidence",
             "flag_reason")
  assert [[r[c] for c in columns] for r in got] == [[r[c] for c in columns] for r in want]
  assert got[1]["flag_reason"].startswith("expected AoP error")
