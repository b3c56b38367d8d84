"""FH1 by the IUGC rule (aop_tf/tangent.py): the head point of maximal angle PS2-PS1-q.

The same function derives FH1 from PSFHS masks (data_prep.masks, exact against the CSVs in
tests/test_masks.py) and from predicted head maps (codec, tests/test_codec.py).
"""

import csv
import os

import numpy as np
import pytest

from aop_tf import geometry
from aop_tf import tangent

PSFHS = os.environ.get("AOP_PSFHS_DIR", os.path.join(os.path.dirname(__file__), "..", "..",
                                                       "shared", "data", "psfhs"))


def _pixels(size):
  """Every pixel centre `(x, y)` of a `size` x `size` image, [1, size * size, 2]."""
  ys, xs = np.mgrid[0:size, 0:size]
  return np.stack([xs, ys], axis=-1).reshape(1, -1, 2).astype(np.float32)


def _disc(size, centre, radius):
  ys, xs = np.mgrid[0:size, 0:size]
  return ((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius ** 2).reshape(1, -1)


def test_tangent_to_a_disc_matches_the_analytic_tangent():
  size, centre, radius = 200, (130.0, 120.0), 40.0
  ps1, ps2 = np.array([60.0, 40.0]), np.array([20.0, 40.0])
  fh1, found = tangent.tangent_point(ps1[None], ps2[None], _pixels(size),
                                     _disc(size, centre, radius))
  assert bool(found[0])
  # Analytic: the tangent from PS1 that opens the larger angle from PS1->PS2.
  d = np.hypot(*(np.array(centre) - ps1))
  base = np.degrees(np.arctan2(centre[1] - ps1[1], centre[0] - ps1[0]))
  half = np.degrees(np.arcsin(radius / d))
  # PS1->PS2 points at 180 deg, so a ray at phi opens 180 - |phi| from it.
  expected_aop = 180.0 - min(abs(base + half), abs(base - half))
  aop = float(geometry.angle_deg(ps1, ps2, fh1[0]))
  assert aop == pytest.approx(expected_aop, abs=1.0)
  # FH1 lies on the rim.
  assert np.hypot(*(fh1[0].numpy() - centre)) == pytest.approx(radius, abs=1.5)


def test_no_head_is_reported_not_invented():
  points = np.tile(_pixels(16), [2, 1, 1])
  valid = np.zeros((2, 256), bool)
  valid[1, 10 * 16 + 10] = True
  ps1 = np.array([[3.0, 3.0], [3.0, 3.0]])
  ps2 = np.array([[0.0, 3.0], [0.0, 3.0]])
  fh1, found = tangent.tangent_point(ps1, ps2, points, valid)
  assert found.numpy().tolist() == [False, True]
  np.testing.assert_allclose(fh1[0], ps1[0])
  np.testing.assert_allclose(fh1[1], [10.0, 10.0])


def test_ties_go_to_the_point_nearest_ps1_then_the_first():
  # Three head points on one ray from PS1 (the same angle): the nearest wins, wherever it is
  # listed. A point on PS1 itself has no angle and never wins.
  ps1, ps2 = [[10.0, 10.0]], [[0.0, 10.0]]
  ray = [[[30.0, 30.0], [20.0, 20.0], [10.0, 10.0], [40.0, 40.0]]]
  fh1, found = tangent.tangent_point(ps1, ps2, ray, [[True] * 4])
  assert bool(found[0])
  np.testing.assert_allclose(fh1[0], [20.0, 20.0])
  # Equal angle and distance (mirror images across the PS1->PS2 line): the first listed.
  mirror = [[[20.0, 0.0], [20.0, 20.0]]]
  np.testing.assert_allclose(tangent.tangent_point(ps1, ps2, mirror, [[True, True]])[0][0],
                             [20.0, 0.0])


@pytest.mark.skipif(not os.path.isdir(PSFHS), reason=f"PSFHS data not found at {PSFHS}")
def test_reproduces_psfhs_fh1_from_every_head_pixel():
  # The labels took FH1 from the head contour; the whole head region gives the same point (the
  # tangent point lies on the boundary), except where ties break differently.
  import cv2  # pylint: disable=import-outside-toplevel
  with open(os.path.join(PSFHS, "val.csv"), encoding="utf-8-sig") as f:
    rows = list(csv.DictReader(f))[:40]
  parse = lambda s: [float(v) for v in s.strip("()").split(",")]
  gt = np.array([[parse(r[k]) for k in ("PS1", "PS2", "FH1")] for r in rows], np.float32)
  masks = np.stack([cv2.imread(os.path.join(PSFHS, "masks", r["Filename"]), cv2.IMREAD_GRAYSCALE)
                    for r in rows])
  fh1, found = tangent.tangent_point(gt[:, 0], gt[:, 1], np.tile(_pixels(256), [40, 1, 1]),
                                     masks.reshape(40, -1) == tangent.HEAD_CLASS)
  assert found.numpy().all()
  exact = np.linalg.norm(fh1.numpy() - gt[:, 2], axis=-1) < 1e-3
  assert exact.mean() >= 0.95
  lm = np.concatenate([gt[:, :2], fh1.numpy()[:, None]], axis=1)
  assert np.abs(geometry.aop_deg(lm) - geometry.aop_deg(gt)).max() < 1.0
