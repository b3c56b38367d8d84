"""The input pipeline: TFDS datasets on disk -> batches of model inputs and heatmap targets.

Datasets are written by `python -m data_prep.build` (schema in ARCHITECTURE.md) and read here with
`tfds.builder_from_directory`, which needs no builder code. An example flows through these steps:

  decode (TFDS) -> resize to the model input (`preprocess_image`, cached) -> [shuffle] ->
  [augment in input pixels] -> channels -> landmarks in heatmap cells (`codec.to_cells`) -> batch

The Gaussian targets are not made here: the losses render them from the cells inside the training
step (`codec.HeatmapCodec.render`), on the device that trains, so an example carries 24 bytes of
landmarks instead of R * R * 3 floats of heatmaps.

Coordinates follow `aop_tf.geometry`: `(x, y)`, pixel centres at integers, sizes `(width, height)`.
The resize covers the whole field of view, so landmarks map from the original size straight to
heatmap cells. Every setting comes from the run spec (`config.RunSpec`): the codec, the model's
input size and channels, `data` (batch size, cache, shuffle), `augment` and `run.seed`.

Training datasets are keyed by epoch: `make_dataset(..., training=True, start_epoch=k)` yields
epochs k, k+1, ... back to back, each `num_examples // batch_size` full batches, and the order and
augmentation of epoch e depend only on `(run.seed, e)`, so a resumed run sees exactly the
batches the uninterrupted one would have.
"""

import functools
import json
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from aop_tf import augment as augment_lib
from aop_tf import distill
from aop_tf import geometry

INFO_FILE = "dataset_info.json"
_NUM_EPOCHS = 2 ** 62  # "forever" for the epoch-keyed training stream
_SHUFFLE_TAG = 0x5AFF1E
# Random streams of the unlabeled split, apart from the labeled ones of the same seed.
_UNLABELED_SHUFFLE_TAG, _WEAK_TAG, _STRONG_TAG = 0x5AFF1F, 0x3EA4, 0x5760


# ---------------------------------------------------------------------------------------------
# Reading datasets.


def find_dataset_dir(path):
  """The TFDS dataset folder (holding `dataset_info.json`) at or below `path`.

  Accepts the versioned folder itself (`<out>/<name>/<version>`) or any parent with exactly one
  dataset below it.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Dataset folder {path} does not exist; build one with "
                            "`python -m data_prep.build` and pass its output folder.")
  if os.path.exists(os.path.join(path, INFO_FILE)):
    return path
  found = []
  for root, dirs, files in os.walk(path):
    # TFDS writes into `incomplete.*` folders and renames them when done; skip those.
    dirs[:] = sorted(d for d in dirs if not d.startswith("incomplete") and not d.startswith("."))
    if INFO_FILE in files:
      found.append(root)
      dirs[:] = []
  if not found:
    raise FileNotFoundError(f"No {INFO_FILE} at or below {path}: it is not a built dataset. Build "
                            "one with `python -m data_prep.build` and pass its output folder.")
  if len(found) > 1:
    raise ValueError(f"{path} holds {len(found)} datasets ({', '.join(found)}); pass one of them.")
  return found[0]


@functools.lru_cache(maxsize=16)
def _builder(dataset_dir):
  return tfds.builder_from_directory(dataset_dir)


def builder(data_dir):
  """The read-only TFDS builder of the dataset at or below `data_dir`."""
  return _builder(os.path.abspath(find_dataset_dir(data_dir)))


def _check_split(b, split, data_dir):
  if split not in b.info.splits:
    raise ValueError(f"Dataset {data_dir} has no split {split!r}; it has "
                     f"{sorted(b.info.splits.keys())}.")


def corrupt_data_error(data_dir, error):
  """A ValueError for a `tf.errors.DataLossError` met reading a dataset: it names the shards that
  do not read to the end and the command that rebuilds the dataset."""
  folder = find_dataset_dir(data_dir)
  bad = []
  for path in sorted(tf.io.gfile.glob(os.path.join(folder, "*.tfrecord*"))):
    try:
      for _ in tf.data.TFRecordDataset(path):
        pass
    except tf.errors.DataLossError:
      bad.append(path)
  source, raw = "<source>", "<input folder>"
  try:
    metadata = json.loads(tf.io.gfile.GFile(os.path.join(folder, "metadata.json")).read())
    source, raw = metadata.get("source") or source, metadata.get("data_dir") or raw
  except (tf.errors.OpError, ValueError):
    pass
  out_root = os.path.dirname(os.path.dirname(os.path.abspath(folder)))
  detail = (error.message or "").strip().splitlines()[0] if error.message else "data loss"
  return ValueError(
      f"{', '.join(bad) or folder}: truncated or corrupt TFRecord data ({detail}); rebuild the "
      f"dataset: python -m data_prep.build --source={source} --data_dir={raw} "
      f"--out_dir={out_root} --overwrite")


def num_examples(data_dir, split):
  """Number of examples in `split` of the dataset at or below `data_dir`."""
  b = builder(data_dir)
  _check_split(b, split, data_dir)
  return int(b.info.splits[split].num_examples)


def load_split(data_dir, split, read_config=None):
  """Unbatched example dicts of `split`, decoded, in file order (see ARCHITECTURE.md's table).

  Args:
    data_dir: dataset folder or a parent of exactly one (see `find_dataset_dir`).
    split: "train", "val" or "test".
    read_config: optional `tfds.ReadConfig`.

  Returns:
    tf.data.Dataset of dicts: `image` uint8 [H, W, 1], `mask` uint8 [H, W, 1], `has_mask`,
    `filename`, `height`, `width`, `landmarks` float32 [3, 2] original pixels, `aop_deg`.
  """
  b = builder(data_dir)
  _check_split(b, split, data_dir)
  return b.as_dataset(split=split, shuffle_files=False, read_config=read_config)


def check_square(data_dir, split, what):
  """Raises ValueError naming the first non-square image of `split` (for knobs that need square
  images, `what`); reads only the stored sizes, not the pixels."""
  b = builder(data_dir)
  _check_split(b, split, data_dir)
  skip = tfds.decode.SkipDecoding()
  ds = b.as_dataset(split=split, shuffle_files=False, decoders={"image": skip, "mask": skip})
  for ex in ds.map(lambda e: (e["filename"], e["width"], e["height"])).as_numpy_iterator():
    filename, width, height = ex
    if width != height:
      raise ValueError(f"{what} needs square images (the term is computed on the square heatmap "
                       f"grid); {split} image {filename.decode()} of {data_dir} is {width}x"
                       f"{height}. Set it to 0 for this dataset.")


# ---------------------------------------------------------------------------------------------
# Images.


def resize_image(image, input_size):
  """Resizes [..., H, W, C] to float32 [..., S, S, C] (bilinear, half-pixel centres, antialias)."""
  return tf.image.resize(tf.cast(image, tf.float32), [input_size, input_size], method="bilinear",
                         antialias=True)


# ITU-R BT.601 luma weights (they sum to 1, so gray replicated to RGB converts back exactly).
_LUMA = (0.299, 0.587, 0.114)


def convert_channels(image, input_channels):
  """Converts float [..., C] with C in {1, 2 (gray+alpha), 3, 4 (RGBA)} to `input_channels` (1 or 3).

  Gray is replicated to RGB; RGB becomes BT.601 luma; alpha is dropped. Branch-free plain TF ops, so
  it works when C is only known at run time (e.g. `tf.io.decode_image` in a serving graph).
  """
  if input_channels not in (1, 3):
    raise ValueError(f"input_channels = {input_channels}; use 1 or 3.")
  image = tf.cast(image, tf.float32)
  channels = image.shape[-1]
  if channels is not None:  # Static: the exact, cheapest conversion.
    if channels not in (1, 2, 3, 4):
      raise ValueError(f"Images need 1, 2, 3 or 4 channels, got shape {image.shape}.")
    if channels in (1, 2):
      gray = image[..., :1]
      return gray if input_channels == 1 else tf.concat([gray] * 3, axis=-1)
    rgb = image[..., :3]
    if input_channels == 3:
      return rgb
    return tf.reduce_sum(rgb * tf.constant(_LUMA), axis=-1, keepdims=True)
  c = tf.shape(image)[-1]
  is_gray = c < 3
  index = tf.where(is_gray, tf.zeros([3], tf.int32), tf.range(3))
  rgb = tf.gather(image, index, axis=-1)
  if input_channels == 3:
    return rgb
  luma = tf.reduce_sum(rgb * tf.constant(_LUMA), axis=-1, keepdims=True)
  return tf.where(is_gray, rgb[..., :1], luma)


def preprocess_image(image, input_size, input_channels):
  """The one image preprocessing of training, evaluation, export and predict.

  Args:
    image: uint8 (or float in 0..255) [H, W, C] or [B, H, W, C], C in 1..4.
    input_size: side S of the model input, pixels.
    input_channels: 1 or 3.

  Returns:
    float32 [S, S, input_channels] (or [B, ...]) in 0..255; resize first (bilinear, half-pixel
    centres, antialias), then `convert_channels`.
  """
  return convert_channels(resize_image(image, input_size), input_channels)


# ---------------------------------------------------------------------------------------------
# Datasets of model inputs and targets.


def _prepare_fn(spec, with_mask, teacher=None):
  """Decoded example -> cacheable dict at input resolution (before augmentation); with a
  `distill.TeacherMaps`, the teacher's maps of the image too."""
  size = spec.model.input_size

  def prepare(index, ex):
    size_px = tf.cast(tf.stack([ex["width"], ex["height"]]), tf.float32)
    out = {
        "index": index,
        "image": resize_image(ex["image"], size),  # source channels; converted after augmenting
        "landmarks": tf.cast(ex["landmarks"], tf.float32),
        "size_px": size_px,
        "filename": ex["filename"],
    }
    if teacher is not None:
      out["teacher"] = teacher.get(ex["filename"])
    if with_mask:
      # Nearest, at input resolution, so augmentation can warp it with the image's matrix.
      to_orig = augment_lib.scale_matrix((size, size), size_px)
      out["mask"] = augment_lib.warp(ex["mask"], to_orig, (size, size), "nearest")
      out["has_mask"] = tf.cast(ex["has_mask"], tf.bool)
    return out

  return prepare


def _finish_fn(spec, training, with_mask):
  """Cached dict (+ epoch) -> model inputs and targets for one example."""
  codec = spec.heatmap_codec()
  size, cells = spec.model.input_size, spec.model.heatmap_size
  aug = spec.augment_or_none() if training else None

  def finish(ex, epoch):
    image, landmarks, size_px = ex["image"], ex["landmarks"], ex["size_px"]
    forward = tf.eye(3)
    if aug is not None:
      seed = augment_lib.example_seed(spec.run.seed, epoch, ex["index"])
      in_px = geometry.rescale_points(landmarks, size_px, (size, size))
      image, in_px, forward = augment_lib.augment(image, in_px, seed, aug)
      landmarks = geometry.rescale_points(in_px, (size, size), size_px)
    out = {
        "image": convert_channels(image, spec.model.input_channels),
        "landmarks_cells": codec.to_cells(landmarks, size_px),
        "landmarks": landmarks,
        "size_px": size_px,
        "filename": ex["filename"],
    }
    if "teacher" in ex:
      maps = distill.warp_to_view(ex["teacher"], forward, size, cells)
      out["target_maps"] = distill.blend(maps, codec.render(out["landmarks_cells"]),
                                         spec.distill.teacher_weight)
    if with_mask:
      # Output cell -> input pixel -> (undo the augmentation) -> cached mask pixel, nearest.
      cell_to_input = augment_lib.scale_matrix((cells, cells), (size, size))
      to_mask = tf.linalg.inv(forward) @ cell_to_input
      mask = augment_lib.warp(ex["mask"], to_mask, (cells, cells), "nearest")
      out["mask"] = tf.cast(mask[..., 0], tf.int32)
      out["has_mask"] = ex["has_mask"]
    return out

  return finish


def _permuted(block, seed):
  """The examples of a stacked `block` as a dataset, in a stateless random order."""
  order = tf.argsort(tf.random.stateless_uniform([tf.shape(block["index"])[0]], seed=seed))
  # Index the block per example rather than gathering it: one copy of the block, not two.
  return tf.data.Dataset.from_tensor_slices(order).map(
      lambda i: {k: v[i] for k, v in block.items()})


def _shuffled_epoch(prepared, spec, epoch, n, tag=_SHUFFLE_TAG):
  """`prepared` in the order of epoch `epoch`: a stateless function of (seed, tag, epoch)."""
  block = spec.data.shuffle_buffer or max(n, 1)
  epoch_seed = tf.random.experimental.stateless_fold_in(
      tf.stack([tf.cast(spec.run.seed, tf.int64), tf.constant(tag, tf.int64)]), epoch)
  return prepared.batch(block).enumerate().flat_map(
      lambda b, batch: _permuted(batch, tf.random.experimental.stateless_fold_in(epoch_seed, b)))


def make_dataset(data_dir, split, spec, training, start_epoch=0, teacher=None):
  """Batched model inputs and targets of one split.

  Args:
    data_dir: dataset folder or a parent of exactly one (see `find_dataset_dir`).
    split: "train", "val" or "test".
    spec: `config.RunSpec`; `data.batch_size` examples per batch, masks when the model has a
      segmentation head, the cache as `data.cache` says (True: decoded, resized images in
      memory, 4 * S * S bytes per gray image: 220 MB for PSFHS train at 256; False: streamed
      from the shards and decoded again every epoch, for splits larger than memory, with
      `data.shuffle_buffer` bounding the shuffled block).
    training: True: epochs `start_epoch, start_epoch + 1, ...` forever, each shuffled and (if
      configured) augmented as a pure function of `(run.seed, epoch)`, `num_examples //
      batch_size` full batches per epoch (use that as Keras' `steps_per_epoch`). False: one pass
      in file order, no augmentation, last batch possibly short.
    start_epoch: first epoch (0-based) of the training stream, to resume exactly.
    teacher: a `distill.TeacherMaps` of the split (training only): each example then also has
      `target_maps` float32 [B, R, R, 3], the teacher's maps moved onto the view and blended with
      the label's Gaussian (`distill.blend`), which `to_keras` makes the heatmap target.

  Returns:
    tf.data.Dataset of dicts: `image` float32 [B, S, S, C] 0..255; `landmarks_cells` float32
    [B, 3, 2] (`codec.to_cells`; the losses render the targets); `landmarks` float32 [B, 3, 2]
    original pixels (after augmentation, in the original frame); `size_px` float32 [B, 2]
    `(width, height)`; `filename` string [B]; with a segmentation head: `mask` int32 [B, R, R]
    (0 bg, 1 PS, 2 FH), `has_mask` bool [B].
  """
  n = num_examples(data_dir, split)
  batch_size, cache = spec.data.batch_size, spec.data.cache
  with_mask = spec.model.seg_classes > 0
  # Shards are read up to 16 at a time, interleaved in a fixed order (one shard: file order).
  shards = min(16, max(1, int(builder(data_dir).info.splits[split].num_shards)))
  read_config = tfds.ReadConfig(try_autocache=not cache, interleave_cycle_length=shards,
                                num_parallel_calls_for_interleave_files=tf.data.AUTOTUNE,
                                enable_ordering_guard=shards == 1)
  prepared = load_split(data_dir, split, read_config).enumerate().map(
      _prepare_fn(spec, with_mask, teacher if training else None), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if cache:
    prepared = prepared.cache()
  finish = _finish_fn(spec, training, with_mask)

  if not training:
    ds = prepared.map(lambda ex: finish(ex, tf.constant(0, tf.int64)),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

  steps = n // batch_size
  if steps < 1:
    raise ValueError(f"Split {split!r} of {data_dir} has {n} examples, fewer than one batch of "
                     f"{batch_size}; lower the batch size.")
  keep = steps * batch_size

  def one_epoch(epoch):
    ds = _shuffled_epoch(prepared, spec, epoch, n)
    # Drop the remainder with a filter, not take(): the cache is only kept once read to the end.
    ds = ds.enumerate().filter(lambda i, ex: i < keep)
    return ds.map(lambda i, ex: (ex, epoch))

  ds = tf.data.Dataset.range(start_epoch, _NUM_EPOCHS).flat_map(one_epoch)
  ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # Every epoch contributes whole batches, so batches never straddle two epochs.
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_unlabeled_dataset(data_dir, split, spec, start_step=0):
  """Endless batches of two views of each unlabeled image, for the mean teacher (`aop_tf.semi`).

  The split's images, reshuffled every pass (a stateless function of `(run.seed, pass)`), flow
  back to back in batches of `semi.unlabeled_batch_size`, so training step `s` always gets the
  same images: `start_step` resumes the stream exactly. Each image gives a weak view (the teacher's:
  `spec.weak_augment()`) and a strong one (the student's: the run's augmentation, or none).

  Returns:
    tf.data.Dataset of dicts: `weak`, `strong` float32 [B, S, S, C] 0..255; `weak_forward`,
    `strong_forward` float32 [B, 3, 3] (input pixels -> view pixels, so that
    `strong_forward @ inv(weak_forward)` moves a point from the weak view to the strong one);
    `size_px` float32 [B, 2] `(width, height)` of the original image.
  """
  n = num_examples(data_dir, split)
  batch = spec.semi.unlabeled_batch_size
  prepared = load_split(data_dir, split, tfds.ReadConfig(try_autocache=not spec.data.cache))
  prepared = prepared.enumerate().map(_prepare_fn(spec, with_mask=False),
                                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if spec.data.cache:
    prepared = prepared.cache()
  first_pass, skip = divmod(int(start_step) * batch, n)
  passes = tf.data.Dataset.range(first_pass, _NUM_EPOCHS).flat_map(
      lambda p: _shuffled_epoch(prepared, spec, p, n, _UNLABELED_SHUFFLE_TAG).map(
          lambda ex: (ex, p)))
  views = passes.skip(skip).map(_two_views_fn(spec), num_parallel_calls=tf.data.AUTOTUNE,
                                deterministic=True)
  return views.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _two_views_fn(spec):
  """Cached unlabeled example (+ pass) -> its weak and strong views and their matrices."""
  weak_spec, strong_spec = spec.weak_augment(), spec.augment_or_none()
  channels = spec.model.input_channels

  def views(ex, epoch):
    weak, _, weak_forward = augment_lib.augment(
        ex["image"], None, augment_lib.example_seed(spec.run.seed + _WEAK_TAG, epoch, ex["index"]),
        weak_spec)
    strong, strong_forward = ex["image"], tf.eye(3)
    if strong_spec is not None:
      strong, _, strong_forward = augment_lib.augment(
          ex["image"], None,
          augment_lib.example_seed(spec.run.seed + _STRONG_TAG, epoch, ex["index"]), strong_spec)
    return {"weak": convert_channels(weak, channels), "strong": convert_channels(strong, channels),
            "weak_forward": weak_forward, "strong_forward": strong_forward,
            "size_px": ex["size_px"]}

  return views


def steps_per_epoch(data_dir, split, spec):
  """Batches per training epoch: `num_examples // batch_size`."""
  return num_examples(data_dir, split) // spec.data.batch_size


def to_keras(batch):
  """Batch dict -> `(x, y)` for Keras `fit`/`evaluate`: `x` images, `y` {"heatmaps": landmarks in
  cells [B, 3, 2] (the heatmap loss renders them) or a distilled run's `target_maps`,
  ["segmentation"]}; images without a real mask
  get segmentation label -1 (ignored by the loss)."""
  y = {"heatmaps": batch.get("target_maps", batch["landmarks_cells"])}
  if "mask" in batch:
    mask = tf.cast(batch["mask"], tf.int32)
    has_mask = tf.reshape(tf.cast(batch["has_mask"], tf.bool), [-1, 1, 1])
    y["segmentation"] = tf.where(has_mask, mask, -tf.ones_like(mask))
  return batch["image"], y
