"""Tests for data_prep.build: phantom builds, schema read back without data_prep, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aop_tf import geometry
from data_prep import build, phantom

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("phantom")
  return build.build_dataset("phantom", out_dir=str(out), phantom_counts={"train": 8, "val": 4},
                             phantom_size=96, verbose=False)


def test_phantom_counts_and_schema(phantom_dir):
  assert os.path.exists(os.path.join(phantom_dir, "dataset_info.json"))
  builder = tfds.builder_from_directory(phantom_dir)
  assert set(builder.info.splits) == {"train", "val"}
  assert builder.info.splits["train"].num_examples == 8
  assert builder.info.splits["val"].num_examples == 4
  f = builder.info.features
  assert set(f.keys()) == {"image", "mask", "has_mask", "filename", "height", "width",
                           "landmarks", "aop_deg"}
  for name in ("image", "mask"):
    assert f[name].shape == (None, None, 1)
    assert f[name].dtype == tf.uint8
    assert f[name].encoding_format == "png"
  assert f["landmarks"].shape == (3, 2) and f["landmarks"].dtype == tf.float32
  assert f["aop_deg"].dtype == tf.float32 and f["has_mask"].dtype == tf.bool
  assert f["height"].dtype == tf.int32 and f["width"].dtype == tf.int32
  assert builder.info.metadata["splits"]["train"] == {"read": 8, "written": 8, "skipped": {}}


def test_phantom_examples_round_trip(phantom_dir):
  builder = tfds.builder_from_directory(phantom_dir)
  examples = list(builder.as_dataset(split="train").as_numpy_iterator())
  assert len(examples) == 8
  for i, ex in enumerate(examples):  # file order = seed order
    expected = phantom.make_phantom(i, size=96)
    assert ex["filename"].decode() == f"phantom_{i:07d}.png"
    np.testing.assert_array_equal(ex["image"][..., 0], expected["image"])
    np.testing.assert_array_equal(ex["mask"][..., 0], expected["mask"])
    np.testing.assert_array_equal(ex["landmarks"], expected["landmarks"])
    assert ex["has_mask"] and ex["height"] == 96 and ex["width"] == 96
    assert ex["aop_deg"] == pytest.approx(float(geometry.aop_deg(expected["landmarks"])), 1e-5)
  val = list(builder.as_dataset(split="val").as_numpy_iterator())
  assert val[0]["filename"].decode() == f"phantom_{phantom.SPLIT_SEED_STRIDE:07d}.png"


def test_existing_dataset_needs_overwrite(phantom_dir, tmp_path):
  out = os.path.dirname(os.path.dirname(phantom_dir))
  with pytest.raises(FileExistsError, match="overwrite"):
    build.build_dataset("phantom", out_dir=out, phantom_counts={"train": 2}, verbose=False)
  other = build.build_dataset("phantom", out_dir=str(tmp_path), phantom_counts={"train": 2},
                              phantom_size=64, verbose=False)
  again = build.build_dataset("phantom", out_dir=str(tmp_path), phantom_counts={"train": 3},
                              phantom_size=64, overwrite=True, verbose=False)
  assert again == other
  assert tfds.builder_from_directory(again).info.splits["train"].num_examples == 3


def test_parse_split_map():
  assert build.parse_split_map("train:a.csv, val:dir/b.csv") == {"train": "a.csv",
                                                                  "val": "dir/b.csv"}
  for bad in ("train", "train:", "dev:a.csv", "train:a,train:b"):
    with pytest.raises(ValueError):
      build.parse_split_map(bad)


def test_cli_loads_without_data_prep(tmp_path, entry_points):
  """The entry point with a flagfile; the result loads in a process that never imports data_prep."""
  flagfile = tmp_path / "phantom.cfg"
  flagfile.write_text(f"--source=phantom\n--out_dir={tmp_path / 'out'}\n--phantom_train=3\n"
                      "--phantom_val=0\n--phantom_size=64\n")
  code, stdout, stderr = entry_points.run("data_prep.build", [f"--flagfile={flagfile}"])
  assert code == 0, stderr[-2000:]
  assert "Dataset directory (pass to training):" in stdout
  target = stdout.strip().splitlines()[-1].split(": ", 1)[1]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  check = ("import sys, tensorflow_datasets as tfds; b = tfds.builder_from_directory(sys.argv[1]);"
           "n = b.info.splits['train'].num_examples;"
           "assert 'data_prep' not in sys.modules; print(n)")
  load = subprocess.run([sys.executable, "-c", check, target], cwd=str(tmp_path), env=env,
                        capture_output=True, text=True, timeout=120)
  assert load.returncode == 0, load.stderr[-2000:]
  assert load.stdout.strip() == "3"
  summary = json.loads((tmp_path / "out" / "aop_landmarks" / "1.0.0" / "metadata.json").read_text())
  assert summary["splits"]["train"]["written"] == 3


PSFHS = build.default_psfhs_dir()
needs_psfhs = pytest.mark.skipif(
    not os.path.isfile(os.path.join(PSFHS, "train.csv")),
    reason=f"PSFHS data not found at {PSFHS} (set AOP_PSFHS_DIR)")


def _by_filename(target, split):
  builder = tfds.builder_from_directory(target)
  return {ex["filename"].decode(): ex for ex in builder.as_dataset(split=split).as_numpy_iterator()}


@needs_psfhs
def test_psfhs_csv_and_masks_agree_on_subset(tmp_path):
  from_csv = build.build_dataset("csv", out_dir=str(tmp_path / "csv"), limit=6, verbose=False)
  from_masks = build.build_dataset("masks", out_dir=str(tmp_path / "masks"), limit=6,
                                   verbose=False)
  for split in ("train", "val"):
    a, b = _by_filename(from_csv, split), _by_filename(from_masks, split)
    assert list(a) == list(b) and len(a) == 6
    for name in a:
      np.testing.assert_array_equal(a[name]["landmarks"], b[name]["landmarks"])
      np.testing.assert_array_equal(a[name]["image"], b[name]["image"])
      assert not a[name]["has_mask"] and b[name]["has_mask"]


@pytest.mark.slow
@needs_psfhs
def test_psfhs_full_csv_and_masks_builds(tmp_path):
  """All of PSFHS: 838 train / 200 val from both sources, identical landmarks and images."""
  from_csv = build.build_dataset("csv", out_dir=str(tmp_path / "csv"), strict=True,
                                 verbose=False)
  from_masks = build.build_dataset("masks", out_dir=str(tmp_path / "masks"), strict=True,
                                   verbose=False)
  for split, count in (("train", 838), ("val", 200)):
    a, b = _by_filename(from_csv, split), _by_filename(from_masks, split)
    assert len(a) == count and list(a) == list(b)
    for name in a:
      np.testing.assert_array_equal(a[name]["landmarks"], b[name]["landmarks"])
      np.testing.assert_array_equal(a[name]["image"], b[name]["image"])
      assert a[name]["aop_deg"] == b[name]["aop_deg"]


@needs_psfhs
def test_the_dataset_does_not_depend_on_the_workers(tmp_path):
  """Masks (landmarks from contours), an unlabeled folder with a duplicate and a broken file:
  the same examples in the same order, and the same refusals, serially and on 3 threads. (The
  duplicate, a second name of one file, is left out by the input enumerator itself.)"""
  images_dir = os.path.join(build.default_psfhs_dir(), "images")
  extra = tmp_path / "extra"
  extra.mkdir()
  last = sorted(os.listdir(images_dir))[-4:]  # not among the first rows of train and val
  for name in last:
    os.symlink(os.path.join(images_dir, name), extra / name)
  os.symlink(os.path.join(images_dir, last[0]), extra / "same_file.png")  # a duplicate
  (extra / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
  built = {}
  for workers in (1, 3):
    out = build.build_dataset("masks", out_dir=str(tmp_path / f"w{workers}"), limit=10,
                              unlabeled_dir=str(extra), workers=workers, verbose=False)
    with open(os.path.join(out, "metadata.json")) as f:
      skipped = json.load(f)["skipped_inputs"]
    built[workers] = ({split: _by_filename(out, split) for split in ("train", "val", "unlabeled")},
                      skipped)
  (serial, serial_skips), (threaded, threaded_skips) = built[1], built[3]
  assert serial_skips == threaded_skips and len(serial_skips) == 1  # the broken file
  assert len(serial["unlabeled"]) == 4
  for split, examples in serial.items():
    assert list(examples) == list(threaded[split]), split
    for name, ex in examples.items():
      for key in ("image", "mask", "landmarks"):
        np.testing.assert_array_equal(ex[key], threaded[split][name][key])
