"""Knowledge distillation: a teacher's heatmaps as the student's targets.

The teacher (any model `predictor.load` runs: the shipped ensemble's TFLite file, a training
directory, a SavedModel) predicts every train image once, unaugmented (`teacher_heatmaps`); its
maps, [R, R, 3] over the model input square, are kept beside the cached images
(`data.make_dataset(teacher=...)`). Each training view warps its image by a random affine
(`augment.augment`); the same matrix moves the teacher's map onto the view (`warp_to_view`), so the
target stays on the anatomy. The target distribution is then
`w * teacher / sum(teacher) + (1 - w) * gaussian / sum(gaussian)` (`blend`), the label's Gaussian
rendered by the codec, and the spatial-softmax cross-entropy (`losses.SpatialSoftmaxCE`) learns it.

Conventions: heatmap cell `i` of `R` cells over the `S`-pixel input is the pixel
`(i + 0.5) * S / R - 0.5`; matrices are `augment`'s forward matrices (input -> view pixels).
"""

import os

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from aop_tf import augment

TEACHER_MAPS_FILE = "teacher_heatmaps.npz"


def warp_to_view(maps, forward, input_size, cells):
  """The teacher's maps [R, R, K] of the unaugmented input moved onto an augmented view.

  Args:
    maps: float [R, R, K] over the `input_size` square, R = `cells`.
    forward: float32 [3, 3] input pixels -> view pixels (`augment.augment`'s matrix).
    input_size: S, pixels.
    cells: R.

  Returns:
    float32 [R, R, K], bilinear; mass moved off the view is lost (zeros come in).
  """
  size, r = (input_size, input_size), (cells, cells)
  view_cell_to_map_cell = (augment.scale_matrix(size, r) @ tf.linalg.inv(forward) @
                           augment.scale_matrix(r, size))
  return augment.warp(tf.cast(maps, tf.float32), view_cell_to_map_cell, r, "bilinear", 0.0)


def _normalised(maps):
  total = tf.reduce_sum(maps, axis=[-3, -2], keepdims=True)
  return maps / tf.maximum(total, 1e-12)


def blend(teacher_maps, label_maps, teacher_weight):
  """`w * teacher + (1 - w) * label`, each normalised to sum 1 per landmark: float32 [..., R, R, K].

  A teacher map with no mass left on the view (all zeros) gives the label's Gaussian alone.
  """
  teacher = _normalised(tf.cast(teacher_maps, tf.float32))
  label = _normalised(tf.cast(label_maps, tf.float32))
  has_mass = tf.reduce_sum(teacher, axis=[-3, -2], keepdims=True) > 0.5
  w = tf.where(has_mass, tf.constant(float(teacher_weight)), 0.0)
  return w * teacher + (1.0 - w) * label


class TeacherMaps:
  """The teacher's maps of a split, looked up by file name inside a `tf.data` pipeline.

  Args:
    filenames: [N] str, the split's `filename` feature.
    maps: [N, R, R, 3] float16/float32.
  """

  def __init__(self, filenames, maps):
    self.filenames = np.asarray(filenames).astype(str)
    self.maps = np.asarray(maps, np.float16)
    self.cells = int(self.maps.shape[1])
    self._table = None

  def get(self, filename):
    """The maps [R, R, 3] float32 of `filename` (a string tensor); zeros for an unknown name."""
    if self._table is None:
      init = tf.lookup.KeyValueTensorInitializer(
          tf.constant(self.filenames), tf.range(len(self.filenames), dtype=tf.int64))
      self._table = tf.lookup.StaticHashTable(init, default_value=-1)
      self._maps = tf.constant(self.maps)
    index = self._table.lookup(filename)
    found = tf.gather(self._maps, tf.maximum(index, 0))
    return tf.where(index >= 0, tf.cast(found, tf.float32), 0.0)

  def save(self, path, teacher):
    """Writes `{filenames, maps, teacher}` to `path` (.npz) atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
      np.savez(f, filenames=self.filenames, maps=self.maps, teacher=np.array(teacher))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)

  @classmethod
  def load(cls, path):
    """`(TeacherMaps, teacher)` from a file `save` wrote."""
    with np.load(path) as f:
      return cls(f["filenames"], f["maps"]), str(f["teacher"])


def teacher_heatmaps(predictor, examples, total=None, batch_size=16, progress=True):
  """Runs `predictor` on every example: a `TeacherMaps` of their heatmaps.

  Args:
    predictor: a `predictor.Predictor` (its outputs have `heatmaps` [B, R, R, 3]).
    examples: iterable of dicts with `image` uint8 [H, W, C] and `filename`.
    total: the number of examples, for the progress bar.
    batch_size: images per predictor call.
    progress: show a progress bar.
  """
  names, maps, batch = [], [], []

  def flush():
    out = predictor.predict([ex["image"] for ex in batch])
    maps.append(out["heatmaps"].astype(np.float16))
    names.extend(ex["filename"] for ex in batch)
    batch.clear()

  for ex in tqdm(examples, total=total, desc="teacher", unit="img", disable=not progress):
    batch.append(ex)
    if len(batch) == batch_size:
      flush()
  if batch:
    flush()
  return TeacherMaps(names, np.concatenate(maps) if maps else np.zeros((0, 1, 1, 3), np.float16))


def cached_teacher_maps(model_dir, teacher, compute):
  """The teacher's maps kept in `<model_dir>/teacher_heatmaps.npz`, computed once by `compute()`
  (so that a resumed run learns from the same maps); a file of another teacher is refused."""
  path = os.path.join(model_dir, TEACHER_MAPS_FILE)
  if os.path.exists(path):
    maps, recorded = TeacherMaps.load(path)
    if recorded != teacher:
      raise ValueError(f"{path} holds the maps of teacher {recorded!r}, not --teacher={teacher}; "
                       "delete it (or use a new --model_dir) to distill from another teacher.")
    return maps
  maps = compute()
  os.makedirs(model_dir, exist_ok=True)
  maps.save(path, teacher)
  return maps
