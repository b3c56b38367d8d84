"""Tests of the input pipeline (aop_tf/data.py) on a small phantom dataset written to disk."""

import os

import numpy as np
import pytest
import tensorflow as tf

from aop_tf import config, data

N_TRAIN, N_VAL = 10, 6


def _build_phantom(out_dir):
  """A phantom dataset with `N_TRAIN` train and `N_VAL` val examples; returns its folder."""
  from data_prep import build
  return build.build_dataset("phantom", out_dir=str(out_dir),
                             phantom_counts={"train": N_TRAIN, "val": N_VAL, "test": 0},
                             phantom_size=256, phantom_seed=0, verbose=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return _build_phantom(tmp_path_factory.mktemp("phantom_ds"))


@pytest.fixture(scope="module")
def psfhs_dir(tmp_path_factory):
  """A small PSFHS dataset (first rows of each split) built with the csv source."""
  from data_prep import build
  raw = build.default_psfhs_dir()
  if not os.path.exists(os.path.join(raw, "val.csv")):
    pytest.skip(f"PSFHS data not found at {raw} (set AOP_PSFHS_DIR to the folder with val.csv)")
  out = tmp_path_factory.mktemp("psfhs_ds")
  return raw, build.build_dataset("csv", data_dir=raw, out_dir=str(out),
                                  limit={"train": 16, "val": 12}, verbose=False)


def _spec(with_mask=False, **flags):
  """A run spec with some knobs changed (by flag name); masks come with a segmentation head. The
  decoder goes to full size, so that any heatmap size is a valid model."""
  return config.RunSpec().replace(seg_classes=3 if with_mask else 0, decode_method="dark",
                                  decode_to_full=True, **flags)


def _decode(spec, batch):
  """The batch's targets as the loss renders them, decoded back to pixels."""
  codec = spec.heatmap_codec()
  return codec.decode(codec.render(batch["landmarks_cells"]), batch["size_px"])


def _batches(ds, n):
  return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- finding and reading datasets -------------------------------------------------------------


def test_find_dataset_dir_accepts_versioned_dir_and_parents(data_dir):
  versioned = data.find_dataset_dir(data_dir)
  assert os.path.exists(os.path.join(versioned, "dataset_info.json"))
  assert data.find_dataset_dir(versioned) == versioned
  assert data.find_dataset_dir(os.path.dirname(versioned)) == versioned


def test_find_dataset_dir_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
    data.find_dataset_dir(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="data_prep.build"):
    data.find_dataset_dir(tmp_path)
  for name in ("a/1.0.0", "b/1.0.0"):
    os.makedirs(tmp_path / name)
    (tmp_path / name / "dataset_info.json").write_text("{}")
  with pytest.raises(ValueError, match="2 datasets"):
    data.find_dataset_dir(tmp_path)


def test_num_examples_and_unknown_split(data_dir):
  assert data.num_examples(data_dir, "train") == N_TRAIN
  assert data.num_examples(data_dir, "val") == N_VAL
  with pytest.raises(ValueError, match="no split 'test'"):
    data.num_examples(data_dir, "test")


def test_load_split_schema(data_dir):
  ex = next(iter(data.load_split(data_dir, "val")))
  assert ex["image"].dtype == tf.uint8 and ex["image"].shape[-1] == 1
  assert ex["landmarks"].shape == (3, 2)
  assert int(ex["width"]) == ex["image"].shape[1] and int(ex["height"]) == ex["image"].shape[0]


# --- preprocess_image ---------------------------------------------------------------------------


def test_preprocess_image_shapes_and_channels():
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (40, 60, 1), dtype=np.uint8)
  for channels in (1, 3):
    out = data.preprocess_image(gray, 32, channels)
    assert out.dtype == tf.float32 and out.shape == (32, 32, channels)
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0
  # Gray replicated to RGB (or RGBA) converts back to the same gray exactly.
  g = data.preprocess_image(gray, 32, 1)
  rgb = np.concatenate([gray] * 3, axis=-1)
  rgba = np.concatenate([rgb, np.full_like(gray, 7)], axis=-1)
  np.testing.assert_allclose(data.preprocess_image(rgb, 32, 1), g, atol=1e-4)
  np.testing.assert_allclose(data.preprocess_image(rgba, 32, 1), g, atol=1e-4)
  np.testing.assert_array_equal(data.preprocess_image(gray, 32, 3), np.concatenate([g] * 3, -1))
  # Batched input works the same.
  batched = data.preprocess_image(gray[None], 32, 1)
  np.testing.assert_array_equal(batched[0], g)


def test_preprocess_image_same_size_is_identity():
  image = np.random.default_rng(1).integers(0, 256, (16, 16, 1), dtype=np.uint8)
  np.testing.assert_allclose(data.preprocess_image(image, 16, 1), image.astype(np.float32),
                             atol=1e-3)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_preprocess_image_dynamic_channels_match_static(channels):
  image = np.random.default_rng(channels).integers(0, 256, (20, 24, channels), dtype=np.uint8)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
  def dynamic(x):
    return data.preprocess_image(x, 16, 1), data.preprocess_image(x, 16, 3)

  gray, rgb = dynamic(image)
  np.testing.assert_allclose(gray, data.preprocess_image(image, 16, 1), atol=1e-4)
  np.testing.assert_allclose(rgb, data.preprocess_image(image, 16, 3), atol=1e-4)


def test_preprocess_image_rejects_bad_channels():
  with pytest.raises(ValueError, match="input_channels"):
    data.preprocess_image(np.zeros((8, 8, 1), np.uint8), 8, 2)
  with pytest.raises(ValueError, match="channels"):
    data.preprocess_image(np.zeros((8, 8, 5), np.uint8), 8, 1)


# --- evaluation datasets ------------------------------------------------------------------------


def test_eval_batches_shapes_dtypes_and_file_order(data_dir):
  cfg = _spec(input_size=128, input_channels=3, heatmap_size=32, batch_size=4,
              with_mask=True)
  batches = _batches(data.make_dataset(data_dir, "val", cfg, training=False), 10)
  assert [len(b["filename"]) for b in batches] == [4, 2]
  b = batches[0]
  expected = {"image": (np.float32, (4, 128, 128, 3)),
              "landmarks_cells": (np.float32, (4, 3, 2)), "landmarks": (np.float32, (4, 3, 2)),
              "size_px": (np.float32, (4, 2)), "filename": (object, (4,)),
              "mask": (np.int32, (4, 32, 32)), "has_mask": (np.bool_, (4,))}
  assert set(b) == set(expected)
  for key, (dtype, shape) in expected.items():
    assert b[key].dtype == dtype and b[key].shape == shape, key
  assert b["image"].min() >= 0.0 and b["image"].max() <= 255.0
  assert set(np.unique(b["mask"])) <= {0, 1, 2} and b["has_mask"].all()
  files = [f for b in batches for f in b["filename"]]
  assert files == [ex["filename"].numpy() for ex in data.load_split(data_dir, "val")]


def test_eval_matches_preprocess_image_and_source(data_dir):
  cfg = _spec(input_size=96, heatmap_size=24, batch_size=N_VAL, with_mask=True)
  b = _batches(data.make_dataset(data_dir, "val", cfg, training=False), 1)[0]
  for i, ex in enumerate(data.load_split(data_dir, "val")):
    np.testing.assert_array_equal(b["image"][i], data.preprocess_image(ex["image"], 96, 1))
    np.testing.assert_array_equal(b["landmarks"][i], ex["landmarks"])
    size = ex["image"].shape[1]
    np.testing.assert_array_equal(b["size_px"][i], [size, size])
    # Mask targets: nearest sample of the original mask at each cell centre.
    centres = np.rint((np.arange(24) + 0.5) * size / 24 - 0.5).astype(int)
    mask = ex["mask"].numpy()[..., 0]
    agree = np.mean(b["mask"][i] == mask[np.ix_(centres, centres)])
    assert agree > 0.97


@pytest.mark.parametrize("input_size,heatmap_size", [(256, 64), (128, 64), (64, 48)])
def test_heatmap_targets_decode_to_landmarks(data_dir, input_size, heatmap_size):
  cfg = _spec(input_size=input_size, heatmap_size=heatmap_size, sigma_cells=1.5,
              batch_size=N_VAL)
  b = _batches(data.make_dataset(data_dir, "val", cfg, training=False), 1)[0]
  decoded = _decode(cfg, b)
  np.testing.assert_allclose(decoded["landmarks"], b["landmarks"], atol=0.05)
  assert np.all(decoded["confidence"].numpy() > 0.7)


# --- training datasets --------------------------------------------------------------------------


def test_training_is_epoch_keyed_and_deterministic(data_dir):
  cfg = _spec(input_size=64, heatmap_size=16, batch_size=3, seed=7,
              augment=True)
  steps = data.steps_per_epoch(data_dir, "train", cfg)
  assert steps == N_TRAIN // 3
  run = _batches(data.make_dataset(data_dir, "train", cfg, training=True), 4 * steps)
  _assert_same(run, _batches(data.make_dataset(data_dir, "train", cfg, training=True), 4 * steps))
  # Resuming at epoch k reproduces epoch k of the run that started at 0.
  resumed = _batches(data.make_dataset(data_dir, "train", cfg, training=True, start_epoch=2),
                     2 * steps)
  _assert_same(run[2 * steps:], resumed)
  # Each epoch is a permutation without repeats; orders differ between epochs.
  orders = []
  for e in range(4):
    files = [f for b in run[e * steps:(e + 1) * steps] for f in b["filename"]]
    assert len(set(files)) == len(files) == steps * 3
    orders.append(files)
  assert len({tuple(o) for o in orders}) > 1
  # Another seed gives another stream.
  other = _batches(data.make_dataset(data_dir, "train", _spec(
      input_size=64, heatmap_size=16, batch_size=3, seed=8, augment=True),
      training=True), steps)
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(run, other))


def test_block_shuffle_is_epoch_keyed_too(data_dir):
  cfg = _spec(input_size=32, heatmap_size=8, batch_size=2, shuffle_buffer=4, seed=1)
  steps = N_TRAIN // 2
  run = _batches(data.make_dataset(data_dir, "train", cfg, training=True), 3 * steps)
  _assert_same(run[steps:], _batches(
      data.make_dataset(data_dir, "train", cfg, training=True, start_epoch=1), 2 * steps))
  in_file_order = [ex["filename"].numpy() for ex in data.load_split(data_dir, "train")]
  for e in range(3):
    files = [f for b in run[e * steps:(e + 1) * steps] for f in b["filename"]]
    assert sorted(files) == sorted(in_file_order)  # N_TRAIN is a multiple of 2: nothing dropped
    # Blocks of 4 stay together: the first 4 come from the first 4 in file order.
    assert set(files[:4]) == set(in_file_order[:4])


def test_training_without_augmentation_keeps_targets(data_dir):
  cfg = _spec(input_size=64, heatmap_size=32, batch_size=5)
  ds = data.make_dataset(data_dir, "train", cfg, training=True)
  by_name = {ex["filename"].numpy(): ex for ex in data.load_split(data_dir, "train")}
  for b in _batches(ds, 3):
    for name, lm, image in zip(b["filename"], b["landmarks"], b["image"]):
      np.testing.assert_array_equal(lm, by_name[name]["landmarks"])
      np.testing.assert_array_equal(image, data.preprocess_image(by_name[name]["image"], 64, 1))


def test_augmented_targets_follow_landmarks(data_dir):
  cfg = _spec(input_size=128, heatmap_size=64, sigma_cells=1.5, batch_size=5, augment=True,
              aug_affine_prob=1.0, aug_rotation_deg=20.0, aug_translate_frac=0.1, with_mask=True,
              seed=3)
  b = _batches(data.make_dataset(data_dir, "train", cfg, training=True), 1)[0]
  by_name = {ex["filename"].numpy(): ex for ex in data.load_split(data_dir, "train")}
  moved = [not np.allclose(lm, by_name[n]["landmarks"]) for n, lm in zip(b["filename"],
                                                                        b["landmarks"])]
  assert all(moved)
  np.testing.assert_allclose(_decode(cfg, b)["landmarks"], b["landmarks"], atol=0.05)
  # The warped mask still labels the landmark surroundings: FH1 sits on the head (label 2).
  cells = np.rint(b["landmarks_cells"]).astype(int)
  for mask, c in zip(b["mask"], cells):
    fh_x, fh_y = c[2]
    assert 2 in mask[max(fh_y - 2, 0):fh_y + 3, max(fh_x - 2, 0):fh_x + 3]


def test_to_keras(data_dir):
  cfg = _spec(input_size=64, heatmap_size=16, batch_size=2, with_mask=True)
  b = next(iter(data.make_dataset(data_dir, "val", cfg, training=False)))
  x, y = data.to_keras(b)
  assert x is b["image"] and set(y) == {"heatmaps", "segmentation"}
  assert y["heatmaps"] is b["landmarks_cells"]  # cells: the loss renders the maps
  np.testing.assert_array_equal(y["segmentation"], b["mask"])  # phantom masks are real
  unmasked = dict(b, has_mask=tf.constant([False, True]))
  labels = data.to_keras(unmasked)[1]["segmentation"].numpy()
  assert (labels[0] == -1).all() and (labels[1] == b["mask"][1].numpy()).all()
  cfg = _spec(input_size=64, heatmap_size=16, batch_size=2)
  x, y = data.to_keras(next(iter(data.make_dataset(data_dir, "val", cfg, training=False))))
  assert set(y) == {"heatmaps"}


def test_too_small_split_for_a_batch(data_dir):
  cfg = _spec(input_size=32, heatmap_size=8, batch_size=N_TRAIN + 1)
  with pytest.raises(ValueError, match="fewer than one batch"):
    data.make_dataset(data_dir, "train", cfg, training=True)


def test_psfhs_images_and_targets_match_the_source_files(psfhs_dir):
  import csv

  import cv2
  raw, dataset_dir = psfhs_dir
  with open(os.path.join(raw, "val.csv")) as f:
    rows = {r["Filename"]: r for r in csv.DictReader(f)}
  cfg = _spec(input_size=128, heatmap_size=64, batch_size=12)
  b = _batches(data.make_dataset(dataset_dir, "val", cfg, training=False), 1)[0]
  assert len(b["filename"]) == 12
  for i, name in enumerate(b["filename"]):
    name = name.decode()
    image = cv2.imread(os.path.join(raw, "images", name), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(b["image"][i], data.preprocess_image(image[..., None], 128, 1))
    points = [[float(v) for v in rows[name][k].strip("()").split(",")] for k in ("PS1", "PS2",
                                                                                "FH1")]
    np.testing.assert_allclose(b["landmarks"][i], points, atol=1e-4)
    np.testing.assert_array_equal(b["size_px"][i], [image.shape[1], image.shape[0]])
  np.testing.assert_allclose(_decode(cfg, b)["landmarks"], b["landmarks"], atol=0.05)


def test_a_sharded_split_streams_without_cache_in_a_fixed_order(tmp_path):
  """Four shards read interleaved in parallel, uncached: every example once per epoch, the same
  batches on a second read and on resume (what a split larger than memory trains on)."""
  from data_prep import build  # pylint: disable=import-outside-toplevel
  sharded = build.build_dataset("phantom", out_dir=str(tmp_path), phantom_size=48,
                                phantom_counts={"train": 12, "val": 4}, num_shards=4,
                                verbose=False)
  shards = [f for f in os.listdir(sharded) if "-train.tfrecord-" in f]
  assert len(shards) == 4
  cfg = _spec(input_size=32, heatmap_size=8, batch_size=3, cache=False, shuffle_buffer=6, seed=2,
              augment=True)
  run = _batches(data.make_dataset(sharded, "train", cfg, training=True), 8)
  _assert_same(run, _batches(data.make_dataset(sharded, "train", cfg, training=True), 8))
  _assert_same(run[4:], _batches(data.make_dataset(sharded, "train", cfg, training=True,
                                                   start_epoch=1), 4))
  for epoch in range(2):
    files = [f for b in run[epoch * 4:(epoch + 1) * 4] for f in b["filename"]]
    assert len(set(files)) == 12
