"""The heatmap codec (aop_tf/codec.py): encode and decode in pixels, against hand-worked cases.

Round trips go through the whole representation: original pixels -> cells -> Gaussian targets ->
decoded pixels, for square and non-square images; the FH1 tangent is checked against the
analytic tangent to a disc.
"""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_tf import codec as codec_lib
from aop_tf import geometry

FAST = settings(max_examples=40, deadline=None)


def _codec(**kw):
  return codec_lib.HeatmapCodec(**{"input_size": 256, "heatmap_size": 64, "sigma_cells": 2.0,
                                   "decode_method": "dark", **kw})


def _round_trip(codec, points_px, size_px):
  targets = codec.encode(np.asarray(points_px, np.float32), np.asarray(size_px, np.float32))
  decoded = codec.decode(targets["heatmaps"], np.asarray(size_px, np.float32))
  return {k: np.asarray(v) for k, v in decoded.items()}


# --- encode --------------------------------------------------------------------------------------


def test_encode_hand_worked():
  codec = _codec(heatmap_size=64, sigma_cells=1.5)
  # Pixel (9.5, 5.5) of 256: cell (9.5 + .5) * 64 / 256 - .5 = 2.0 and (5.5 + .5) / 4 - .5 = 1.0.
  out = codec.encode([[[9.5, 5.5], [129.5, 65.5], [1.5, 1.5]]], [[256.0, 256.0]])
  np.testing.assert_allclose(out["landmarks_cells"][0], [[2.0, 1.0], [32.0, 16.0], [0.0, 0.0]])
  maps = out["heatmaps"].numpy()[0]
  assert maps.shape == (64, 64, 3)
  assert maps[1, 2, 0] == pytest.approx(1.0) and maps[16, 32, 1] == pytest.approx(1.0)
  assert maps[1, 3, 0] == pytest.approx(math.exp(-1.0 / (2 * 1.5 ** 2)), rel=1e-5)
  # A 512 x 128 image: x and y map separately (x / 8, y / 2 cells per pixel).
  out = codec.encode([[[11.5, 2.5], [0.0, 0.0], [0.0, 0.0]]], [512.0, 128.0])
  np.testing.assert_allclose(out["landmarks_cells"][0, 0], [1.0, 1.0])


# --- decode --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["argmax", "dark"])
def test_round_trip_at_cell_centres(method):
  # Points on cell centres decode exactly with either method, with confidence 1.
  codec = _codec(decode_method=method)
  idx = np.random.default_rng(0).integers(2, 62, size=(5, 3, 2)).astype(np.float32)
  points_px = (idx + 0.5) * 256 / 64 - 0.5
  out = _round_trip(codec, points_px, [[256.0, 256.0]] * 5)
  np.testing.assert_allclose(out["landmarks"], points_px, atol=0.05)
  np.testing.assert_allclose(out["confidence"], 1.0, atol=1e-6)
  np.testing.assert_allclose(out["aop_deg"], geometry.aop_deg(points_px), atol=1e-3)


@FAST
@given(points=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
       width=st.integers(64, 700), height=st.integers(64, 700),
       sigma=st.floats(1.0, 3.0), cells=st.sampled_from([32, 64, 128]))
def test_dark_round_trip_any_image_size(points, width, height, sigma, cells):
  # Sub-pixel points away from the border cells, on square and non-square images.
  margin = np.array([width, height]) * 3.0 / cells
  points_px = (margin + np.array(points).reshape(1, 3, 2) * (np.array([width, height]) -
                                                            2 * margin)).astype(np.float32)
  out = _round_trip(_codec(sigma_cells=sigma, heatmap_size=cells), points_px,
                    [[width, height]])
  tolerance = 0.02 * max(width, height) / cells + 1e-3  # a fiftieth of a cell
  np.testing.assert_allclose(out["landmarks"], points_px, atol=tolerance)
  assert np.all(out["confidence"] > math.exp(-1.0 / (4.0 * sigma * sigma)) - 1e-6)


@FAST
@given(points=st.lists(st.floats(0.0, 255.0, width=32), min_size=6, max_size=6))
def test_argmax_round_trip_within_half_a_cell(points):
  points_px = np.array(points, np.float32).reshape(1, 3, 2)
  out = _round_trip(_codec(decode_method="argmax"), points_px, [[256.0, 256.0]])
  assert np.all(np.abs(out["landmarks"] - points_px) <= 0.5 * 256 / 64 + 1e-3)


def test_argmax_hand_worked_on_a_non_square_image():
  # Hottest cells (x 3, y 1) and (0, 7) of an 8x8 map over 400 x 200 px: pixel
  # ((3 + .5) * 50 - .5, (1 + .5) * 25 - .5) = (174.5, 37) and (24.5, 187).
  maps = np.zeros((1, 8, 8, 3), np.float32)
  maps[0, 1, 3, 0] = maps[0, 7, 0, 1] = maps[0, 4, 4, 2] = 0.8
  out = _codec(heatmap_size=8, decode_method="argmax").decode(maps, [400.0, 200.0])
  np.testing.assert_allclose(out["landmarks"][0, :2], [[174.5, 37.0], [24.5, 187.0]])
  np.testing.assert_allclose(out["confidence"], [[0.8, 0.8, 0.8]])


def test_dark_with_blur_stays_close():
  points_px = np.array([[[100.3, 60.7], [30.2, 200.9], [180.5, 140.1]]], np.float32)
  out = _round_trip(_codec(blur_sigma_cells=1.0), points_px, [[256.0, 256.0]])
  # Blurring a Gaussian gives a wider Gaussian at the same place.
  np.testing.assert_allclose(out["landmarks"], points_px, atol=0.05)


def test_confidence_is_in_units_of_the_target_peak():
  # A model trained with heatmap_scale 4 outputs peaks near 4; predict's --min_confidence
  # assumes 1.
  codec = _codec(heatmap_scale=4.0)
  points_px = np.array([[[101.5, 61.5], [29.5, 201.5], [181.5, 141.5]]], np.float32)  # centres
  maps = 4.0 * codec.encode(points_px, [256.0, 256.0])["heatmaps"]
  out = codec.decode(maps, [256.0, 256.0])
  np.testing.assert_allclose(out["confidence"], 1.0, atol=1e-5)
  np.testing.assert_allclose(out["heatmaps"], maps)  # the heatmaps as the model gave them


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="Unknown decode method"):
    _codec(decode_method="softargmax")
  with pytest.raises(ValueError, match="fh1_method"):
    _codec(fh1_method="nearest")
  with pytest.raises(ValueError, match="sigma_cells"):
    _codec(sigma_cells=0.0)


# --- FH1 by tangent ------------------------------------------------------------------------------


def _outputs(codec, points_px, head=None):
  outputs = {"heatmaps": codec.encode(np.asarray(points_px, np.float32), [256.0, 256.0])[
      "heatmaps"]}
  if head is not None:
    seg = np.zeros(head.shape + (3,), np.float32)
    seg[..., 2] = head
    seg[..., 0] = 1.0 - head
    outputs["segmentation"] = seg
  return outputs


def test_tangent_moves_fh1_to_the_head_tangent():
  # A disc of head at 64 cells over 256 px; FH1's heatmap deliberately far off the tangent.
  ys, xs = np.mgrid[0:64, 0:64]
  head = (((xs - 45) ** 2 + (ys - 35) ** 2) <= 10 ** 2).astype(np.float32)[None]
  points = [[[140.0, 30.0], [70.0, 44.0], [230.0, 230.0]]]
  codec = _codec(fh1_method="tangent")
  out = codec.decode(_outputs(codec, points, head), [[256.0, 256.0]])
  landmarks = out["landmarks"].numpy()
  np.testing.assert_allclose(landmarks[0, :2], np.asarray(points[0][:2]), atol=0.05)
  # FH1 is on the disc's rim (centre (45.5*4-.5, 35.5*4-.5) px, radius ~40 px), and the AoP is
  # the largest angle over the disc.
  centre = np.array([181.5, 141.5])
  assert np.hypot(*(landmarks[0, 2] - centre)) == pytest.approx(40.0, abs=4.0)
  rim = centre + 40.0 * np.stack([np.cos(np.linspace(0, 2 * np.pi, 720)),
                                  np.sin(np.linspace(0, 2 * np.pi, 720))], axis=-1)
  best = geometry.angle_deg(landmarks[0, 0], landmarks[0, 1], rim).max()
  assert float(out["aop_deg"][0]) == pytest.approx(best, abs=1.5)
  assert float(out["aop_deg"][0]) == pytest.approx(float(geometry.aop_deg(landmarks[0])),
                                                   abs=1e-4)


def test_tangent_keeps_heatmap_fh1_without_head_and_needs_segmentation():
  points = [[[140.0, 30.0], [70.0, 44.0], [190.0, 80.0]]]
  codec = _codec(fh1_method="tangent")
  out = codec.decode(_outputs(codec, points, np.zeros((1, 64, 64), np.float32)), [[256, 256]])
  np.testing.assert_allclose(out["landmarks"][0, 2], points[0][2], atol=0.05)
  with pytest.raises(ValueError, match="segmentation"):
    codec.decode(_outputs(codec, points), [[256, 256]])
  heatmap_only = dataclasses.replace(codec, fh1_method="heatmap")
  np.testing.assert_allclose(heatmap_only.decode(_outputs(codec, points), [256, 256])[
      "landmarks"], points, atol=0.05)
