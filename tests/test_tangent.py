"""FH1 as the tangent point from PS1 to a fetal-head probability map."""

import csv
import os

import numpy as np
import pytest

from aop_tf import geometry
from aop_tf import tangent

PSFHS = os.environ.get("AOP_PSFHS_DIR", os.path.join(os.path.dirname(__file__), "..", "..",
                                                       "shared", "data", "psfhs"))


def _disc(size, centre, radius):
  ys, xs = np.mgrid[0:size, 0:size]
  return ((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius ** 2).astype(np.float32)


def test_tangent_to_a_disc_matches_the_analytic_tangent():
  size, centre, radius = 200, (130.0, 120.0), 40.0
  ps1, ps2 = np.array([60.0, 40.0]), np.array([20.0, 40.0])
  head = _disc(size, centre, radius)[None]
  fh1, found = tangent.tangent_point(ps1[None], ps2[None], head, [size, size])
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
  head = np.zeros((2, 16, 16), np.float32)
  head[1, 10:12, 10:12] = 1.0
  ps1 = np.array([[3.0, 3.0], [3.0, 3.0]])
  ps2 = np.array([[0.0, 3.0], [0.0, 3.0]])
  fh1, found = tangent.tangent_point(ps1, ps2, head, [[16, 16], [16, 16]])
  assert found.numpy().tolist() == [False, True]
  np.testing.assert_allclose(fh1[0], ps1[0])


def test_coarse_grid_maps_cells_to_original_pixels():
  # One head cell of a 4x4 grid over a 400x200 image: its centre is ((i + .5) * 100 - .5, ...).
  head = np.zeros((1, 4, 4), np.float32)
  head[0, 2, 3] = 1.0
  fh1, _ = tangent.tangent_point([[10.0, 10.0]], [[0.0, 10.0]], head, [400, 200])
  np.testing.assert_allclose(fh1[0], [349.5, 124.5])


@pytest.mark.skipif(not os.path.isdir(PSFHS), reason=f"PSFHS data not found at {PSFHS}")
def test_reproduces_psfhs_fh1_from_true_masks():
  import cv2  # pylint: disable=import-outside-toplevel
  with open(os.path.join(PSFHS, "val.csv"), encoding="utf-8-sig") as f:
    rows = list(csv.DictReader(f))[:40]
  parse = lambda s: [float(v) for v in s.strip("()").split(",")]
  gt = np.array([[parse(r[k]) for k in ("PS1", "PS2", "FH1")] for r in rows], np.float32)
  masks = np.stack([cv2.imread(os.path.join(PSFHS, "masks", r["Filename"]), cv2.IMREAD_GRAYSCALE)
                    for r in rows])
  fh1, found = tangent.tangent_point(gt[:, 0], gt[:, 1], (masks == tangent.HEAD_CLASS), [256, 256])
  assert found.numpy().all()
  exact = np.linalg.norm(fh1.numpy() - gt[:, 2], axis=-1) < 1e-3
  assert exact.mean() >= 0.95
  lm = np.concatenate([gt[:, :2], fh1.numpy()[:, None]], axis=1)
  assert np.abs(geometry.aop_deg(lm) - geometry.aop_deg(gt)).max() < 1.0
