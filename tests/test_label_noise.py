"""benchmarks/label_noise.py: how far labels move between neighbouring, nearly identical frames."""

import csv

import cv2
import numpy as np
import pytest

from benchmarks import label_noise


def test_neighbour_pairs_need_consecutive_numbers():
  names = ["00016.png", "00012.png", "00013.png", "00015.png", "scan.png"]
  assert label_noise.neighbour_pairs(names) == [("00012.png", "00013.png"),
                                                ("00015.png", "00016.png")]


def test_pair_statistics_groups_by_image_difference():
  mad = np.array([0.0, 1.0, 10.0])
  moves = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [30.0, 30.0, 30.0]])
  change = np.array([2.0, -4.0, 20.0])
  pred_change = np.array([1.0, np.nan, 5.0])
  groups = label_noise.pair_statistics(mad, moves, change, moves / 2, pred_change,
                                       thresholds=(5.0, 100.0))
  near, every = groups
  assert near["pairs"] == 2 and every["pairs"] == 3
  assert near["label_move_px"] == {"PS1": 2.0, "PS2": 3.0, "FH1": 4.0}
  assert near["label_move_512"] == {"PS1": 4.0, "PS2": 6.0, "FH1": 8.0}
  assert near["label_aop_change_mean_deg"] == pytest.approx(3.0)
  assert near["implied_floor_aop_error_deg"] == pytest.approx(3.0 / np.sqrt(2.0))
  # Only the first near pair was predicted on both frames.
  assert near["predicted_pairs"] == 1 and near["pred_aop_change_mean_deg"] == pytest.approx(1.0)
  assert near["label_aop_change_mean_deg_same_pairs"] == pytest.approx(2.0)
  assert every["pred_aop_change_mean_deg"] == pytest.approx(3.0)


def test_gaussian_label_noise_gives_the_stated_floor():
  """Independent noise of sd s per frame: the implied floor is s * sqrt(2 / pi)."""
  rng = np.random.default_rng(0)
  s = 4.0
  change = rng.normal(0, s, 20000) - rng.normal(0, s, 20000)
  group, = label_noise.pair_statistics(np.zeros(20000), np.ones((20000, 3)), change)
  assert group["implied_floor_aop_error_deg"] == pytest.approx(s * np.sqrt(2 / np.pi), rel=0.02)
  assert group["implied_floor_from_median_deg"] == pytest.approx(s * np.sqrt(2 / np.pi), rel=0.03)


def test_measure_split_finds_identical_images_and_draws_them(tmp_path):
  (tmp_path / "images").mkdir()
  rng = np.random.default_rng(1)
  base = rng.integers(0, 255, (32, 32), dtype=np.uint8)
  other = rng.integers(0, 255, (32, 32), dtype=np.uint8)
  for name, image in (("00001.png", base), ("00002.png", base), ("00003.png", other)):
    cv2.imwrite(str(tmp_path / "images" / name), image)
  labels = {"00001.png": ("(20, 10)", "(5, 12)", "(22, 25)"),
            "00002.png": ("(20, 13)", "(5, 12)", "(22, 25)"),
            "00003.png": ("(21, 10)", "(6, 12)", "(20, 26)")}
  with open(tmp_path / "val.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["Filename", "PS1", "PS2", "FH1", "AoP", "flags"])
    for name, points in labels.items():
      writer.writerow([name, *points, "0", "ok"])
  result, closest = label_noise.measure_split(str(tmp_path), "val", None, (1.0, 1000.0))
  assert result["neighbour_pairs"] == 2
  identical, = result["identical_image_pairs"]
  assert identical["files"] == ["00001.png", "00002.png"]
  assert identical["label_move_px"] == {"PS1": 3.0, "PS2": 0.0, "FH1": 0.0}
  assert abs(identical["label_aop_change_deg"]) > 1.0
  assert result["groups"][0]["pairs"] == 1 and result["groups"][1]["pairs"] == 2
  assert closest[0][0] == 0.0
  figure = label_noise.pair_figure(closest, 2)
  assert figure.dtype == np.uint8 and figure.shape == (2 * 512, 2 * 512, 3)
