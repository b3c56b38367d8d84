"""PSFHS-style source: `images/NAME` + `masks/NAME` (0 bg, 1 pubic symphysis, 2 fetal head).

Landmarks come from the masks by the IUGC rule (see `landmarks_from_mask`), which reproduces the
landmarks of the PSFHS `train.csv`/`val.csv` exactly (all 1038 rows; tests/test_masks.py). Split
membership comes from the split CSVs' Filename column when present, else from a `split_spec`.
"""

import math
import os

import cv2
import numpy as np
import tensorflow as tf

from aop_tf import tangent
from aop_tf.io import images
from aop_tf.io import labels
from aop_tf.io.records import SPLITS, InputError, Record

PS_LABEL, FH_LABEL = 1, 2
BLOCK_SIZE = 40  # PSFHS neighbours are often frames of one subject: split by blocks, not files
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Above this many contour points the farthest pair is searched on the convex hull only (same
# distance; among exactly tied pairs the choice may then differ).
_MAX_DENSE_POINTS = 3000


# The FH1 rule of the decoder (`tangent.tangent_point`) as one graph call per mask (eager dispatch
# of its ops dominated the time).
_tangent_point = tf.function(tangent.tangent_point, input_signature=[
    tf.TensorSpec([1, 2], tf.float32), tf.TensorSpec([1, 2], tf.float32),
    tf.TensorSpec([1, None, 2], tf.float32), tf.TensorSpec([1, None], tf.bool)])


def _largest_contour(binary):
  """Points [N, 2] int64 `(x, y)` of the largest (by area) outer contour, or None if empty."""
  contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL,
                                 cv2.CHAIN_APPROX_NONE)
  if not contours:
    return None
  areas = [cv2.contourArea(c) for c in contours]
  return contours[int(np.argmax(areas))].reshape(-1, 2).astype(np.int64)


def _farthest_pair(pts):
  """Indices (i, j) of the two farthest-apart points of [N, 2] ints (first in row-major order)."""
  if len(pts) > _MAX_DENSE_POINTS:
    hull = np.sort(cv2.convexHull(pts.astype(np.int32), returnPoints=False).reshape(-1))
    i, j = _farthest_pair(pts[hull])
    return int(hull[i]), int(hull[j])
  diff = pts[:, None, :] - pts[None, :, :]
  dist2 = np.einsum("ijk,ijk->ij", diff, diff)
  i, j = np.unravel_index(int(np.argmax(dist2)), dist2.shape)
  return int(i), int(j)


def landmarks_from_mask(mask, where="mask"):
  """PS1, PS2, FH1 from a label mask by the IUGC rule.

  PS1/PS2: the two farthest-apart points of the largest (by area) outer contour of label 1
  (`cv2.findContours`, RETR_EXTERNAL, CHAIN_APPROX_NONE), PS1 the one with larger x (equal x: the
  upper one). FH1: the point of the largest outer contour of label 2 that maximises the angle
  PS2-PS1-q, ties to the point nearest PS1, then to the first in contour order
  (`tangent.tangent_point`, the decoder's rule too).

  Args:
    mask: uint8 [H, W] labels.
    where: names the mask in error messages.

  Returns:
    float32 [3, 2] `(x, y)` pixels (integers), order PS1, PS2, FH1.

  Raises:
    InputError: when a structure is missing or the landmarks are degenerate.
  """
  ps = _largest_contour(mask == PS_LABEL)
  if ps is None:
    raise InputError(f"{where}: no pubic symphysis (label {PS_LABEL}) in the mask", "mask rule")
  head = _largest_contour(mask == FH_LABEL)
  if head is None:
    raise InputError(f"{where}: no fetal head (label {FH_LABEL}) in the mask", "mask rule")
  i, j = _farthest_pair(ps)
  a, b = ps[i], ps[j]
  if (a[0], -a[1]) >= (b[0], -b[1]):
    ps1, ps2 = a, b
  else:
    ps1, ps2 = b, a
  if np.array_equal(ps1, ps2):
    raise InputError(f"{where}: pubic symphysis is a single pixel; PS1 = PS2", "mask rule")
  fh1, found = _tangent_point(ps1[None].astype(np.float32), ps2[None].astype(np.float32),
                              head[None].astype(np.float32), np.ones((1, len(head)), bool))
  if not bool(found[0]):  # the whole head contour lies on PS1
    raise InputError(f"{where}: the fetal head touches PS1 only; no tangent point", "mask rule")
  return np.stack([ps1, ps2, fh1.numpy()[0]]).astype(np.float32)


def _list_images(folder):
  return sorted(name for name in os.listdir(folder)
                if name.lower().endswith(_IMAGE_SUFFIXES) and not name.startswith("."))


def parse_split_spec(spec):
  """`"train:80,val:20"` -> {"train": 80.0, "val": 20.0} (positive weights, any scale)."""
  weights = {}
  for item in filter(None, (p.strip() for p in str(spec).split(","))):
    split, _, value = item.partition(":")
    split = split.strip()
    if split not in SPLITS:
      raise ValueError(f"--split_spec: unknown split {split!r} in {item!r}; use {SPLITS}")
    try:
      weights[split] = float(value)
    except ValueError:
      raise ValueError(f"--split_spec: {item!r} is not SPLIT:WEIGHT, e.g. train:80") from None
    if not weights[split] > 0:
      raise ValueError(f"--split_spec: weight of {split} must be > 0, got {value!r}")
  if not weights:
    raise ValueError("--split_spec is empty; e.g. train:80,val:20")
  return weights


def split_by_blocks(names, weights, block_size=BLOCK_SIZE):
  """Sorted `names` in contiguous blocks of `block_size`, the blocks dealt to splits in order by
  cumulative weight (e.g. the first 80 % of blocks to train). -> {split: [names]}."""
  names = sorted(names)
  blocks = [names[i:i + block_size] for i in range(0, len(names), block_size)]
  total = sum(weights.values())
  result, start, cumulative = {}, 0, 0.0
  for split in SPLITS:
    if split not in weights:
      continue
    cumulative += weights[split]
    end = int(math.floor(len(blocks) * cumulative / total + 0.5))  # half up: train first
    result[split] = [n for block in blocks[start:end] for n in block]
    start = end
  return result


def split_filenames(data_dir, csv_map=None, split_spec=None, encoding="auto"):
  """{split: [`labels.Row`]} of image file names, from the split CSVs (Filename column) in
  `data_dir` or `csv_map` (read in `encoding`), else from `split_spec` over `data_dir/images`."""
  csvs = labels.find_split_csvs(data_dir, csv_map, required=False)
  if csvs and not split_spec:
    return {split: labels.read_filenames(path, encoding) for split, path in csvs.items()}
  if not split_spec:
    raise FileNotFoundError(f"no train.csv/val.csv/test.csv in {data_dir} to take the splits "
                            "from; pass --csv=train:a.csv,... or --split_spec=train:80,val:20")
  image_dir = os.path.join(data_dir, "images")
  if not os.path.isdir(image_dir):
    raise FileNotFoundError(f"{image_dir} is not a folder; the masks source needs "
                            "<data_dir>/images and <data_dir>/masks")
  names = _list_images(image_dir)
  by_split = split_by_blocks(names, parse_split_spec(split_spec))
  where = f"{image_dir} (split_spec)"
  return {split: [labels.Row(where, i + 1, name, {}) for i, name in enumerate(split_names)]
          for split, split_names in by_split.items()}


def _record(row, data_dir):
  where = f"{row.csv_path} line {row.line}"
  image_path, relative = labels.resolve_in_folder(
      os.path.join(data_dir, "images"), row.filename, where)
  mask_path, _ = labels.resolve_in_folder(os.path.join(data_dir, "masks"), relative, where,
                                              kind="mask")
  try:
    image = images.read_gray(image_path)
    mask = images.read_label_map(mask_path)
  except images.ImageError as e:
    raise InputError(f"{where}: {e}", "unreadable image") from e
  if mask.shape != image.shape:
    raise InputError(f"{where}: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but the image "
                     f"is {image.shape[1]}x{image.shape[0]}", "mask size")
  values = np.unique(mask)
  if np.any(values > FH_LABEL):
    raise InputError(f"{where}: mask {mask_path} has labels {values.tolist()}; expected 0 bg, "
                     "1 pubic symphysis, 2 fetal head", "mask labels")
  landmarks = landmarks_from_mask(mask, f"{where}: mask {mask_path}")
  return Record(filename=relative, image=image, landmarks=landmarks, mask=mask, where=where,
                path=image_path)


def iter_records(data_dir, rows, seen, split, workers=1):
  """Yields one `Record` (with mask) or `InputError` per file name, in order.

  Args:
    data_dir: folder with `images/` and `masks/`.
    rows: `labels.Row`s from `split_filenames` (only `filename`, `csv_path`, `line` used).
    seen: {filename: "split (...)"} of accepted files, shared across splits;
      duplicates are refused.
    split: the split name, for messages.
    workers: threads reading images and masks.
  """
  return labels.unique_records(rows, seen, split, lambda row: _record(row, data_dir), workers)
