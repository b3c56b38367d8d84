"""Labelled examples to evaluate on: a built TFDS dataset split, or images named by an IUGC CSV.

Each source is an iterable of example dicts in file order, `{"image": uint8 [H, W, C] original
size, "landmarks": float32 [3, 2] (x, y) original pixels, "filename": str}`, with `len()`; iterate
it again to see the same examples again. `describe()` says where the examples come from.
"""

import os

import numpy as np
from tqdm import tqdm

from aop_tf import predictor as predictor_lib
from aop_tf.io import labels
from aop_tf.io.records import InputError


class TfdsSource:
  """A split of a dataset written by `python -m data_prep.build`, read from disk on each pass
  (with TensorFlow Datasets, imported here only: a CSV source needs no TensorFlow)."""

  def __init__(self, data_dir, split):
    try:
      from aop_tf import data  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise predictor_lib.missing_tensorflow(e, "--data_dir (a built dataset)") from None
    self.data_dir = data.find_dataset_dir(data_dir)
    self.split = split
    self.name = split
    self._count = data.num_examples(self.data_dir, split)
    self.skipped = []

  def __len__(self):
    return self._count

  def __iter__(self):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from aop_tf import data  # pylint: disable=import-outside-toplevel
    try:
      for ex in data.load_split(self.data_dir, self.split).as_numpy_iterator():
        yield {"image": ex["image"], "landmarks": ex["landmarks"].astype(np.float32),
               "filename": ex["filename"].decode("utf-8")}
    except tf.errors.DataLossError as e:
      raise data.corrupt_data_error(self.data_dir, e) from None

  def describe(self):
    return {"data_dir": os.path.abspath(self.data_dir), "split": self.split}


class CsvSource:
  """Images named by an IUGC-format CSV (`aop_tf.io.labels`), read and validated once.

  Rows that cannot be used (missing image, bad point, ...) are skipped, counted and listed
  (`skipped`), never dropped silently.
  """

  def __init__(self, images_dir, labels_csv, progress=False):
    if not os.path.isfile(labels_csv):
      raise FileNotFoundError(f"--labels_csv {labels_csv} does not exist.")
    if not os.path.isdir(images_dir):
      raise FileNotFoundError(f"--images_dir {images_dir} is not a folder.")
    self.images_dir, self.labels_csv = images_dir, labels_csv
    self.name = os.path.splitext(os.path.basename(labels_csv))[0]
    rows = labels.read_rows(labels_csv)
    if not rows:
      raise ValueError(labels.no_rows(labels_csv))
    self.examples, self.skipped = [], []
    for item in tqdm(labels.iter_records(rows, images_dir, {}, "eval"), total=len(rows),
                     unit="row", desc="read images", disable=not progress, dynamic_ncols=True):
      if isinstance(item, InputError):
        self.skipped.append(str(item))
        continue
      image = np.asarray(item.image, np.uint8)
      self.examples.append({"image": image[..., None] if image.ndim == 2 else image,
                            "landmarks": np.asarray(item.landmarks, np.float32),
                            "filename": item.filename})
    if not self.examples:
      raise ValueError(f"{labels_csv}: no usable rows ({len(self.skipped)} skipped); first "
                       f"problems:\n  " + "\n  ".join(self.skipped[:10]))

  def __len__(self):
    return len(self.examples)

  def __iter__(self):
    return iter(self.examples)

  def describe(self):
    return {"images_dir": os.path.abspath(self.images_dir),
            "labels_csv": os.path.abspath(self.labels_csv),
            "n_skipped": len(self.skipped), "skipped": self.skipped}
