"""Tests for data_prep.masks: the IUGC landmark rule, PSFHS reproduction, split membership."""

import csv
import os
import re

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from aop_tf.io.records import InputError
from data_prep import build, masks, phantom

PSFHS = build.default_psfhs_dir()
needs_psfhs = pytest.mark.skipif(
    not os.path.isfile(os.path.join(PSFHS, "train.csv")),
    reason=f"PSFHS data not found at {PSFHS} (set AOP_PSFHS_DIR)")


def _point(text):
  x, y = re.fullmatch(r"\((\S+), (\S+)\)", text).groups()
  return float(x), float(y)


def test_rule_on_hand_made_mask():
  mask = np.zeros((60, 80), np.uint8)
  mask[10:13, 10:51] = 1                       # bar: farthest pair spans the diagonal
  cv2.circle(mask, (55, 42), 12, 2, -1)        # head below-right
  mask[2:4, 70:72] = 1                         # a smaller PS fragment is ignored
  ps1, ps2, fh1 = masks.landmarks_from_mask(mask)
  assert ps1[0] == 50 and ps2[0] == 10 and {ps1[1], ps2[1]} == {10, 12}
  assert mask[int(fh1[1]), int(fh1[0])] == 2
  # FH1 is where the ray from PS1 is tangent: every head pixel lies on one side of it.
  d = fh1 - ps1
  head = np.argwhere(mask == 2)[:, ::-1] - ps1
  cross = d[0] * head[:, 1] - d[1] * head[:, 0]
  assert np.all(cross >= -1e-6 * np.abs(d).max()) or np.all(cross <= 1e-6 * np.abs(d).max())


def test_missing_structures_are_refused():
  mask = np.zeros((30, 30), np.uint8)
  mask[5:8, 5:20] = 1
  with pytest.raises(InputError, match="no fetal head"):
    masks.landmarks_from_mask(mask, "m.png")
  mask[:] = 0
  mask[20:25, 5:20] = 2
  with pytest.raises(InputError, match="no pubic symphysis"):
    masks.landmarks_from_mask(mask, "m.png")


@pytest.mark.parametrize("seed", range(4))
def test_rule_close_to_phantom_geometry(seed):
  p = phantom.make_phantom(seed)
  got = masks.landmarks_from_mask(p["mask"])
  assert np.abs(got[:2] - p["landmarks"][:2]).max() < 2.0
  assert np.abs(got[2] - p["landmarks"][2]).max() < 6.0  # tangent point is flat on a pixel grid


def test_farthest_pair_on_hull_matches_dense():
  rng = np.random.default_rng(0)
  pts = rng.integers(0, 500, size=(400, 2)).astype(np.int64)
  i, j = masks._farthest_pair(pts)  # pylint: disable=protected-access
  big = np.concatenate([pts] * 10)
  k, m = masks._farthest_pair(big)  # pylint: disable=protected-access
  dist = lambda a, b: np.sum((a - b) ** 2)
  assert dist(big[k], big[m]) == dist(pts[i], pts[j])


def test_split_by_blocks():
  names = [f"{i:05d}.png" for i in range(200)]
  out = masks.split_by_blocks(names[::-1], {"train": 3, "val": 2})
  assert out["train"] == names[:120] and out["val"] == names[120:]
  assert masks.parse_split_spec("train:80, val:20") == {"train": 80.0, "val": 20.0}
  for bad in ("dev:1", "train:x", "train:0", ""):
    with pytest.raises(ValueError):
      masks.parse_split_spec(bad)


def test_masks_source_with_split_spec(tmp_path):
  for i in range(6):
    p = phantom.make_phantom(i, size=64)
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "images" / f"{i:05d}.png"), p["image"])
    if i != 5:
      cv2.imwrite(str(tmp_path / "masks" / f"{i:05d}.png"), p["mask"])
  with pytest.raises(FileNotFoundError, match="split_spec"):
    build.build_dataset("masks", data_dir=str(tmp_path), out_dir=str(tmp_path / "x"),
                        verbose=False)
  target = build.build_dataset("masks", data_dir=str(tmp_path), out_dir=str(tmp_path / "o"),
                               split_spec="train:1,val:1", verbose=False)
  b = tfds.builder_from_directory(target)
  meta = b.info.metadata["splits"]
  assert meta["train"] == {"read": 6, "written": 5, "skipped": {"missing mask": 1}}
  assert "val" not in b.info.splits  # 6 files = one block of 40
  ex = next(iter(b.as_dataset(split="train").as_numpy_iterator()))
  assert ex["has_mask"] and set(np.unique(ex["mask"])) == {0, 1, 2}


def _psfhs_rows():
  rows = []
  for split in ("train", "val"):
    with open(os.path.join(PSFHS, f"{split}.csv"), encoding="utf-8-sig") as f:
      rows += list(csv.DictReader(f))
  return rows


@needs_psfhs
def test_rule_reproduces_psfhs_csv_exactly():
  """Every row of train.csv and val.csv: landmarks from the mask == the CSV landmarks."""
  rows = _psfhs_rows()
  assert len(rows) == 1038
  mismatches = []
  for row in rows:
    mask = cv2.imread(os.path.join(PSFHS, "masks", row["Filename"]), cv2.IMREAD_UNCHANGED)
    got = masks.landmarks_from_mask(mask, row["Filename"])
    expected = np.array([_point(row[k]) for k in ("PS1", "PS2", "FH1")], np.float32)
    if not np.array_equal(got, expected):
      mismatches.append((row["Filename"], got.tolist(), expected.tolist()))
  assert not mismatches, f"{len(mismatches)}/{len(rows)} differ, e.g. {mismatches[:3]}"


@needs_psfhs
def test_psfhs_masks_build_subset(tmp_path):
  target = build.build_dataset("masks", out_dir=str(tmp_path), limit=5, verbose=False)
  b = tfds.builder_from_directory(target)
  assert b.info.splits["train"].num_examples == 5 and b.info.splits["val"].num_examples == 5
  rows = {r["Filename"]: r for r in _psfhs_rows()}
  for ex in b.as_dataset(split="val").as_numpy_iterator():
    row = rows[ex["filename"].decode()]
    expected = [_point(row[k]) for k in ("PS1", "PS2", "FH1")]
    np.testing.assert_array_equal(ex["landmarks"], expected)
    assert ex["aop_deg"] == pytest.approx(float(row["AoP"]), abs=1e-3)
    assert ex["has_mask"] and ex["image"].shape == (256, 256, 1)
