"""A folder of numbered still images (`frame_0001.png`, `frame_0002.png`, ...) read as one clip.

The frames are the folder's still images (`frames.STILL_SUFFIXES`; hidden files, subfolders and
other files are ignored) in the order of the number each name carries (`frame_number`: the last
run of digits in the name, so `frame2` comes before `frame10`). Frame `index` is the position in
that order, not the number in the name. There is no frame rate: `fps` and `time_s` are NaN.
Each frame is decoded when asked for (`frames.decode_still`), so memory holds one frame.
"""

import dataclasses
import math
import os
import re

from aop_tf.io import frames
from aop_tf.io import images as image_files


def frame_number(name):
  """The frame number in a file name: the last run of digits of its stem (`frame_0012.png` -> 12,
  `img7.jpg` -> 7), None when it has none (`scan.png`)."""
  stem = os.path.splitext(os.path.basename(str(name)))[0]
  digits = re.findall(r"\d+", stem)
  return int(digits[-1]) if digits else None


def numbered_frames(folder):
  """The still images of `folder` as paths sorted by frame number.

  Raises:
    FrameError naming the folder when it cannot be listed or holds no still image, and naming the
    files when one carries no number or two carry the same number.
  """
  try:
    names = os.listdir(folder)
  except OSError as e:
    raise frames.FrameError(f"{folder}: cannot list the frame folder: {e.strerror or e}") from None
  stills = sorted(n for n in names if not n.startswith(".")
                  and n.lower().endswith(frames.STILL_SUFFIXES)
                  and os.path.isfile(os.path.join(folder, n)))
  if not stills:
    raise frames.FrameError(f"{folder}: no still images ({', '.join(frames.STILL_SUFFIXES)}) in "
                            "the frame folder")
  by_number = {}
  for name in stills:
    number = frame_number(name)
    if number is None:
      raise frames.FrameError(f"{os.path.join(folder, name)}: no frame number in the name; name "
                              "the frames of a clip like frame_0001.png, frame_0002.png, ...")
    if number in by_number:
      raise frames.FrameError(
          f"{folder}: {by_number[number]} and {name} both carry frame number {number}; rename or "
          "remove one")
    by_number[number] = name
  return [os.path.join(folder, by_number[n]) for n in sorted(by_number)]


class FrameFolderSource(frames.Source):
  """A folder of numbered still images as a `frames.Source` (kind "frames").

  `info.n_frames` is the number of images, `info.size_px` the first frame's stored size. Frames
  may differ in size; a large one is reduced as it is read (`frames.read_still`), its
  `Frame.size_px` staying the stored size.
  """

  def __init__(self, folder, max_pixels=image_files.MAX_PIXELS,
               reduce_pixels=frames.REDUCE_PIXELS):
    self._folder = str(folder)
    self._max_pixels = max_pixels
    self._reduce_pixels = reduce_pixels
    self.paths = numbered_frames(self._folder)
    _, size_px = self._decode(0)
    self.info = frames.SourceInfo(self._folder, "frames", len(self.paths), math.nan, size_px)

  def frame(self, index):
    """Frame `index` (the `index`-th image by frame number); FrameError naming its file."""
    if not 0 <= index < len(self.paths):
      raise frames.FrameError(f"{self._folder}: frame {index} does not exist (the folder has "
                              f"{len(self.paths)} frames)")
    image, size_px = self._decode(index)
    return dataclasses.replace(self._frame(index, image), size_px=size_px)

  def _read(self, index):
    return self._decode(index)[0]

  def _decode(self, index):
    """`(uint8 [h, w, C], stored (width, height))` of frame `index`."""
    try:
      return frames.read_still(self.paths[index], self._max_pixels, self._reduce_pixels)
    except frames.FrameError as e:
      raise frames.FrameError(f"{e} (frame {index})") from None
