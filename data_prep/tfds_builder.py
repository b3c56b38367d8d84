"""TFDS builder that writes prepared examples with the schema of ARCHITECTURE.md ("Data on disk").

The builder does not read any source itself: `data_prep.build` reads and validates the inputs,
hands the examples over (`AopLandmarks(examples_by_split=...)`) and calls `download_and_prepare`
through the Python API. The result, `<out_dir>/aop_landmarks/<VERSION>/` with TFRecord shards,
`dataset_info.json`, `features.json` and `metadata.json` (the build summary), is read with
`tfds.builder_from_directory(dir)` without importing this package. Examples are written in source
order (shuffling disabled), so `training=False` pipelines see file order.
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from aop_tf.io import images

DATASET_NAME = "aop_landmarks"
VERSION = "1.0.0"


def features():
  """The one feature schema of every source (see ARCHITECTURE.md)."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
      "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
      "has_mask": tfds.features.Scalar(dtype=np.bool_),
      "filename": tfds.features.Text(),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
      "landmarks": tfds.features.Tensor(shape=(3, 2), dtype=np.float32),
      "aop_deg": tfds.features.Scalar(dtype=np.float32),
  })


def encode_record(record, aop_deg):
  """`data_prep.Record` -> example dict for `features()`; images as 1-channel PNG bytes.

  Encoding here (once, with cv2) keeps prepared examples small in memory and skips the slower
  per-example TF encoder of `tfds.features.Image`.
  """
  image = np.asarray(record.image)
  if image.dtype != np.uint8 or image.ndim != 2:
    raise ValueError(f"{record.filename}: image must be uint8 [H, W], got {image.dtype} "
                     f"{image.shape}")
  height, width = image.shape
  has_mask = record.mask is not None
  mask = record.mask if has_mask else np.zeros_like(image)
  if mask.shape != image.shape or mask.dtype != np.uint8:
    raise ValueError(f"{record.filename}: mask {mask.dtype} {mask.shape} does not match image "
                     f"{image.shape}")
  landmarks = (np.full((3, 2), np.nan, np.float32) if record.landmarks is None
               else np.asarray(record.landmarks, np.float32))
  if landmarks.shape != (3, 2):
    raise ValueError(f"{record.filename}: landmarks must be [3, 2], got {landmarks.shape}")
  return {
      "image": images.encode_png(image),
      "mask": images.encode_png(mask),
      "has_mask": has_mask,
      "filename": record.filename,
      "height": np.int32(height),
      "width": np.int32(width),
      "landmarks": landmarks,
      "aop_deg": np.float32(aop_deg),
  }


class AopLandmarks(tfds.core.GeneratorBasedBuilder):
  """PS1, PS2, FH1 landmarks (+ optional PS/FH masks) on gray ultrasound images.

  Args:
    examples_by_split: {split name: list of example dicts from `encode_record`}, non-empty lists
      only (TFDS refuses empty splits).
    description: free text stored in `dataset_info.json`.
    metadata: JSON-able dict stored as `metadata.json` (the build summary).
    data_dir: root folder; the dataset goes to `<data_dir>/aop_landmarks/<VERSION>`.

  Usage:
    builder = AopLandmarks(data_dir=out, examples_by_split={"train": [...]})
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=src))
  """

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "Gray image, mask, has_mask, filename, size, landmarks, AoP."}

  def __init__(self, *, examples_by_split=None, description="", metadata=None, **kwargs):
    # Set before super().__init__, which may already call _info().
    self._examples_by_split = examples_by_split or {}
    self._description = description
    self._metadata = metadata or {}
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=self._description or "AoP landmarks (PS1, PS2, FH1) on gray ultrasound.",
        features=features(),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(self._metadata),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the examples are prepared and validated by data_prep.build
    return {split: self._generate_examples(split) for split, examples in
            self._examples_by_split.items() if examples}

  def _generate_examples(self, split):
    # Integer keys in source order: with shuffling disabled TFDS writes examples sorted by key.
    for index, example in enumerate(self._examples_by_split[split]):
      yield index, example


def dataset_dir(out_dir):
  """The folder holding `dataset_info.json` for a build into `out_dir`."""
  return tf.io.gfile.join(out_dir, DATASET_NAME, VERSION)
