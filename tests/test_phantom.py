"""Tests for data_prep.phantom: determinism and landmarks that follow from the geometry."""

import math

import numpy as np
import pytest

from aop_tf import geometry
from data_prep import phantom


def test_deterministic_and_seed_dependent():
  a, b, c = phantom.make_phantom(7), phantom.make_phantom(7), phantom.make_phantom(8)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["mask"], b["mask"])
  np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
  assert not np.array_equal(a["image"], c["image"])


@pytest.mark.parametrize("size", [128, 256, 200])
def test_types_and_shapes(size):
  p = phantom.make_phantom(3, size=size)
  assert p["image"].dtype == np.uint8 and p["image"].shape == (size, size)
  assert p["mask"].dtype == np.uint8 and p["mask"].shape == (size, size)
  assert set(np.unique(p["mask"])) == {0, 1, 2}
  assert p["landmarks"].dtype == np.float32 and p["landmarks"].shape == (3, 2)
  assert np.all(p["landmarks"] >= 0) and np.all(p["landmarks"] <= size - 1)


def _ellipse_value(point, centre, axes, angle):
  c, s = math.cos(angle), math.sin(angle)
  d = np.asarray(point, np.float64) - centre
  u, v = c * d[0] + s * d[1], -s * d[0] + c * d[1]
  return (u / axes[0]) ** 2 + (v / axes[1]) ** 2


@pytest.mark.parametrize("seed", range(6))
def test_landmarks_follow_geometry(seed):
  p = phantom.make_phantom(seed)
  g = p["geometry"]
  ps1, ps2, fh1 = p["landmarks"].astype(np.float64)
  # PS1/PS2: ends of the symphysis major axis, PS1 on the right.
  assert ps1[0] > ps2[0]
  np.testing.assert_allclose((ps1 + ps2) / 2, g["ps_centre"], atol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(ps1 - ps2), 2 * g["ps_axes"][0], rtol=1e-5)
  # FH1 lies on the head ellipse ...
  assert _ellipse_value(fh1, g["head_centre"], g["head_axes"], g["head_angle"]) == pytest.approx(
      1.0, abs=1e-4)
  # ... and maximises the angle PS2-PS1-q over the (densely sampled) head boundary.
  t = np.linspace(0, 2 * math.pi, 20001)
  c, s = math.cos(g["head_angle"]), math.sin(g["head_angle"])
  ex, ey = g["head_axes"][0] * np.cos(t), g["head_axes"][1] * np.sin(t)
  boundary = np.stack([c * ex - s * ey, s * ex + c * ey], -1) + g["head_centre"]
  dense_max = geometry.angle_deg(ps1[None], ps2[None], boundary).max()
  aop = float(geometry.aop_deg(p["landmarks"]))
  assert aop == pytest.approx(dense_max, abs=0.01)
  assert aop == pytest.approx(p["aop_deg"], abs=1e-3)
  # FH1 is on the rim of the head mask, and the PS ends on the symphysis mask's boundary.
  x, y = np.rint(fh1).astype(int)
  assert 2 in p["mask"][y - 1:y + 2, x - 1:x + 2]
  for point in (ps1, ps2):
    x, y = np.rint(point).astype(int)
    assert 1 in p["mask"][y - 1:y + 2, x - 1:x + 2]


def test_aop_spans_clinical_range():
  aops = np.array([phantom.make_phantom(s)["aop_deg"] for s in range(60)])
  assert aops.min() >= 90.0 and aops.max() <= 160.0
  assert aops.max() - aops.min() > 35.0


def test_tangent_points_closed_form():
  # Unit circle at the origin seen from (2, 0): tangent points at 60 degrees.
  pts = phantom.tangent_points((2.0, 0.0), (0.0, 0.0), (1.0, 1.0), 0.0)
  np.testing.assert_allclose(sorted(pts[:, 1]), [-math.sqrt(3) / 2, math.sqrt(3) / 2])
  np.testing.assert_allclose(pts[:, 0], [0.5, 0.5])
  assert phantom.tangent_points((0.1, 0.0), (0.0, 0.0), (1.0, 1.0), 0.0) is None


def test_mark_landmarks_are_the_brightest_pixels():
  p = phantom.make_phantom(5, mark_landmarks=True)
  image = p["image"]
  assert image.max() == phantom.MARKER_VALUE
  bright = np.argwhere(image == phantom.MARKER_VALUE)  # (row, col)
  assert image[image < phantom.MARKER_VALUE].max() <= phantom.MARKER_VALUE - phantom.MARKER_GAP
  for x, y in np.rint(p["landmarks"]).astype(int):
    assert image[y, x] == phantom.MARKER_VALUE
  assert len(bright) <= 15  # three 5-pixel crosses
  plain = phantom.make_phantom(5)
  np.testing.assert_array_equal(plain["landmarks"], p["landmarks"])
