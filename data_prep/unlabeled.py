"""Unlabeled images: a folder (searched recursively), a glob or one file, for semi-supervised training.

They go through the same decoding and robustness rules as labeled images (`aop_tf.io.images`:
content sniffing, strict decoding, the megapixel cap, 8-bit gray) and the same duplicate rule, and
become `Record`s without landmarks, written to the `unlabeled` split. `relabel` turns labeled
train examples into unlabeled ones to simulate scarce labels (`--labeled_list`).
"""

import glob
import os

import numpy as np

from aop_tf.io import images
from aop_tf.io import labels
from aop_tf.io import parallel
from aop_tf.io.records import InputError, Record

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


def find_images(spec):
  """`(root, sorted paths)` of the images named by `spec`: a folder (recursively, image suffixes,
  no hidden files), a glob or a file. `root` is the folder file names are relative to.

  Raises:
    FileNotFoundError when nothing matches.
  """
  if os.path.isdir(spec):
    root = spec
    paths = [os.path.join(folder, name) for folder, dirs, names in os.walk(spec)
             for name in names if name.lower().endswith(IMAGE_SUFFIXES)
             and not name.startswith(".") and not os.path.basename(folder).startswith(".")]
  else:
    paths = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths \
        else os.path.dirname(spec)
  if not paths:
    raise FileNotFoundError(f"no image files at {spec} (a folder, a glob or a file; suffixes "
                            f"{', '.join(IMAGE_SUFFIXES)})")
  return root, sorted(paths)


def iter_records(paths, root, seen, split, workers=1):
  """Yields one unlabeled `Record` or `InputError` per path, in order.

  Args:
    paths: image files.
    root: the folder file names are made relative to.
    seen: {filename: "split (...)"} of accepted files, shared across splits: duplicates refused.
    split: the split name, for messages.
    workers: threads reading and decoding images (ahead of the duplicate rule, applied in order).
  """
  def read(path):
    if not os.path.isfile(path):
      return InputError(f"{path}: not a regular file; skipped", "not a regular file")
    try:
      return images.read_gray(path)
    except images.ImageError as e:
      return InputError(str(e), "unreadable image")

  paths = list(paths)
  for path, image in zip(paths, parallel.ordered_map(read, paths, workers)):
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, "/")
    if relative in seen:
      yield InputError(f"{path}: already used by {seen[relative]}; skipped", "duplicate filename")
      continue
    if isinstance(image, InputError):
      yield image
      continue
    record = Record(filename=relative, image=image, landmarks=None, where=path, path=path)
    try:
      labels.claim(seen, record, relative, f"{split} ({path})", path)
    except InputError as e:
      yield e
      continue
    yield record


def read_list(path):
  """File names, one per line (`#` comments and blank lines ignored), as a set."""
  with open(path, encoding="utf-8") as f:
    names = {line.split("#", 1)[0].strip() for line in f}
  names.discard("")
  if not names:
    raise ValueError(f"{path}: no file names in the list")
  return names


def relabel(example, empty_png):
  """A written labeled example as an unlabeled one: no landmarks, no AoP, no mask."""
  return dict(example, landmarks=np.full((3, 2), np.nan, np.float32), aop_deg=np.float32(np.nan),
              mask=empty_png, has_mask=False)
