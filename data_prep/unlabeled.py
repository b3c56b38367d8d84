"""Unlabeled images for semi-supervised training: stills, and the frames of videos, DICOMs and
(with `clip_dirs`) folders of numbered frames.

Inputs are enumerated by `aop_tf.io.inputs.find_inputs` (the one enumerator of predict, evaluate
and the viewer: folders searched recursively, globs, files, `@list` files; hidden files skipped).
Still images go through the same decoding and robustness rules as labeled images
(`aop_tf.io.images`: content sniffing, strict decoding, the megapixel cap, 8-bit gray); a clip is
streamed frame by frame (`aop_tf.io.frames`), never held whole, and each selected frame becomes a
gray `Record` named `clip.mp4#N` (N: the 0-based frame index, as label CSVs name frames). A
single-frame DICOM is named like a still (`exam.dcm`). All become `Record`s without landmarks,
written to the `unlabeled` split under the one duplicate rule (`aop_tf.io.labels.claim`).

Near-duplicates: a selected frame whose mean absolute gray difference to the last non-duplicate
frame of its clip (on 64x64 area-downscaled copies, 0..255) is below a threshold. They are always
counted per clip (`ClipStats`, printed in the build summary) and left out only when asked
(`ClipOptions.drop_near_duplicates`); comparing with the last non-duplicate, not the previous
frame, makes the count the same whether or not they are dropped, and stops a slow drift from
hiding behind many small steps.

`relabel` turns labeled train examples into unlabeled ones to simulate scarce labels
(`--labeled_list`).
"""

import dataclasses
import os
from typing import Optional

import cv2
import numpy as np

from aop_tf.io import frames
from aop_tf.io import images
from aop_tf.io import inputs
from aop_tf.io import labels
from aop_tf.io import parallel
from aop_tf.io.records import InputError, Record

NEAR_DUPLICATE_SIDE = 64  # pixels: frames are compared on copies this size (area averaging)
DROPPED_REASON = "near-duplicate frame (--drop_near_duplicates)"


class DroppedFrame(InputError):
  """A near-duplicate frame left out on request: counted in the summary, not a bad input."""

  def __init__(self, message):
    super().__init__(message, DROPPED_REASON)


@dataclasses.dataclass(frozen=True)
class ClipOptions:
  """How clips become unlabeled images.

  Attributes:
    selection: the `frames.Selection` of each clip's frames (`frames.parse_selection`).
    drop_near_duplicates: leave out near-duplicate frames (always counted).
    threshold: near-duplicate below this mean absolute gray difference, 0..255.
  """
  selection: frames.Selection = frames.ALL_FRAMES
  drop_near_duplicates: bool = False
  threshold: float = 1.0


@dataclasses.dataclass
class ClipStats:
  """What was read from one clip, for the build summary.

  Attributes:
    clip: its name relative to the root.
    frames_read: selected frames decoded.
    near_duplicates: of those, near-duplicates of the last non-duplicate frame.
    threshold: the near-duplicate threshold, mean absolute gray difference.
    dropped: whether near-duplicates were left out.
    stopped: the error that ended the clip early, or None.
  """
  clip: str
  frames_read: int = 0
  near_duplicates: int = 0
  threshold: float = 1.0
  dropped: bool = False
  stopped: Optional[str] = None

  def line(self):
    """`clip x.mp4: 600 frames read, 412 near-duplicates (< 1.0 mean abs diff), kept`."""
    text = (f"clip {self.clip}: {self.frames_read} frames read, {self.near_duplicates} "
            f"near-duplicates (< {self.threshold} mean abs diff), "
            f"{'dropped' if self.dropped else 'kept'}")
    return text + ("; stopped early by an unreadable frame (see the skipped inputs)"
                   if self.stopped else "")


def find_sources(spec, clip_dirs=False):
  """`(root, paths)` of the inputs named by `spec` (`inputs.find_inputs`: a folder, glob, file,
  comma list or @list), sorted naturally. `root`, the folder names are relative to, is `spec`
  itself when it is a folder holding them, else their common folder.

  Raises:
    FileNotFoundError when a part of `spec` matches nothing, or nothing is found.
  """
  paths, unmatched = inputs.find_inputs(spec, clip_dirs=clip_dirs)
  if unmatched or not paths:
    missing = f" ({', '.join(unmatched)} matched nothing)" if unmatched else ""
    raise FileNotFoundError(
        f"no image files at {spec}{missing} (a folder, a glob, a file or an @list; suffixes "
        f"{', '.join(inputs.MEDIA_SUFFIXES)}; folders of numbered frames with --clip_dirs)")
  absolute = [os.path.abspath(p) for p in paths]
  if os.path.isdir(spec) and spec not in paths:  # not itself a clip: names relative to it
    return spec, paths
  return os.path.commonpath([os.path.dirname(p) for p in absolute]), paths


def _is_still(path):
  return os.path.isfile(path) and frames.kind_of(path) == "image"


def _read_still(path):
  """uint8 [H, W] of a still image; InputError for anything else (None: a clip, read later)."""
  if not os.path.isfile(path) and not os.path.isdir(path):
    # Checked first: a FIFO or device named like an image would block or never end.
    return InputError(f"{path}: not a regular file; skipped", "not a regular file")
  if not _is_still(path):
    return None
  try:
    return images.read_gray(path)
  except images.ImageError as e:
    return InputError(str(e), "unreadable image")


def iter_records(paths, root, seen, split, workers=1, options=ClipOptions(), report=None):
  """Yields one unlabeled `Record` or `InputError` per still image and per selected clip frame,
  in order.

  Args:
    paths: files and frame folders (`find_sources`).
    root: the folder names are made relative to.
    seen: {filename: "split (...)"} of accepted files, shared across splits: duplicates refused.
    split: the split name, for messages.
    workers: threads decoding still images (ahead of the duplicate rule, applied in order);
      clips are streamed in this thread, one frame at a time.
    options: `ClipOptions`.
    report: a list that receives one `ClipStats` per clip as it is read.
  """
  report = [] if report is None else report
  paths = list(paths)
  for path, still in zip(paths, parallel.ordered_map(_read_still, paths, workers)):
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, "/")
    if still is None:
      items = _clip_items(path, relative, options, report)
    elif isinstance(still, InputError):
      items = [still]
    else:
      items = [Record(filename=relative, image=still, landmarks=None, where=path, path=path)]
    for item in items:
      yield _claimed(item, seen, split)


def _claimed(item, seen, split):
  """`item`, or an InputError when its name or file is taken already (`labels.claim`)."""
  if isinstance(item, InputError):
    return item
  if item.filename in seen:
    return InputError(f"{item.where}: already used by {seen[item.filename]}; skipped",
                      "duplicate filename")
  try:
    labels.claim(seen, item, item.filename, f"{split} ({item.where})", item.where)
  except InputError as e:
    return e
  return item


def _clip_items(path, relative, options, report):
  """Yields a `Record` (or `DroppedFrame`) per selected frame of a DICOM, video or frame folder;
  an `InputError` where it cannot be opened or a frame cannot be read (earlier frames stand)."""
  try:
    source = frames.open_source(path)
  except frames.FrameError as e:
    yield InputError(str(e), "unreadable file")
    return
  with source:
    is_clip = source.info.is_clip
    stats = ClipStats(relative, threshold=options.threshold,
                      dropped=options.drop_near_duplicates)
    if is_clip:
      report.append(stats)
    reference = None  # the 64x64 copy of the last non-duplicate frame
    try:
      for frame in source.frames(options.selection if is_clip else frames.ALL_FRAMES):
        name = frames.frame_name(relative, frame.index, is_clip)
        image = gray(frame.image, name)
        stats.frames_read += 1
        small = cv2.resize(image, (NEAR_DUPLICATE_SIDE,) * 2, interpolation=cv2.INTER_AREA)
        small = small.astype(np.float32)
        if is_clip and reference is not None and (
            float(np.mean(np.abs(small - reference))) < options.threshold):
          stats.near_duplicates += 1
          if options.drop_near_duplicates:
            yield DroppedFrame(f"{name}: near-duplicate of an earlier frame; left out")
            continue
        else:
          reference = small
        yield Record(filename=name, image=image, landmarks=None, where=frame.name, path=path,
                     frame=frame.index if is_clip else None)
    except frames.FrameError as e:
      stats.stopped = str(e)
      yield InputError(f"{e}; the frames read before it are kept", "unreadable frame")


def gray(image, where):
  """uint8 [H, W] of a frame's image (uint8 [H, W, 1] gray or [H, W, 3] RGB), the conversion
  `aop_tf.io.labels.read_frame_gray` applies to a labeled frame."""
  if image.shape[-1] == 1:
    return image[..., 0]
  return images.to_gray_uint8(image[..., ::-1], where)


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
