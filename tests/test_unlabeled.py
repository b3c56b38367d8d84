"""Unlabeled images in the dataset (data_prep.unlabeled): the `images` source, `--unlabeled_dir`
and scarce labels simulated with `--labeled_list`."""

import json
import os

import cv2
import numpy as np
import pytest

from aop_tf import data
from data_prep import build, unlabeled


def _images(folder, count, size=48):
  os.makedirs(folder / "sub", exist_ok=True)
  for i in range(count):
    where = folder / "sub" if i % 2 else folder
    cv2.imwrite(str(where / f"u{i}.png"), np.full((size, size + 8), 40 + i, np.uint8))
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
  (folder / "notes.txt").write_text("not an image")
  os.makedirs(folder / ".cache", exist_ok=True)  # hidden files and folders are never read
  for hidden in (folder / ".thumb.png", folder / ".cache" / "u9.png"):
    cv2.imwrite(str(hidden), np.zeros((8, 8), np.uint8))


def _summary(dataset_dir):
  with open(os.path.join(dataset_dir, "metadata.json")) as f:
    return json.load(f)


def test_images_source_writes_an_unlabeled_split(tmp_path):
  _images(tmp_path / "scans", 4)
  out = build.build_dataset("images", data_dir=str(tmp_path / "scans"),
                            out_dir=str(tmp_path / "ds"), verbose=False)
  assert data.num_examples(out, "unlabeled") == 4
  examples = list(data.load_split(out, "unlabeled").as_numpy_iterator())
  assert sorted(ex["filename"].decode() for ex in examples) == [
      "sub/u1.png", "sub/u3.png", "u0.png", "u2.png"]
  for ex in examples:
    assert np.isnan(ex["landmarks"]).all() and np.isnan(ex["aop_deg"]) and not ex["has_mask"]
    assert ex["image"].shape == (48, 56, 1)
  split = _summary(out)["splits"]["unlabeled"]
  assert split == {"read": 5, "written": 4, "skipped": {"unreadable image": 1}}


def test_labeled_list_moves_the_other_train_images_to_unlabeled(tmp_path):
  keep = tmp_path / "keep.txt"
  keep.write_text("# the labeled ones\nphantom_0000001.png\nphantom_0000004.png\n")
  out = build.build_dataset("phantom", out_dir=str(tmp_path / "ds"), phantom_size=64,
                            phantom_counts={"train": 6, "val": 2}, labeled_list=str(keep),
                            verbose=False)
  train = list(data.load_split(out, "train").as_numpy_iterator())
  assert [ex["filename"].decode() for ex in train] == ["phantom_0000001.png",
                                                       "phantom_0000004.png"]
  assert all(ex["has_mask"] and np.isfinite(ex["landmarks"]).all() for ex in train)
  moved = list(data.load_split(out, "unlabeled").as_numpy_iterator())
  assert len(moved) == 4
  for ex in moved:  # no label of any kind goes with them
    assert np.isnan(ex["landmarks"]).all() and not ex["has_mask"] and not ex["mask"].any()
  splits = _summary(out)["splits"]
  assert splits["train"] == {"read": 6, "written": 2,
                             "skipped": {"to unlabeled (--labeled_list)": 4}}
  assert splits["unlabeled"]["written"] == 4 and data.num_examples(out, "val") == 2


def test_labeled_list_names_must_be_train_examples(tmp_path):
  keep = tmp_path / "keep.txt"
  keep.write_text("phantom_0000001.png\nnot_there.png\n")
  with pytest.raises(ValueError, match="1 names are not train examples.*not_there.png"):
    build.build_dataset("phantom", out_dir=str(tmp_path / "ds"), phantom_size=64,
                        phantom_counts={"train": 3}, labeled_list=str(keep), verbose=False)


def test_unlabeled_dir_beside_a_labeled_source(tmp_path):
  _images(tmp_path / "extra", 2)
  out = build.build_dataset("phantom", out_dir=str(tmp_path / "ds"), phantom_size=64,
                            phantom_counts={"train": 3}, unlabeled_dir=str(tmp_path / "extra"),
                            verbose=False)
  assert data.num_examples(out, "train") == 3 and data.num_examples(out, "unlabeled") == 2


def test_find_sources_root_is_the_folder_or_the_common_folder(tmp_path):
  _images(tmp_path / "scans", 4)
  root, paths = unlabeled.find_sources(str(tmp_path / "scans" / "sub"))
  assert root == str(tmp_path / "scans" / "sub") and len(paths) == 2
  root, paths = unlabeled.find_sources(str(tmp_path / "scans" / "**" / "u*.png"))
  assert root == str(tmp_path / "scans")
  assert [os.path.relpath(p, root) for p in paths] == [
      "sub/u1.png", "sub/u3.png", "u0.png", "u2.png"]  # sorted, hidden ones left out
  with pytest.raises(FileNotFoundError, match="no image files"):
    unlabeled.find_sources(str(tmp_path / "nothing_here"))


def test_a_slow_drift_is_not_hidden_by_small_steps(tmp_path):
  """Frames brightening by one gray level each: every step is below a threshold of 1.5, but a
  frame is compared with the last non-duplicate, so every second frame is kept."""
  folder = tmp_path / "clip"
  folder.mkdir()
  base = np.random.default_rng(0).integers(60, 120, (32, 40)).astype(np.uint8)
  for i in range(6):
    cv2.imwrite(str(folder / f"img{i}.png"), base + i)
  root, paths = unlabeled.find_sources(str(folder), clip_dirs=True)
  assert (root, paths) == (str(tmp_path), [str(folder)])
  report = []
  options = unlabeled.ClipOptions(drop_near_duplicates=True, threshold=1.5)
  items = list(unlabeled.iter_records(paths, root, {}, "unlabeled", options=options,
                                      report=report))
  kept = [i.filename for i in items if not isinstance(i, unlabeled.DroppedFrame)]
  assert kept == ["clip#0", "clip#2", "clip#4"]
  np.testing.assert_array_equal(items[2].image, base + 2)
  assert report[0].line() == ("clip clip: 6 frames read, 3 near-duplicates (< 1.5 mean abs diff), "
                              "dropped")
